#!/usr/bin/env bash
# Everything the GPU half of benchmarks/RESULTS.md needs, in one command on a machine with an
# NVIDIA GPU, CuPy, PyTorch (CUDA) and pytest, from the repository root:
#
#     bash benchmarks/gpu_session.sh DATA_DIR OUT_DIR
#
# DATA_DIR is a --data-dir: it holds mnist/ with the four MNIST files (raw or .gz); OUT_DIR
# receives the logs and results.tgz.
# In this workplace, with the device tool (its machine reaches no registry, so the data travels):
#     mkdir -p .gpudata/mnist && for f in ~/.cache/optbench/data/mnist/*-ubyte; do gzip -c "$f" > ".gpudata/mnist/$(basename "$f").gz"; done
#     run(command="bash benchmarks/gpu_session.sh .gpudata $OUT", carry=[".gpudata"], timeout_s=600)
# It takes about five minutes on an H100 (the CPU runs are the slow part).
set -u
data=${1:?usage: gpu_session.sh DATA_DIR OUT_DIR}
out=${2:?usage: gpu_session.sh DATA_DIR OUT_DIR}
mkdir -p "$out/results"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $py -c 'import sys, numpy, cupy, torch; print(sys.version); print("numpy", numpy.__version__, "cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "torch", torch.__version__, torch.version.cuda)'
} > "$out/versions.txt" 2>&1

# The GPU tests: NumPy/CuPy agreement, fused kernels bitwise, CUDA-graph replay bitwise.
$py -m pytest -q -rs tests/test_gpu.py tests/test_gpu_kernels.py > "$out/tests.txt" 2>&1

# The step and the update beside PyTorch CUDA (eager, fused), eager CuPy and CUDA-graph replay.
$py -m optbench bench --device gpu --out "$out/results" > "$out/bench.txt" 2>&1

# What a user sees: every optimizer on MNIST, GPU eager, GPU with CUDA graphs, and the CPU.
{
    $py -m optbench mnist --device gpu --compare all --data-dir "$data" --out "$out/results" --name gpu --no-plot
    $py -m optbench mnist --device gpu --compare all --cuda-graph --data-dir "$data" --out "$out/results" --name gpu-graph --no-plot
    $py -m optbench mnist --device cpu --compare all --data-dir "$data" --out "$out/results" --name cpu --no-plot
    $py -m optbench report "$out/results/mnist/cpu" "$out/results/mnist/gpu"
    $py -m optbench report "$out/results/mnist/gpu" "$out/results/mnist/gpu-graph"
} > "$out/mnist.txt" 2>&1

tar czf "$out/results.tgz" -C "$out" results && rm -r "$out/results"
tail -n 3 "$out/tests.txt"
