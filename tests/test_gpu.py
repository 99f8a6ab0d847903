"""NumPy and CuPy agree: the same optimizers, network and training on both array modules.

Skipped, with the reason, on machines without CuPy and a CUDA device (CI has none)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from optbench.backend import _gpu_unavailable_reason, select_device
from optbench.schedules import CONSTANT, Schedule

from fused_settings import GPU_SETTINGS as SETTINGS  # the rules with a CUDA kernel

reason = _gpu_unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no GPU for the CuPy path: {reason}")


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "amsgrad", "nadam", "radam", "adamax"])
def test_optimizer_steps_agree_on_numpy_and_cupy(name):
    import cupy

    from optbench.optimizers import make_optimizer

    rng = np.random.default_rng(0)
    p_cpu = rng.standard_normal(1000).astype(np.float32)
    p_gpu = cupy.asarray(p_cpu)
    opt = make_optimizer(name)
    s_cpu, s_gpu = opt.init(p_cpu), opt.init(p_gpu)
    for _ in range(20):
        g = rng.standard_normal(1000).astype(np.float32)
        opt.update(p_cpu, g, s_cpu)
        opt.update(p_gpu, cupy.asarray(g), s_gpu)
    assert p_gpu.dtype == cupy.float32 and all(v.dtype == cupy.float32 for v in s_gpu.values() if hasattr(v, "dtype"))
    np.testing.assert_allclose(cupy.asnumpy(p_gpu), p_cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, hparams", SETTINGS)
def test_fused_gpu_kernel_equals_the_numpy_ufunc_rule_bitwise(name, hparams, dtype):
    """Compiled without FMA contraction, the one-kernel update rounds exactly as NumPy does."""
    import cupy

    from optbench import gpu_kernels
    from optbench.optimizers import make_optimizer

    rng = np.random.default_rng(0)
    plain_p = rng.standard_normal((1, 10_001)).astype(dtype)  # 2-D NumPy: the ufunc path
    fused_p = cupy.asarray(plain_p[0])
    opt = make_optimizer(name, lr=0.01, **hparams)
    plain_state, fused_state = opt.init(plain_p), opt.init(fused_p)
    for step in range(30):
        g = (rng.standard_normal((1, 10_001)) * 0.9**step).astype(dtype)
        g_gpu = cupy.asarray(g[0])
        assert gpu_kernels.usable(fused_p, g_gpu, opt.lr)
        opt.update(plain_p, g, plain_state)
        opt.update(fused_p, g_gpu, fused_state)
        np.testing.assert_array_equal(cupy.asnumpy(fused_p), plain_p[0], err_msg=f"step {step + 1}")
    assert "scratch" not in fused_state  # the fused path needs no work arrays


@pytest.mark.skipif(os.environ.get("CUPY_TF32", "0") != "0", reason="CUPY_TF32 rounds matrix products to 10-bit mantissas")
def test_training_agrees_on_cpu_and_gpu_for_the_first_steps():
    from optbench.mlp import MLP
    from optbench.optimizers import make_optimizer
    from optbench.training import train

    rng = np.random.default_rng(0)
    x = rng.random((2000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 2000)
    losses = {}
    for kind in ("cpu", "gpu"):
        device = select_device(kind)
        xp = device.xp
        data = [xp.asarray(a) for a in (x, y, x[:500], y[:500])]
        net = MLP((784, 100, 100, 10), seed=0, xp=xp)
        log = train(net, make_optimizer("adam"), *data, iterations=20, batch_size=128, sync=device.sync)
        losses[kind] = [r["train_loss"] for r in log.iterations]
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-4)


def test_gpu_network_stays_float32_with_dropout_and_batchnorm():
    import cupy

    from optbench.mlp import MLP, softmax_cross_entropy
    from optbench.optimizers import make_optimizer
    from optbench.training import train

    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.random((1000, 784), dtype=np.float32))
    y = cupy.asarray(rng.integers(0, 10, 1000))
    net = MLP((784, 64, 10), dropout=0.5, batchnorm=True, seed=0, xp=cupy)
    logits = net.forward(x[:10])
    loss, dlogits = softmax_cross_entropy(logits, y[:10])
    assert logits.dtype == loss.dtype == dlogits.dtype == cupy.float32
    device = select_device("gpu")
    log = train(net, make_optimizer("adam"), x, y, x[:200], y[:200], iterations=30, batch_size=100, sync=device.sync)
    assert not log.diverged and all(np.isfinite(r["train_loss"]) for r in log.iterations)


@pytest.mark.parametrize("name, schedule", [(name, CONSTANT) for name in ("sgd", "momentum", "adam", "rmsprop")]
                         + [("adam", Schedule("cosine", warmup=4))])
def test_cuda_graph_replay_trains_bitwise_as_the_eager_step(name, schedule):
    """The graph replays the very kernels of the eager step: the same losses and weights (a
    schedule sets the host-side lr of the update, which runs outside the graph)."""
    import cupy

    from optbench.mlp import MLP
    from optbench.optimizers import make_optimizer
    from optbench.training import train

    device = select_device("gpu")
    rng = np.random.default_rng(0)
    data = [cupy.asarray(a) for a in (rng.random((1000, 784), dtype=np.float32), rng.integers(0, 10, 1000),
                                      rng.random((200, 784), dtype=np.float32), rng.integers(0, 10, 200))]
    runs = {}
    for graph in (False, True):
        net = MLP((784, 100, 100, 10), seed=0, xp=cupy)
        log = train(net, make_optimizer(name, lr=0.01), *data, epochs=2, eval_every=5, batch_size=100,
                    weight_decay=1e-4, sync=device.sync, cuda_graph=graph, schedule=schedule)
        runs[graph] = ([r["train_loss"] for r in log.iterations], cupy.asnumpy(net.params))
    assert len(runs[True][0]) == 20
    assert runs[True][0] == runs[False][0]
    np.testing.assert_array_equal(runs[True][1], runs[False][1])


def test_cuda_graph_refuses_dropout_and_batchnorm():
    import cupy

    from optbench.errors import OptbenchError
    from optbench.graphs import GraphedStep
    from optbench.mlp import MLP

    x, y = cupy.zeros((256, 784), dtype=cupy.float32), cupy.zeros(256, dtype=cupy.int64)
    for options in ({"dropout": 0.5}, {"batchnorm": True}):
        with pytest.raises(OptbenchError, match="do not support"):
            GraphedStep(MLP((784, 32, 10), xp=cupy, **options), x, y, (1, 128))


def test_bench_on_the_gpu_has_eager_graph_and_torch_rows():
    from optbench.bench import run_bench

    device = select_device("gpu")
    steps, updates, facts = run_bench(device, repeats=2, steps=3, nets=[("tiny", (784, 32, 10), 64)],
                                      optimizers=("adam",), pause=0.0)
    impls = {row["impl"] for row in steps}
    assert {"optbench", "optbench (CUDA graph)"} <= impls, facts.get("cuda_graph_failures")
    try:
        import torch

        torch_on_gpu = torch.cuda.is_available()
    except ImportError:
        torch_on_gpu = False
    if torch_on_gpu:
        assert any(impl.startswith("torch (") for impl in impls) and facts["torch_cuda"]
    assert all(row["ms_per_step"] > 0 for row in steps)


@pytest.mark.skipif(os.environ.get("CUPY_TF32", "0") != "0", reason="CUPY_TF32 rounds matrix products to 10-bit mantissas")
def test_a_population_trains_on_cupy_as_on_numpy():
    """Two seeds × three optimizers as one population: the GPU's losses, final weights and
    test accuracy agree with the CPU's within float32 rounding; a diverging member is frozen."""
    from optbench.backend import to_numpy
    from optbench.mlp import Population
    from optbench.optimizers import make_optimizer
    from optbench.training import train_population

    rng = np.random.default_rng(0)
    x, y = rng.random((2000, 784), dtype=np.float32), rng.integers(0, 10, 2000)
    specs = [("adam", 1e-3), ("momentum", 0.01), ("sgd", 1e7)]
    runs = {}
    for kind in ("cpu", "gpu"):
        device = select_device(kind)
        xp = device.xp
        data = [xp.asarray(a) for a in (x, y, x[:500], y[:500])]
        pop = Population((784, 64, 32, 10), [0, 0, 0, 1, 1, 1], xp=xp)
        log = train_population(pop, [make_optimizer(n, lr=lr) for _ in range(2) for n, lr in specs], data[0], data[1],
                               {"test": (data[2], data[3])}, iterations=30, eval_every=10, batch_size=128,
                               group_seeds=[0, 1], sync=device.sync)
        runs[kind] = (log, to_numpy(pop.rows))
    (cpu, w_cpu), (gpu, w_gpu) = runs["cpu"], runs["gpu"]
    np.testing.assert_array_equal(cpu.diverged_at, gpu.diverged_at)
    assert cpu.diverged_at[2] > 0 and cpu.diverged_at[5] > 0
    finite = [0, 1, 3, 4]
    np.testing.assert_allclose(gpu.losses[finite], cpu.losses[finite], rtol=1e-4)
    np.testing.assert_allclose(w_gpu[finite], w_cpu[finite], rtol=1e-3, atol=1e-5)
    assert [e["iteration"] for e in gpu.evaluations] == [e["iteration"] for e in cpu.evaluations] == [10, 20, 30]
    for on_gpu, on_cpu in zip(gpu.evaluations, cpu.evaluations):
        np.testing.assert_allclose(on_gpu["test_loss"][finite], on_cpu["test_loss"][finite], rtol=1e-4)
        # 500 images: a prediction that flips on a near tie moves accuracy by 0.002.
        np.testing.assert_allclose(on_gpu["test_acc"][finite], on_cpu["test_acc"][finite], atol=0.0041)



MODERN_NAMES = ["lion", "sf_adamw", "sf_sgd", "ademamix", "prodigy", "lamb", "adafactor", "muon"]


@pytest.mark.parametrize("name", MODERN_NAMES)
def test_modern_rules_agree_on_numpy_and_cupy_over_a_network_layout(name):
    import cupy

    from optbench.mlp import parameter_count, parameter_shapes
    from optbench.optimizers import init_state, make_optimizer

    sizes = (30, 12, 6)
    layout, n = parameter_shapes(sizes, False), parameter_count(sizes)
    rng = np.random.default_rng(0)
    p_cpu = (rng.standard_normal(n) * 0.1).astype(np.float32)
    p_gpu = cupy.asarray(p_cpu)
    opt = make_optimizer(name)
    s_cpu, s_gpu = init_state(opt, p_cpu, layout), init_state(opt, p_gpu, layout)
    for _ in range(20):
        g = (rng.standard_normal(n) * 0.1).astype(np.float32)
        opt.update(p_cpu, g, s_cpu)
        opt.update(p_gpu, cupy.asarray(g), s_gpu)
    assert p_gpu.dtype == cupy.float32
    # Reductions (norms, Prodigy's sums, Muon's products) add up in another order on the GPU.
    np.testing.assert_allclose(cupy.asnumpy(p_gpu), p_cpu, rtol=1e-3, atol=1e-5)
    answer = opt.evaluation_weights(p_gpu, s_gpu)
    np.testing.assert_allclose(cupy.asnumpy(answer), opt.evaluation_weights(p_cpu, s_cpu), rtol=1e-3, atol=1e-5)
