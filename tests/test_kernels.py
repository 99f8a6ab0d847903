"""The fused CPU kernels give bitwise the numbers of the ufunc update rules they replace."""

from __future__ import annotations

import numpy as np
import pytest

from optbench import kernels
from optbench.optimizers import OPTIMIZERS, TORCH_OPTIM, Adam, fused_paths, make_optimizer

from fused_settings import CPU_FUSED, CPU_SETTINGS

pytestmark = pytest.mark.skipif(kernels.njit is None, reason="numba is not installed: the ufunc path serves alone")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, hparams", CPU_SETTINGS)
def test_fused_kernel_equals_the_ufunc_rule_bitwise(name, hparams, dtype):
    rng = np.random.default_rng(0)
    fused_p = rng.standard_normal(10_001).astype(dtype)
    plain_p = fused_p.reshape(1, -1).copy()  # 2-D: the ufunc path
    opt = make_optimizer(name, lr=0.01, **hparams)
    fused_state, plain_state = opt.init(fused_p), opt.init(plain_p)
    for step in range(30):
        # Gradients that shrink and change sign, so AMSGrad's maximum and lerp both matter.
        g = (rng.standard_normal(10_001) * 0.9**step).astype(dtype)
        assert kernels.usable(fused_p, g, opt.lr) and not kernels.usable(plain_p, g.reshape(1, -1), opt.lr)
        opt.update(fused_p, g, fused_state)
        opt.update(plain_p, g.reshape(1, -1), plain_state)
        np.testing.assert_array_equal(fused_p, plain_p[0])
    assert fused_p.dtype == dtype
    # The dispatcher chose the kernel for the flat buffer: only the ufunc rule made scratch arrays.
    assert "scratch" not in fused_state and "scratch" in plain_state


def test_every_cpu_kernel_has_settings():
    assert {name for name, _ in CPU_SETTINGS} == CPU_FUSED and CPU_FUSED < set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(set(TORCH_OPTIM) - CPU_FUSED))
def test_a_rule_without_a_cpu_kernel_takes_the_ufunc_path(name):
    opt = make_optimizer(name, lr=0.01)
    p = np.ones(5)
    state = opt.init(p)
    opt.update(p, np.full(5, 0.5), state)
    assert "scratch" in state and state["step"] == 1


def test_a_subclass_takes_its_family_kernels():
    class Tuned(Adam):
        name = "tuned"

    assert fused_paths(Tuned) is fused_paths(Adam) and fused_paths(Adam).numba is kernels.adam
    opt, reference = Tuned(lr=0.01), Adam(lr=0.01)
    p, q = np.ones(5), np.ones(5)
    state, reference_state = opt.init(p), reference.init(q)
    g = np.linspace(-1.0, 1.0, 5)
    opt.update(p, g, state)
    reference.update(q, g, reference_state)
    np.testing.assert_array_equal(p, q)
    assert "scratch" not in state


def test_nan_propagates_like_numpy_maximum():
    opt = make_optimizer("amsgrad", lr=0.01)
    fused = np.array([1.0, 2.0, 3.0])
    plain = fused.reshape(1, -1).copy()
    sf, sp = opt.init(fused), opt.init(plain)
    for g in ([0.1, np.nan, 0.3], [0.2, 0.1, np.nan]):
        g = np.array(g)
        opt.update(fused, g, sf)
        opt.update(plain, g.reshape(1, -1), sp)
    np.testing.assert_array_equal(fused, plain[0])
    np.testing.assert_array_equal(sf["max_exp_avg_sq"], sp["max_exp_avg_sq"][0])
