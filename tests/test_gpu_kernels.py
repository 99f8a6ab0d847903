"""The fused GPU kernels' bodies give bitwise the numbers of the ufunc update rules.

No GPU is needed: every kernel body is also valid C++, so it is compiled here for the host, in
a loop shaped like CuPy's elementwise loop, and run on the same plans (kernel variant, arrays,
scalars) that the GPU launch uses, from the step's scalars that `Optimizer.update` computes. Where nvcc exists, the kernels are also compiled for the H100
and the PTX is read for the rounding the bitwise agreement needs. The real launch through CuPy is
tested on a GPU in test_gpu.py.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from optbench import gpu_kernels
from optbench.gpu_kernels import VARIANTS, FusedUpdate
from optbench.optimizers import TORCH_OPTIM as OPTIMIZERS, fused_paths, make_optimizer  # the modern rules have no GPU kernel yet

from fused_settings import GPU_SETTINGS as SETTINGS  # the rules with a CUDA kernel

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
C_TYPES = {np.float32: ("float", ctypes.c_float), np.float64: ("double", ctypes.c_double)}

PLANS = {"sgd": gpu_kernels.plan_sgd, "momentum": gpu_kernels.plan_sgd, "nesterov": gpu_kernels.plan_sgd,
         "adam": gpu_kernels.plan_adam, "adamw": gpu_kernels.plan_adam, "amsgrad": gpu_kernels.plan_adam,
         "rmsprop": gpu_kernels.plan_rmsprop, "adagrad": gpu_kernels.plan_adagrad, "adadelta": gpu_kernels.plan_adadelta,
         "nadam": gpu_kernels.plan_nadam, "radam": gpu_kernels.plan_radam, "adamax": gpu_kernels.plan_adamax}


def plan_step(name, opt, p, g, state):
    """Count a step and plan its kernel, as `Optimizer.update` does before launching it."""
    state["step"] += 1
    return PLANS[name](opt, p, g, state, opt.step_scalars(state))


def host_function_name(fused: FusedUpdate, ctype: str) -> str:
    return f"{fused.kernel_name}_{ctype}"


def loop_source(fused: FusedUpdate, ctype: str, *, device: bool) -> str:
    """One variant as a function looping over the elements, each array bound by reference as
    CuPy binds it (outputs `T &p`, inputs `const T &g`)."""
    params = ["long long n"]
    params += [f"T *_raw_{n}" for n in fused.outputs] + [f"const T *_raw_{n}" for n in fused.inputs]
    params += [f"{t} {n}" for t, n in fused.scalars]
    bind = " ".join([f"T &{n} = _raw_{n}[i];" for n in fused.outputs] + [f"const T &{n} = _raw_{n}[i];" for n in fused.inputs])
    if device:
        head = f'extern "C" __global__ void {fused.kernel_name}({", ".join(params)})'
        loop = "for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x)"
    else:
        head = f'extern "C" void {host_function_name(fused, ctype)}({", ".join(params)})'
        loop = "for (long long i = 0; i < n; ++i)"
    undef = "".join(f"#undef {k}\n" for k, _ in fused.flags)
    return (f"{fused.preamble}typedef {ctype} T;\n{head} {{\n  {loop} {{\n    {bind}\n{fused.body}\n  }}\n}}\n{undef}")


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler to build the kernel bodies for the host")
    folder = tmp_path_factory.mktemp("fused")
    units = []
    for i, fused in enumerate(VARIANTS):
        for ctype, _ in C_TYPES.values():
            units.append(f"namespace unit{i}_{ctype} {{\n{loop_source(fused, ctype, device=False)}}}\n")
    source = folder / "fused.cpp"
    source.write_text("#include <cmath>\nusing std::fabs;\nusing std::sqrt;\n" + "".join(units))
    library = folder / "fused.so"
    # No contraction into FMAs and no fast-math: each operation rounds on its own, as in NumPy.
    subprocess.run([CXX, "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-o", str(library),
                    str(source)], check=True, capture_output=True)
    return ctypes.CDLL(str(library))


def run_on_host(library, fused: FusedUpdate, arrays: dict, scalars: dict) -> None:
    dtype = arrays["p"].dtype.type
    ctype, c_scalar = C_TYPES[dtype]
    function = getattr(library, host_function_name(fused, ctype))
    pointer = ctypes.POINTER(c_scalar)
    args = [ctypes.c_longlong(arrays["p"].size)]
    for name in fused.outputs + fused.inputs:
        a = arrays[name]
        assert a.dtype == dtype and a.flags.c_contiguous and a.size == arrays["p"].size
        args.append(a.ctypes.data_as(pointer))
    for ctype_name, name in fused.scalars:
        value = scalars[name]
        if ctype_name == "bool":
            assert isinstance(value, bool), name
            args.append(ctypes.c_bool(value))
        else:
            assert type(value) is dtype, f"{name} is {type(value).__name__}, not the arrays' {dtype.__name__}"
            args.append(c_scalar(value))
    function(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, hparams", SETTINGS)
def test_kernel_body_equals_the_ufunc_rule_bitwise(host_library, name, hparams, dtype):
    rng = np.random.default_rng(1)
    fused_p = rng.standard_normal(10_001).astype(dtype)
    plain_p = fused_p.reshape(1, -1).copy()  # 2-D: the ufunc path
    opt = make_optimizer(name, lr=0.01, **hparams)
    fused_state, plain_state = opt.init(fused_p), opt.init(plain_p)
    for step in range(30):
        # Gradients that shrink and change sign, so AMSGrad's maximum and lerp both matter.
        g = (rng.standard_normal(10_001) * 0.9**step).astype(dtype)
        fused, arrays, scalars = plan_step(name, opt, fused_p, g, fused_state)
        assert fused in VARIANTS
        run_on_host(host_library, fused, arrays, scalars)
        opt.update(plain_p, g.reshape(1, -1), plain_state)
        np.testing.assert_array_equal(fused_p, plain_p[0], err_msg=f"step {step + 1}")
    assert set(plain_state) - set(fused_state) == {"scratch"}  # the kernel needs no work arrays
    for key, value in plain_state.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(fused_state[key], value[0], err_msg=key)
        elif key != "scratch":
            assert fused_state[key] == value, key  # the step count, NAdam's mu product


@pytest.mark.parametrize("name, state_key", [("amsgrad", "max_exp_avg_sq"), ("adamax", "exp_inf")])
def test_nan_propagates_like_numpy_maximum(host_library, name, state_key):
    opt = make_optimizer(name, lr=0.01)
    fused_p = np.array([1.0, 2.0, 3.0])
    plain_p = fused_p.reshape(1, -1).copy()
    fused_state, plain_state = opt.init(fused_p), opt.init(plain_p)
    for g in ([0.1, np.nan, 0.3], [0.2, 0.1, np.nan]):
        g = np.array(g)
        run_on_host(host_library, *plan_step(name, opt, fused_p, g, fused_state))
        opt.update(plain_p, g.reshape(1, -1), plain_state)
    assert np.isnan(fused_state[state_key]).sum() == 2
    np.testing.assert_array_equal(fused_p, plain_p[0])
    np.testing.assert_array_equal(fused_state[state_key], plain_state[state_key][0])


def test_every_optimizer_has_a_gpu_kernel():
    assert set(PLANS) == set(OPTIMIZERS)
    assert all(fused_paths(cls).cuda is not None for cls in OPTIMIZERS.values())


def test_every_variant_is_reachable_from_a_setting():
    reached = set()
    for name, hparams in SETTINGS:
        opt = make_optimizer(name, lr=0.01, **hparams)
        p = np.zeros(3, dtype=np.float32)
        reached.add(plan_step(name, opt, p, p.copy(), opt.init(p))[0])
    assert reached == set(VARIANTS)


def test_numpy_arrays_never_take_the_gpu_kernels():
    p = np.zeros(4, dtype=np.float32)
    assert not gpu_kernels.usable(p, p.copy(), 0.01)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: the kernels are not compiled for the GPU here")
def test_kernels_compile_for_the_h100_with_correctly_rounded_arithmetic(tmp_path):
    source = tmp_path / "fused.cu"
    source.write_text("".join(loop_source(f, "float", device=True) for f in VARIANTS))
    ptx = tmp_path / "fused.ptx"
    # The options CuPy passes to NVRTC are nvcc's too; CuPy always adds -ftz=true.
    subprocess.run(["nvcc", "-arch=sm_90", *gpu_kernels.COMPILE_OPTIONS, "-ftz=true", "--ptx", "-o", str(ptx), str(source)], check=True, capture_output=True)
    text = ptx.read_text()
    for fused in VARIANTS:
        assert f".entry {fused.kernel_name}(" in text
    # The rounding that bitwise agreement with NumPy needs: no fused multiply-adds, IEEE
    # square roots and divisions (not the approximate forms).
    assert not re.search(r"\bfma\.", text)
    assert re.search(r"\bsqrt\.rn(\.ftz)?\.f32", text) and re.search(r"\bdiv\.rn(\.ftz)?\.f32", text)
    assert not re.search(r"\b(sqrt|div|rsqrt)\.approx", text)


def _cupy_nvrtc():
    """CuPy's NVRTC binding and the include folders its kernels compile with, or a skip."""
    try:
        import cupy
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # not installed, or no NVRTC library to load
        pytest.skip(f"CuPy's NVRTC is not usable here ({type(exc).__name__}: {exc})")
    import os

    include = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
    cccl = os.path.join(include, "cupy", "_cccl")
    folders = [include] + [os.path.join(cccl, d) for d in ("libcudacxx", "thrust", "cub")]
    try:
        import nvidia.cuda_runtime

        folders.append(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "include"))
    except ImportError:  # a CUDA toolkit's headers are found by NVRTC itself
        pass
    return nvrtc, folders


def cupy_style_source(fused: FusedUpdate, ctype: str, carray_args: str) -> str:
    """The kernel as CuPy's ElementwiseKernel writes it (cupy/_core/_kernel.pyx): arrays as
    CArray, each element bound by reference before the body, in a CUPY_FOR loop."""
    inputs = [f"const CArray<{ctype}, {carray_args}> _raw_{n}" for n in fused.inputs]
    scalars = [f"const {t} {n}" for t, n in fused.scalars]
    outputs = [f"CArray<{ctype}, {carray_args}> _raw_{n}" for n in fused.outputs]
    bind = "\n".join([f"const T &{n} = _raw_{n}[_ind.get()];" for n in fused.inputs]
                     + [f"T &{n} = _raw_{n}[_ind.get()];" for n in fused.outputs])
    return (f"#include <cupy/complex.cuh>\n#include <cupy/carray.cuh>\n#include <cupy/atomics.cuh>\n"
            f"typedef {ctype} T;\n{fused.preamble}"
            f'extern "C" __global__ void {fused.kernel_name}({", ".join(inputs + scalars + outputs)}, CIndexer<1, 1> _ind) {{\n'
            f"  #pragma unroll 1\n  CUPY_FOR(i, _ind.size()) {{\n    _ind.set(i);\n{bind}\n{fused.body};\n  }}\n}}\n")


@pytest.mark.parametrize("ctype", ["float", "double"])
@pytest.mark.parametrize("fused", VARIANTS, ids=lambda f: f.kernel_name)
def test_kernels_compile_with_cupys_nvrtc_and_headers(fused, ctype):
    """No GPU needed: NVRTC compiles for the H100 without a device, as CuPy would at first call."""
    nvrtc, folders = _cupy_nvrtc()
    # In CuPy's order: the kernel's options, then what CuPy adds (-ftz=true last).
    options = [*gpu_kernels.COMPILE_OPTIONS, "--std=c++17", "-arch=compute_90", *(f"-I{f}" for f in folders), "-ftz=true"]
    logs = []
    for carray_args in ("1, 1, 1", "1, 1, 1, 0"):  # CArray's template arguments differ across CuPy releases
        program = nvrtc.createProgram(cupy_style_source(fused, ctype, carray_args), "kernel.cu", [], [])
        try:
            nvrtc.compileProgram(program, options)
        except Exception:
            logs.append(nvrtc.getProgramLog(program))
            continue
        ptx = nvrtc.getPTX(program)
        text = ptx.decode() if isinstance(ptx, bytes) else ptx
        assert not re.search(r"\bfma\.", text) and "approx" not in text
        return
    pytest.fail("NVRTC refused the kernel:\n" + logs[0][:3000])
