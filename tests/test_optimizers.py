"""The twelve optimizers against oracles from outside the code: hand-derived steps, closed forms.

The contract is torch.optim's update rules and defaults. Every expected value below is worked
out from the published update rule (torch.optim's documentation, the papers) and written as a
formula or a number in the test; nothing is computed by calling back into the module under
test. The parity test against torch itself lives in test_torch_parity.py.

Notation: lr, g (gradient), eps; default betas (0.9, 0.999) unless said otherwise.
"""

from __future__ import annotations

import math
import sys
import textwrap
import uuid

import numpy as np
import pytest

from optbench.errors import OptbenchError
from optbench.optimizers import (
    OPTIMIZERS,
    TORCH_OPTIM,
    SGD,
    Adam,
    hparams_for,
    make_optimizer,
    parse_hparams,
)

ALL = list(TORCH_OPTIM)  # the modern rules: test_modern.py
RTOL = 1e-12

# A batch of 2-D points (N, 2) and a 1-D vector, both with gradients of mixed sign and of
# magnitudes far above every default eps, so that eps only enters where the formula says so.
POINTS = np.array([[3.0, -2.0], [-0.5, 0.25], [1e-3, 40.0], [7.0, 7.0]])
POINTS_G = np.array([[0.3, -4.0], [2.5, 1e-2], [-60.0, 0.7], [-1.0, 1.0]])
VECTOR = np.array([1.0, -3.0, 0.5, 2.0, -0.125, 10.0, -7.5])
VECTOR_G = np.array([-2.0, 0.5, 9.0, -0.03, 1.0, -5.0, 0.25])


@pytest.fixture(params=["points", "vector"])
def pg(request):
    """(p0, g) as fresh float64 arrays: an (N, 2) batch of points or a 1-D vector."""
    if request.param == "points":
        return POINTS.copy(), POINTS_G.copy()
    return VECTOR.copy(), VECTOR_G.copy()


def steps(opt, p0, grads):
    """Apply the gradients in turn (each an array, or a function of p); return p after each step."""
    p = p0.copy()
    state = opt.init(p)
    out = []
    for g in grads:
        opt.update(p, g(p) if callable(g) else g.copy(), state)
        out.append(p.copy())
    return out


def close(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# Multi-step closed forms: a coordinate may pass close to zero, where a relative test is
# meaningless (it is the difference of O(10) numbers); allow rounding at the problem's scale.
ATOL_STEPS = 1e-12


# ==================================================================================================
# Hand-derived first (and second) steps at default hyperparameters
# ==================================================================================================


def test_sgd_first_two_steps(pg):
    # p1 = p0 - lr g;  with the same g again p2 = p0 - 2 lr g  (lr = 1e-3).
    p0, g = pg
    p1, p2 = steps(make_optimizer("sgd"), p0, [g, g])
    close(p1, p0 - 1e-3 * g)
    close(p2, p0 - 2e-3 * g)


def test_momentum_buffer_starts_at_first_gradient(pg):
    # torch: b1 = g (no zero init, no dampening), b2 = mu b1 + g = 1.9 g for constant g (mu = 0.9).
    # So the steps are -lr g and -1.9 lr g; a zero-initialised buffer would give -lr g, -1.9 lr g
    # only with a (1 - mu) factor missing, and an EMA buffer would give -0.1 lr g first.
    p0, g = pg
    p1, p2 = steps(make_optimizer("momentum"), p0, [g, g])
    close(p1, p0 - 1e-3 * g)
    close(p2, p1 - 1e-3 * 1.9 * g)


def test_nesterov_first_two_steps(pg):
    # Step 1: b = g, update direction g + mu b = 1.9 g.
    # Step 2: b = 0.9 g + g = 1.9 g, direction g + 0.9 * 1.9 g = 2.71 g.
    p0, g = pg
    p1, p2 = steps(make_optimizer("nesterov"), p0, [g, g])
    close(p1, p0 - 1e-3 * 1.9 * g)
    close(p2, p1 - 1e-3 * 2.71 * g)


def test_sgd_dampening_skips_first_step(pg):
    # torch applies dampening only from the second step: b1 = g, b2 = 0.9 g + (1 - 0.5) g = 1.4 g.
    p0, g = pg
    p1, p2 = steps(make_optimizer("sgd", momentum=0.9, dampening=0.5), p0, [g, g])
    close(p1, p0 - 1e-3 * g)
    close(p2, p1 - 1e-3 * 1.4 * g)


def test_adagrad_first_two_steps(pg):
    # s1 = g^2: p1 = p0 - lr g / (|g| + eps);  s2 = 2 g^2: step -lr g / (sqrt(2) |g| + eps).
    # lr = 1e-2, eps = 1e-10 (added outside the square root).
    p0, g = pg
    p1, p2 = steps(make_optimizer("adagrad"), p0, [g, g])
    close(p1, p0 - 1e-2 * g / (np.abs(g) + 1e-10))
    close(p2, p1 - 1e-2 * g / (math.sqrt(2) * np.abs(g) + 1e-10))
    # The first step is a sign step of size lr, whatever the gradient's scale (up to eps/|g|).
    close(p0 - p1, 1e-2 * np.sign(g), rtol=1e-7)


def test_adagrad_second_step_with_a_different_gradient(pg):
    # s2 = g1^2 + g2^2, step -lr g2 / (sqrt(g1^2 + g2^2) + eps).
    p0, g1 = pg
    g2 = -0.5 * g1[::-1].copy()
    p1, p2 = steps(make_optimizer("adagrad"), p0, [g1, g2])
    close(p2, p1 - 1e-2 * g2 / (np.sqrt(g1**2 + g2**2) + 1e-10))


def test_rmsprop_first_two_steps(pg):
    # v1 = (1 - alpha) g^2 = 0.01 g^2: step -lr g / (sqrt(0.01) |g| + eps) = -lr g / (0.1 |g| + eps),
    # i.e. about -10 lr sign(g) = -0.1 sign(g) (lr 1e-2, alpha 0.99, eps 1e-8 outside the root).
    # v2 = 0.99 * 0.01 g^2 + 0.01 g^2 = 0.0199 g^2.
    p0, g = pg
    p1, p2 = steps(make_optimizer("rmsprop"), p0, [g, g])
    close(p1, p0 - 1e-2 * g / (0.1 * np.abs(g) + 1e-8))
    close(p2, p1 - 1e-2 * g / (math.sqrt(0.0199) * np.abs(g) + 1e-8))
    close(p0 - p1, 0.1 * np.sign(g), rtol=1e-5)  # up to eps / (0.1 |g|) <= 1e-5 here


def test_rmsprop_momentum_buffer_starts_at_zero(pg):
    # RMSprop's buffer (unlike SGD's) starts at 0: b1 = g/d1, b2 = mu b1 + g/d2 (mu = 0.9).
    p0, g = pg
    d1 = math.sqrt(0.01) * np.abs(g) + 1e-8
    d2 = math.sqrt(0.0199) * np.abs(g) + 1e-8
    p1, p2 = steps(make_optimizer("rmsprop", momentum=0.9), p0, [g, g])
    close(p1, p0 - 1e-2 * g / d1)
    close(p2, p1 - 1e-2 * (0.9 * g / d1 + g / d2))


def test_adadelta_first_two_steps(pg):
    # v1 = (1 - rho) g^2 = 0.1 g^2, u0 = 0: d1 = sqrt(0 + eps) / sqrt(0.1 g^2 + eps) * g,
    # p1 = p0 - lr d1 (lr 1.0, rho 0.9, eps 1e-6 *inside* both roots). Then u1 = 0.1 d1^2,
    # v2 = 0.19 g^2 for the same g, d2 = sqrt(u1 + eps) / sqrt(0.19 g^2 + eps) * g.
    p0, g = pg
    eps = 1e-6
    d1 = math.sqrt(eps) / np.sqrt(0.1 * g * g + eps) * g
    u1 = 0.1 * d1 * d1
    d2 = np.sqrt(u1 + eps) / np.sqrt(0.19 * g * g + eps) * g
    p1, p2 = steps(make_optimizer("adadelta"), p0, [g, g])
    close(p1, p0 - d1)
    close(p2, p1 - d2)
    # Where |g| >> sqrt(eps/0.1) the first step is about sqrt(10 eps) sign(g) ~ 3.16e-3 sign(g).
    big = np.abs(g) > 0.1
    close((p0 - p1)[big], math.sqrt(10 * eps) * np.sign(g[big]), rtol=1e-3)


def test_adam_first_step_is_a_sign_step(pg):
    # m1 = 0.1 g, v1 = 0.001 g^2; bias-corrected m^ = g, sqrt(v^) = |g|:
    # p1 = p0 - lr g / (|g| + eps) = p0 - lr sign(g) up to eps  (lr 1e-3, eps 1e-8).
    p0, g = pg
    for name in ("adam", "amsgrad"):
        (p1,) = steps(make_optimizer(name), p0, [g])
        close(p1, p0 - 1e-3 * g / (np.abs(g) + 1e-8))
        close(p0 - p1, 1e-3 * np.sign(g), rtol=1e-5)  # up to eps / |g| <= 1e-6 here


def test_adam_second_step_with_a_different_gradient(pg):
    # m2 = 0.9 * 0.1 g1 + 0.1 g2,            m^ = m2 / (1 - 0.9^2)   = m2 / 0.19
    # v2 = 0.999 * 0.001 g1^2 + 0.001 g2^2,  v^ = v2 / (1 - 0.999^2) = v2 / 0.001999
    p0, g1 = pg
    g2 = 3.0 * g1[::-1].copy()
    m2 = 0.09 * g1 + 0.1 * g2
    v2 = 0.000999 * g1**2 + 0.001 * g2**2
    p1, p2 = steps(make_optimizer("adam"), p0, [g1, g2])
    close(p2, p1 - 1e-3 * (m2 / 0.19) / (np.sqrt(v2 / 0.001999) + 1e-8), rtol=1e-10)


def test_adamw_first_step_decays_then_steps(pg):
    # Decoupled decay: p <- p (1 - lr wd) first, then the Adam step on the raw gradient:
    # p1 = p0 (1 - 1e-3 * 1e-2) - 1e-3 g / (|g| + 1e-8).
    p0, g = pg
    (p1,) = steps(make_optimizer("adamw"), p0, [g])
    close(p1, p0 * (1 - 1e-5) - 1e-3 * g / (np.abs(g) + 1e-8))


def test_adamw_decay_is_decoupled_from_gradient_scale(pg):
    # With lr 0.1, wd 0.5 and eps 0: p1 = 0.95 p0 - 0.1 sign(g), whatever the scale of g; coupled
    # L2 (Adam with weight_decay) instead puts 0.5 p inside the normalised step:
    # -0.1 ge / (|ge| + eps) with ge = g + 0.5 p (eps back at 1e-8: ge is exactly 0 at one entry).
    p0, g = pg
    for scale in (1e-3, 1.0, 1e3):
        (p1,) = steps(make_optimizer("adamw", lr=0.1, weight_decay=0.5, eps=0.0), p0, [scale * g])
        close(p1, 0.95 * p0 - 0.1 * np.sign(g))
    (coupled,) = steps(make_optimizer("adam", lr=0.1, weight_decay=0.5), p0, [g])
    ge = g + 0.5 * p0
    close(coupled, p0 - 0.1 * ge / (np.abs(ge) + 1e-8))


# NAdam's momentum schedule (Dozat 2016, as in torch): mu_t = beta1 (1 - 0.5 * 0.96^(t psi)),
# psi = momentum_decay = 4e-3. By hand: 0.96^0.004 = exp(0.004 ln 0.96) = exp(-1.63288e-4)
# = 0.99983672, so mu_1 = 0.9 * 0.50008164 = 0.45007347; 0.96^0.008 = 0.99967347, so
# mu_2 = 0.9 * 0.50016327 = 0.45014694.
NADAM_MU1 = 0.9 * (1 - 0.5 * 0.96 ** (1 * 4e-3))
NADAM_MU2 = 0.9 * (1 - 0.5 * 0.96 ** (2 * 4e-3))
NADAM_MU3 = 0.9 * (1 - 0.5 * 0.96 ** (3 * 4e-3))


def test_nadam_schedule_constants():
    assert NADAM_MU1 == pytest.approx(0.45007347, abs=1e-8)
    assert NADAM_MU2 == pytest.approx(0.45014694, abs=1e-8)


def test_nadam_first_step(pg):
    # With m1 = 0.1 g, v1 = 0.001 g^2, d = sqrt(v1 / (1 - 0.999)) + eps = |g| + eps:
    #   p1 = p0 - lr (1 - mu1) / (1 - mu1) g/d - lr mu2 / (1 - mu1 mu2) * 0.1 g/d
    #      = p0 - lr [1 + 0.1 mu2 / (1 - mu1 mu2)] g/d   ~ p0 - 1.0564518 lr sign(g)   (lr 2e-3)
    p0, g = pg
    factor = 1 + 0.1 * NADAM_MU2 / (1 - NADAM_MU1 * NADAM_MU2)
    assert factor == pytest.approx(1.0564518, abs=1e-7)
    (p1,) = steps(make_optimizer("nadam"), p0, [g])
    close(p1, p0 - 2e-3 * factor * g / (np.abs(g) + 1e-8))


def test_nadam_second_step_constant_gradient(pg):
    # Step 2, same g: P2 = mu1 mu2, m2 = 0.19 g, v2 = 0.001999 g^2, d = |g| + eps again:
    #   p2 = p1 - lr (1 - mu2)/(1 - mu1 mu2) g/d - lr mu3/(1 - mu1 mu2 mu3) * 0.19 g/d
    p0, g = pg
    prod = NADAM_MU1 * NADAM_MU2
    factor = (1 - NADAM_MU2) / (1 - prod) + 0.19 * NADAM_MU3 / (1 - prod * NADAM_MU3)
    p1, p2 = steps(make_optimizer("nadam"), p0, [g, g])
    close(p2, p1 - 2e-3 * factor * g / (np.abs(g) + 1e-8), rtol=1e-10)


def radam_rho(t, beta2=0.999):
    """rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t), rho_inf = 2 / (1 - beta2) - 1 (Liu et al.)."""
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * t * beta2**t / (1 - beta2**t)


def test_radam_rho_switches_on_at_step_six():
    # With d = 1 - beta2 and beta2^t = 1 - t d + t(t-1) d^2/2 - ..., the series gives
    # rho_t = t - d t (t-1)/4 + O(d^2 t^3): just under t. With d = 1e-3 that is
    # rho_5 ~ 4.996 <= 5 and rho_6 ~ 5.994 > 5, so steps 1..5 are un-rectified, step 6 is the first
    # adaptive one (torch switches on when rho_t > 5).
    assert radam_rho(1) == pytest.approx(1.0, abs=1e-9)
    assert radam_rho(5) == pytest.approx(4.996, abs=1e-3)
    assert radam_rho(6) == pytest.approx(5.994, abs=1e-3)
    assert [radam_rho(t) > 5 for t in range(1, 8)] == [False] * 5 + [True] * 2


def test_radam_is_sgd_with_momentum_for_five_steps_then_rectified(pg):
    # Steps 1..5: p <- p - lr m^, and m^ = g exactly for constant g, so p_t = p0 - t lr g.
    # Step 6: v6 = (1 - beta2^6) g^2, the adaptive factor sqrt(1 - beta2^6) / (sqrt(v6) + eps)
    # is 1/|g| up to eps, times the rectifier
    #   r6 = sqrt((rho6 - 4)(rho6 - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho6)) ~ 0.0258211.
    p0, g = pg
    lr = 1e-3
    trajectory = steps(make_optimizer("radam"), p0, [g] * 6)
    for t in range(1, 6):
        close(trajectory[t - 1], p0 - t * lr * g, rtol=1e-10)
    rho6, rho_inf = radam_rho(6), 1999.0
    r6 = math.sqrt((rho6 - 4) * (rho6 - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho6))
    assert r6 == pytest.approx(0.0258211, abs=1e-7)
    bc2 = 1 - 0.999**6
    expected6 = trajectory[4] - lr * r6 * g * math.sqrt(bc2) / (math.sqrt(bc2) * np.abs(g) + 1e-8)
    close(trajectory[5], expected6, rtol=1e-10)


def test_radam_early_steps_scale_with_the_gradient(pg):
    # Because the first steps are plain momentum, a 1000x larger gradient moves 1000x further,
    # unlike Adam's sign-like first step.
    p0, g = pg
    (small,) = steps(make_optimizer("radam"), p0, [g])
    (large,) = steps(make_optimizer("radam"), p0, [1000 * g])
    close(large - p0, 1000 * (small - p0), rtol=1e-9)


def test_adamax_first_two_steps(pg):
    # m1 = 0.1 g, u1 = max(0, |g| + eps) = |g| + eps, clr = lr / (1 - 0.9) = 10 lr:
    #   p1 = p0 - lr g / (|g| + eps)  (lr 2e-3, eps 1e-8 added inside the max).
    # Same g again: u2 = max(0.999 u1, |g| + eps) = |g| + eps, m2 = 0.19 g, clr = lr / 0.19.
    p0, g = pg
    p1, p2 = steps(make_optimizer("adamax"), p0, [g, g])
    close(p1, p0 - 2e-3 * g / (np.abs(g) + 1e-8))
    close(p2, p1 - 2e-3 * g / (np.abs(g) + 1e-8))


def test_adamax_keeps_the_decayed_maximum_when_gradients_shrink(pg):
    # Second gradient g/2: u2 = max(0.999 (|g| + eps), |g|/2 + eps) = 0.999 (|g| + eps),
    # m2 = 0.09 g + 0.1 g/2 = 0.14 g, so the step is -(2e-3 / 0.19) * 0.14 g / (0.999 (|g| + eps)).
    p0, g = pg
    p1, p2 = steps(make_optimizer("adamax"), p0, [g, 0.5 * g])
    close(p2, p1 - (2e-3 / 0.19) * 0.14 * g / (0.999 * (np.abs(g) + 1e-8)), rtol=1e-10)


# ==================================================================================================
# Closed forms over many steps
# ==================================================================================================

QUAD_A = np.array([1.0, 4.0])


def test_sgd_on_a_quadratic_follows_the_geometric_closed_form():
    # f = 0.5 sum(a p^2), g = a p: p_t = (1 - lr a)^t p0, per coordinate.
    lr, p0 = 0.1, np.array([3.0, -2.0])
    trajectory = steps(make_optimizer("sgd", lr=lr), p0, [lambda p: QUAD_A * p] * 60)
    for t, p in enumerate(trajectory, start=1):
        close(p, (1 - lr * QUAD_A) ** t * p0, rtol=1e-11, atol=ATOL_STEPS)


@pytest.mark.parametrize("mu", [0.5, 0.9])
def test_heavy_ball_constant_gradient_closed_form(pg, mu):
    # b1 = g, b_t = mu b_{t-1} + g = g (1 - mu^t) / (1 - mu); p_t = p0 - lr sum_k b_k.
    p0, g = pg
    lr = 1e-2
    trajectory = steps(make_optimizer("sgd", lr=lr, momentum=mu), p0, [g] * 40)
    total = 0.0
    for t, p in enumerate(trajectory, start=1):
        total += (1 - mu**t) / (1 - mu)
        close(p, p0 - lr * total * g, rtol=1e-10, atol=ATOL_STEPS)


@pytest.mark.parametrize("dampening", [0.0, 0.3, 1.0])
def test_dampening_constant_gradient_closed_form(pg, dampening):
    # b1 = g (no dampening), b_t = 0.9 b_{t-1} + (1 - d) g
    #    = 0.9^(t-1) g + (1 - d) g (1 - 0.9^(t-1)) / 0.1.
    # d = 1 freezes the buffer at the first gradient decaying geometrically.
    p0, g = pg
    lr = 1e-2
    trajectory = steps(make_optimizer("momentum", lr=lr, dampening=dampening), p0, [g] * 30)
    total = 0.0
    for t, p in enumerate(trajectory, start=1):
        total += 0.9 ** (t - 1) + (1 - dampening) * (1 - 0.9 ** (t - 1)) / 0.1
        close(p, p0 - lr * total * g, rtol=1e-10, atol=ATOL_STEPS)


def test_nesterov_constant_gradient_closed_form(pg):
    # b_t = g (1 - 0.9^t) / 0.1; step direction g + 0.9 b_t.
    p0, g = pg
    lr = 1e-2
    trajectory = steps(make_optimizer("nesterov", lr=lr), p0, [g] * 30)
    total = 0.0
    for t, p in enumerate(trajectory, start=1):
        total += 1 + 0.9 * (1 - 0.9**t) / 0.1
        close(p, p0 - lr * total * g, rtol=1e-10, atol=ATOL_STEPS)


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamax"])
def test_constant_gradient_gives_constant_sign_steps(pg, name):
    # Bias corrections are exact for a constant gradient: m^ = g and sqrt(v^) = |g| (Adam), or
    # u = |g| + eps (Adamax), so every step is -lr g/(|g| + eps): p_t = p0 - t lr g/(|g| + eps).
    p0, g = pg
    opt = make_optimizer(name, lr=0.01)
    trajectory = steps(opt, p0, [g] * 50)
    for t, p in enumerate(trajectory, start=1):
        close(p, p0 - t * 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-9, atol=ATOL_STEPS)


def test_rmsprop_centered_constant_gradient_closed_form(pg):
    # v_t = (1 - a^t) g^2, m_t = (1 - a^t) g (alpha = a = 0.99), so the centred variance is
    # v_t - m_t^2 = (1 - a^t) a^t g^2 and the step is -lr g / (sqrt((1 - a^t) a^t) |g| + eps).
    # Uncentred it would be sqrt(1 - a^t) instead: the first step is 1/sqrt(0.99) larger centred.
    p0, g = pg
    a, lr = 0.99, 1e-2
    trajectory = steps(make_optimizer("rmsprop", centered=True), p0, [g] * 20)
    p = p0.copy()
    for t, actual in enumerate(trajectory, start=1):
        p = p - lr * g / (math.sqrt((1 - a**t) * a**t) * np.abs(g) + 1e-8)
        close(actual, p, rtol=1e-9, atol=ATOL_STEPS)


# Every optimizer with coupled (L2) weight decay: optimizer(wd) on g == optimizer(0) on g + wd p.
COUPLED_DECAY = [
    ("sgd", {}), ("momentum", {}), ("nesterov", {}), ("sgd", {"momentum": 0.9, "dampening": 0.3}),
    ("adagrad", {}), ("rmsprop", {}), ("rmsprop", {"centered": True, "momentum": 0.5}),
    ("adadelta", {}), ("adam", {}), ("amsgrad", {}), ("nadam", {}), ("radam", {}), ("adamax", {}),
]


@pytest.mark.parametrize(("name", "extra"), COUPLED_DECAY)
def test_weight_decay_equals_adding_wd_p_to_the_gradient(pg, name, extra):
    p0, g = pg
    wd = 0.1
    with_decay = steps(make_optimizer(name, weight_decay=wd, **extra), p0, [lambda p: g * np.cos(p)] * 20)
    by_hand = steps(make_optimizer(name, **extra), p0, [lambda p: g * np.cos(p) + wd * p] * 20)
    close(np.array(with_decay), np.array(by_hand), rtol=1e-13)


@pytest.mark.parametrize("name", ["nadam", "radam"])
def test_decoupled_weight_decay_option_shrinks_p_before_the_step(pg, name):
    # decoupled_weight_decay=True: p <- p (1 - lr wd), then the step on the raw gradient, so it
    # equals the undecayed optimizer started from the shrunk point (for one step).
    p0, g = pg
    lr, wd = 0.01, 0.5
    (decoupled,) = steps(make_optimizer(name, lr=lr, weight_decay=wd, decoupled_weight_decay=True), p0, [g])
    (plain,) = steps(make_optimizer(name, lr=lr), p0 * (1 - lr * wd), [g])
    close(decoupled, plain)
    if name == "radam":  # first step is p1 = p0 (1 - lr wd) - lr g by hand
        close(decoupled, p0 * (1 - lr * wd) - lr * g)


def test_adam_with_decoupled_weight_decay_is_adamw(pg):
    # torch.optim.AdamW is Adam(decoupled_weight_decay=True); AdamW has no switch to undo it.
    p0, g = pg
    grads = [lambda p: g * np.cos(p)] * 20
    for amsgrad in (False, True):
        adam = steps(make_optimizer("adam", weight_decay=0.3, amsgrad=amsgrad, decoupled_weight_decay=True), p0, grads)
        adamw = steps(make_optimizer("adamw", weight_decay=0.3, amsgrad=amsgrad), p0, grads)
        np.testing.assert_array_equal(np.array(adam), np.array(adamw))
        coupled = steps(make_optimizer("adam", weight_decay=0.3, amsgrad=amsgrad), p0, grads)
        assert not np.allclose(np.array(coupled), np.array(adamw))
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer("adamw", decoupled_weight_decay=False)
    assert_one_line_error(excinfo, "decoupled_weight_decay")


def test_adamw_is_adam_with_decoupled_decay_over_many_steps(pg):
    # AdamW(wd) from p equals: shrink p by (1 - lr wd), then Adam(wd=0)'s step with the same state.
    p0, g = pg
    lr, wd = 0.01, 0.2
    adamw, adam = make_optimizer("adamw", lr=lr, weight_decay=wd), make_optimizer("adam", lr=lr)
    p_w, p_a = p0.copy(), p0.copy()
    s_w, s_a = adamw.init(p_w), adam.init(p_a)
    for k in range(25):
        grad = g * (1 + 0.1 * k)
        adamw.update(p_w, grad, s_w)
        p_a *= 1 - lr * wd
        adam.update(p_a, grad, s_a)
        close(p_w, p_a, rtol=1e-14)


def test_adagrad_lr_decay_and_initial_accumulator(pg):
    # clr_t = lr / (1 + (t - 1) lr_decay); s starts at initial_accumulator_value s0:
    # step 1: -lr g / (sqrt(s0 + g^2) + eps); step 2: -lr/(1 + lr_decay) g / (sqrt(s0 + 2 g^2) + eps).
    p0, g = pg
    lr, decay, s0 = 0.1, 0.5, 2.0
    p1, p2 = steps(make_optimizer("adagrad", lr=lr, lr_decay=decay, initial_accumulator_value=s0), p0, [g, g])
    close(p1, p0 - lr * g / (np.sqrt(s0 + g * g) + 1e-10))
    close(p2, p1 - lr / 1.5 * g / (np.sqrt(s0 + 2 * g * g) + 1e-10))


# ==================================================================================================
# Equivalences between optimizers
# ==================================================================================================


def test_momentum_zero_is_plain_sgd(pg):
    p0, g = pg
    grad = lambda p: g * np.sin(p) + 0.3 * p  # noqa: E731 - a non-constant gradient
    a = steps(make_optimizer("momentum", lr=0.05, momentum=0.0), p0, [grad] * 100)
    b = steps(make_optimizer("sgd", lr=0.05), p0, [grad] * 100)
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_dampening_zero_is_plain_momentum(pg):
    p0, g = pg
    grad = lambda p: g * np.sin(p) + 0.3 * p  # noqa: E731
    a = steps(make_optimizer("sgd", lr=0.01, momentum=0.9, dampening=0.0), p0, [grad] * 100)
    b = steps(make_optimizer("momentum", lr=0.01), p0, [grad] * 100)
    np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("growth", [1.0, 1.02])
def test_amsgrad_equals_adam_while_second_moment_does_not_decrease(pg, growth):
    # Constant or growing |g| keeps v_t non-decreasing (v_t = beta2 v + (1 - beta2) g^2 >= v when
    # g^2 >= v), so max(v_max, v) = v and AMSGrad takes exactly Adam's steps.
    p0, g = pg
    grads = [g * growth**k for k in range(200)]
    a = steps(make_optimizer("amsgrad", lr=0.01), p0, grads)
    b = steps(make_optimizer("adam", lr=0.01), p0, grads)
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_amsgrad_takes_smaller_steps_than_adam_after_gradients_shrink(pg):
    # 20 steps with g, then g/100: Adam's v decays (by 0.999 per step), AMSGrad keeps the maximum,
    # so after the drop AMSGrad's denominator is larger and its steps strictly smaller.
    p0, g = pg
    grads = [g] * 20 + [0.01 * g] * 30
    a = np.array(steps(make_optimizer("amsgrad", lr=0.01), p0, grads))
    b = np.array(steps(make_optimizer("adam", lr=0.01), p0, grads))
    np.testing.assert_array_equal(a[:20], b[:20])
    step_a = np.abs(np.diff(a[19:], axis=0))
    step_b = np.abs(np.diff(b[19:], axis=0))
    assert np.all(step_a < step_b)


def test_amsgrad_registry_entry_is_adam_with_amsgrad_flag(pg):
    p0, g = pg
    grads = [g] * 10 + [0.1 * g] * 10
    a = steps(make_optimizer("amsgrad"), p0, grads)
    b = steps(make_optimizer("adam", amsgrad=True), p0, grads)
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_adamw_with_zero_decay_is_adam(pg):
    p0, g = pg
    grad = lambda p: g * np.cos(p)  # noqa: E731
    a = steps(make_optimizer("adamw", weight_decay=0.0), p0, [grad] * 50)
    b = steps(make_optimizer("adam"), p0, [grad] * 50)
    np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("name", ALL)
def test_update_rule_is_elementwise(name):
    # A batch of points updated together equals each row updated on its own, and a (N, 2) array
    # equals its flattening: nothing couples coordinates. Exact, since IEEE ops are per element.
    grad = lambda p: np.cos(3 * p) + 0.5 * p  # noqa: E731
    together = steps(make_optimizer(name), POINTS, [grad] * 30)[-1]
    flat = steps(make_optimizer(name), POINTS.ravel(), [grad] * 30)[-1]
    np.testing.assert_array_equal(flat.reshape(POINTS.shape), together)
    for i, row in enumerate(POINTS):
        alone = steps(make_optimizer(name), row, [grad] * 30)[-1]
        np.testing.assert_array_equal(alone, together[i])


@pytest.mark.parametrize("name", ALL)
def test_per_row_learning_rate_array_equals_separate_runs(name):
    # An lr array of shape (N, 1) gives row i the trajectory of a scalar lr_i (what --tune uses).
    lrs = np.array([1e-3, 1e-2, 3e-2, 1e-1])[:, None]
    grad = lambda p: np.cos(3 * p) + 0.5 * p  # noqa: E731
    together = steps(make_optimizer(name, lr=lrs), POINTS, [grad] * 30)[-1]
    for i, row in enumerate(POINTS):
        alone = steps(make_optimizer(name, lr=float(lrs[i, 0])), row[None, :], [grad] * 30)[-1]
        close(together[i], alone[0], rtol=1e-14)


@pytest.mark.parametrize("name", ALL)
def test_update_changes_p_in_place_and_zero_gradient_keeps_state_finite(name):
    p = POINTS.copy()
    opt = make_optimizer(name)
    state = opt.init(p)
    before = p.copy()
    same_object = p
    opt.update(p, POINTS_G.copy(), state)
    assert p is same_object and not np.array_equal(p, before)
    # A zero gradient (at a minimum) must not produce NaN through 0/0 (eps guards every division).
    q = np.zeros(3)
    state = opt.init(q)
    for _ in range(5):
        opt.update(q, np.zeros(3), state)
    assert np.all(np.isfinite(q))


@pytest.mark.parametrize("name", ALL)
def test_state_is_its_torch_entries_and_scratch_is_kept_apart(name):
    p = POINTS.copy()
    opt = make_optimizer(name)
    state = opt.init(p)
    entries = set(state)
    opt.update(p, POINTS_G.copy(), state)
    after_first = {key: value for key, value in state.items() if isinstance(value, (np.ndarray, list))}
    opt.update(p, POINTS_G.copy(), state)
    assert "step" in entries and state["step"] == 2
    assert set(state) == entries | {"scratch"}  # an update adds nothing else
    assert all(a.shape == p.shape for a in state["scratch"])
    # After the first step every array is reused in place: an update allocates nothing.
    assert all(state[key] is value for key, value in after_first.items())
    assert all(a is b for a, b in zip(state["scratch"], after_first["scratch"]))


# ==================================================================================================
# float32 stays float32
# ==================================================================================================

FLOAT32_CASES = [pytest.param(name, {}, id=name) for name in ALL] + [
    pytest.param("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, id="sgd-nesterov-wd"),
    pytest.param("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1}, id="rmsprop-centered-mom-wd"),
    pytest.param("adagrad", {"lr_decay": 0.1, "initial_accumulator_value": 0.5}, id="adagrad-decay-init"),
    pytest.param("adamw", {"amsgrad": True}, id="adamw-amsgrad"),
    pytest.param("nadam", {"weight_decay": 0.1, "decoupled_weight_decay": True}, id="nadam-decoupled"),
    pytest.param("radam", {"weight_decay": 0.1, "decoupled_weight_decay": True}, id="radam-decoupled"),
    pytest.param("adamax", {"weight_decay": 0.1}, id="adamax-wd"),
]


@pytest.mark.parametrize(("name", "hparams"), FLOAT32_CASES)
def test_float32_in_float32_out(name, hparams):
    # NumPy 2 promotes float32 with a float64 array or NumPy scalar (np.sqrt(0.999) is one) to
    # float64; Python floats do not. The rule must keep p and all its state in float32.
    grad = lambda p: np.cos(3 * p) + 0.5 * p  # noqa: E731 - float32 in, float32 out
    opt = make_optimizer(name, **hparams)
    p = POINTS.astype(np.float32)
    state = opt.init(p)
    for step in range(100):
        g = grad(p)
        assert g.dtype == np.float32
        opt.update(p, g, state)
        assert p.dtype == np.float32, f"p became {p.dtype} at step {step + 1}"
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float32, f"state[{key!r}] is {value.dtype}"
    assert np.all(np.isfinite(p))


@pytest.mark.parametrize(("name", "hparams"), FLOAT32_CASES)
def test_float32_tracks_float64(name, hparams):
    # Same rule in both precisions: after 20 steps they agree to float32 accuracy.
    grad = lambda p: np.cos(3 * p) + 0.5 * p  # noqa: E731
    p32 = steps(make_optimizer(name, **hparams), POINTS.astype(np.float32), [grad] * 20)[-1]
    p64 = steps(make_optimizer(name, **hparams), POINTS.copy(), [grad] * 20)[-1]
    np.testing.assert_allclose(p32, p64, rtol=1e-4, atol=1e-5)


# ==================================================================================================
# Defaults and hyperparameter validation
# ==================================================================================================

_ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
_SGD = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

# torch.optim's documented defaults, written out by hand (betas split into beta1/beta2).
TORCH_DEFAULTS = {
    "sgd": _SGD,
    "momentum": {**_SGD, "momentum": 0.9},
    "nesterov": {**_SGD, "momentum": 0.9, "nesterov": True},
    "adagrad": {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10},
    "rmsprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
    "adam": {**_ADAM, "decoupled_weight_decay": False},
    "adamw": {**_ADAM, "weight_decay": 1e-2},  # torch's AdamW has no decoupled_weight_decay to set
    "amsgrad": {**_ADAM, "amsgrad": True, "decoupled_weight_decay": False},
    "nadam": {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "momentum_decay": 4e-3, "decoupled_weight_decay": False},
    "radam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "decoupled_weight_decay": False},
    "adamax": {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
}


def test_registry_holds_the_twelve_of_torch_optim_and_the_modern_ones():
    assert sorted(TORCH_OPTIM) == sorted(TORCH_DEFAULTS)
    assert set(TORCH_OPTIM) < set(OPTIMIZERS)


@pytest.mark.parametrize("name", ALL)
def test_defaults_match_torch(name):
    assert OPTIMIZERS[name].defaults == TORCH_DEFAULTS[name]
    assert make_optimizer(name).hparams == TORCH_DEFAULTS[name]
    # Types matter for --hp parsing, which types each value like its default: flags are bools.
    for key, value in OPTIMIZERS[name].defaults.items():
        assert type(value) is type(TORCH_DEFAULTS[name][key]), f"{name}.{key} is {type(value).__name__}"


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_learning_rate_is_refused(name, lr):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, lr=lr)
    assert_one_line_error(excinfo, "lr")


def test_learning_rate_array_with_a_non_positive_entry_is_refused():
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer("adam", lr=np.array([[1e-3], [0.0]]))
    assert_one_line_error(excinfo, "lr")


BETA_NAMES = [name for name in ALL if "beta1" in TORCH_DEFAULTS[name]]


@pytest.mark.parametrize("name", BETA_NAMES)
@pytest.mark.parametrize("key", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_betas_outside_zero_one_are_refused(name, key, value):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, **{key: value})
    assert_one_line_error(excinfo, key)


@pytest.mark.parametrize("name", BETA_NAMES)
def test_betas_at_the_closed_end_zero_are_accepted(name):
    opt = make_optimizer(name, beta1=0.0, beta2=0.0)
    assert (opt.beta1, opt.beta2) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("name", "hparams", "fragment"),
    [
        ("adam", {"eps": -1e-8}, "eps"),
        ("sgd", {"momentum": -0.5}, "momentum"),
        ("sgd", {"momentum": 0.9, "dampening": 1.5}, "dampening"),
        ("rmsprop", {"alpha": 1.2}, "alpha"),
        ("adadelta", {"rho": -0.1}, "rho"),
        ("adagrad", {"lr_decay": -1.0}, "lr_decay"),
        ("adamw", {"weight_decay": -0.01}, "weight_decay"),
        ("nadam", {"momentum_decay": -1.0}, "momentum_decay"),
    ],
)
def test_other_out_of_range_hyperparameters_are_refused(name, hparams, fragment):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, **hparams)
    assert_one_line_error(excinfo, fragment)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("sgd", {"nesterov": True}),  # momentum defaults to 0
        ("nesterov", {"momentum": 0.0}),
        ("nesterov", {"dampening": 0.1}),  # torch: Nesterov requires zero dampening
    ],
)
def test_nesterov_needs_momentum_and_no_dampening(name, hparams):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, **hparams)
    assert_one_line_error(excinfo, "nesterov")


@pytest.mark.parametrize(("name", "key", "value"), [
    ("prodigy", "d0", float("nan")), ("prodigy", "d0", float("inf")), ("prodigy", "d_coef", float("-inf")),
    ("prodigy", "growth_rate", float("nan")), ("prodigy", "growth_rate", float("-inf")),
    ("sf_adamw", "r", float("inf")), ("sf_sgd", "weight_lr_power", float("nan")),
])
def test_hyperparameters_without_a_range_are_still_refused_when_not_finite(name, key, value):
    # A NaN setting would otherwise run, and read as a run that diverged at its first step.
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, **{key: value})
    assert_one_line_error(excinfo, key, "finite")


def test_an_infinite_default_stays_accepted():
    assert make_optimizer("prodigy").growth_rate == float("inf")  # prodigyopt's default: no cap
    assert make_optimizer("prodigy", growth_rate=float("inf")).growth_rate == float("inf")


def test_unknown_optimizer_name_is_refused():
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer("adamm")
    assert_one_line_error(excinfo, "adamm")


@pytest.mark.parametrize(("name", "key"), [("adam", "momentum"), ("sgd", "beta1"), ("rmsprop", "betas")])
def test_unknown_hyperparameter_is_refused(name, key):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, **{key: 0.9})
    assert_one_line_error(excinfo, key)


# ==================================================================================================
# parse_hparams / hparams_for / make_optimizer: the --hp path
# ==================================================================================================


def test_bare_hparam_goes_to_every_selected_optimizer():
    assert parse_hparams(["momentum=0.95"], ["sgd", "nesterov"]) == {
        "sgd": {"momentum": "0.95"},
        "nesterov": {"momentum": "0.95"},
    }


def test_dotted_hparam_targets_one_optimizer():
    raw = parse_hparams(["adam.beta1=0.8", "lr=0.01"], ["adam", "sgd"])
    assert raw == {"adam": {"beta1": "0.8", "lr": "0.01"}, "sgd": {"lr": "0.01"}}


def test_whitespace_around_name_and_value_is_ignored():
    assert parse_hparams([" lr = 0.5 "], ["sgd"]) == {"sgd": {"lr": "0.5"}}


def test_hparams_for_types_values_like_the_defaults():
    typed = hparams_for(SGD, {"momentum": "0.95", "nesterov": "true", "lr": "1e-2"}, strict=True)
    assert typed == {"momentum": 0.95, "nesterov": True, "lr": 0.01}
    assert type(typed["nesterov"]) is bool and type(typed["momentum"]) is float


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False),
])
def test_boolean_spellings(text, value):
    assert hparams_for(Adam, {"amsgrad": text}, strict=True) == {"amsgrad": value}


def test_unknown_name_is_skipped_unless_strict():
    # A bare --hp beta1=... applies to every optimizer "that has it": SGD skips it ...
    assert hparams_for(SGD, {"beta1": "0.8"}, strict=False) == {}
    # ... but addressed to SGD explicitly it is an error.
    with pytest.raises(OptbenchError) as excinfo:
        hparams_for(SGD, {"beta1": "0.8"}, strict=True)
    assert_one_line_error(excinfo, "beta1")


def test_parsed_hparams_build_the_optimizer():
    raw = parse_hparams(["momentum=0.95", "nesterov=true", "adam.beta1=0.8"], ["sgd", "adam"])
    sgd = make_optimizer("sgd", **hparams_for(OPTIMIZERS["sgd"], raw["sgd"], strict=False))
    adam = make_optimizer("adam", **hparams_for(OPTIMIZERS["adam"], raw["adam"], strict=False))
    assert (sgd.momentum, sgd.nesterov) == (0.95, True)
    assert adam.beta1 == 0.8 and adam.beta2 == 0.999
    # Nesterov with the parsed momentum: first step -lr (1 + 0.95) g.
    (p1,) = steps(sgd, VECTOR, [VECTOR_G])
    close(p1, VECTOR - 1e-3 * 1.95 * VECTOR_G)


@pytest.mark.parametrize("pair", ["momentum", "momentum=", "=0.9", "  =  ", ""])
def test_malformed_pairs_are_refused(pair):
    with pytest.raises(OptbenchError) as excinfo:
        parse_hparams([pair], ["sgd"])
    assert_one_line_error(excinfo, "name=value")


def test_dotted_hparam_for_an_unselected_optimizer_is_refused():
    with pytest.raises(OptbenchError) as excinfo:
        parse_hparams(["adamw.beta1=0.8"], ["adam", "sgd"])
    assert_one_line_error(excinfo, "adamw")


@pytest.mark.parametrize(("cls", "raw", "fragment"), [
    (SGD, {"lr": "abc"}, "lr"),
    (SGD, {"nesterov": "maybe"}, "nesterov"),
    (Adam, {"beta1": ""}, "beta1"),
])
def test_unparseable_values_are_refused(cls, raw, fragment):
    with pytest.raises(OptbenchError) as excinfo:
        hparams_for(cls, raw, strict=True)
    assert_one_line_error(excinfo, fragment)


def test_a_setting_whose_default_is_none_can_be_set_back_to_none():
    prodigy = OPTIMIZERS["prodigy"]
    assert hparams_for(prodigy, {"beta3": "None"}, strict=True) == {"beta3": None}
    assert hparams_for(prodigy, {"beta3": "0.5"}, strict=True) == {"beta3": 0.5}
    with pytest.raises(OptbenchError) as excinfo:  # only where none means something
        hparams_for(Adam, {"beta1": "none"}, strict=True)
    assert_one_line_error(excinfo, "beta1")


# ==================================================================================================
# User optimizers: make_optimizer("module:Class") and ("path/file.py:Class")
# ==================================================================================================

# The README's example: a subclass of optbench.Optimizer ...
SIGNSGD_SOURCE = textwrap.dedent(
    '''
    from optbench import Optimizer
    from optbench.backend import get_array_module


    class SignSGD(Optimizer):
        """p <- p - lr * sign(g + wd * p)."""

        name = "signsgd"
        defaults = {"lr": 1e-2, "weight_decay": 0.0}

        def init(self, p):
            return {"step": 0}

        def update(self, p, g, state):
            xp = get_array_module(p)
            state["step"] += 1
            p -= self.lr * xp.sign(g + self.weight_decay * p)


    class PlainHalving:
        """A plain class (no base class): p <- p - lr * g / 2."""

        def __init__(self, lr=0.5):
            self.lr = lr

        def init(self, p):
            return {}

        def update(self, p, g, state):
            p -= self.lr * g / 2


    class NotAnOptimizer:
        def init(self, p):
            return {}


    def not_a_class(p, g, state):
        pass
    '''
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write the module under a fresh name in tmp_path; undo every sys.path/sys.modules change."""
    module_name = f"optbench_user_{uuid.uuid4().hex}"
    (tmp_path / f"{module_name}.py").write_text(SIGNSGD_SOURCE)
    # The loader inserts the working directory into sys.path; give it a copy to change.
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield module_name
    for key in [k for k in sys.modules if k == module_name or k.startswith(module_name + ".")]:
        del sys.modules[key]


def check_signsgd(opt, lr):
    assert opt.lr == lr
    p = VECTOR.copy()
    opt.update(p, VECTOR_G.copy(), opt.init(p))
    close(p, VECTOR - lr * np.sign(VECTOR_G))


def test_user_module_in_the_working_directory(user_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = make_optimizer(f"{user_module}:SignSGD")
    check_signsgd(opt, 1e-2)
    # Hyperparameters pass through and are range-checked like a built-in's.
    check_signsgd(make_optimizer(f"{user_module}:SignSGD", lr=0.25), 0.25)
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{user_module}:SignSGD", lr=-1.0)
    assert_one_line_error(excinfo, "lr")
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{user_module}:SignSGD", momentum=0.9)
    assert_one_line_error(excinfo, "momentum")


def test_user_module_on_sys_path(user_module, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    check_signsgd(make_optimizer(f"{user_module}:SignSGD", lr=0.5), 0.5)


def test_user_module_by_absolute_file_path(user_module, tmp_path):
    check_signsgd(make_optimizer(f"{tmp_path / user_module}.py:SignSGD"), 1e-2)


def test_user_module_by_relative_file_path(user_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_signsgd(make_optimizer(f"{user_module}.py:SignSGD", lr=0.3), 0.3)


def test_plain_user_class_without_base_class(user_module, tmp_path):
    opt = make_optimizer(f"{tmp_path / user_module}.py:PlainHalving", lr=0.2)
    p = VECTOR.copy()
    opt.update(p, VECTOR_G.copy(), opt.init(p))
    close(p, VECTOR - 0.1 * VECTOR_G)
    # A keyword its __init__ does not take is reported in one line, not as a TypeError.
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{tmp_path / user_module}.py:PlainHalving", momentum=0.9)
    assert_one_line_error(excinfo, "momentum")


@pytest.mark.parametrize("class_name", ["Missing", "NotAnOptimizer", "not_a_class"])
def test_missing_or_unusable_user_class(user_module, tmp_path, class_name):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{tmp_path / user_module}.py:{class_name}")
    assert_one_line_error(excinfo, class_name)


def test_missing_user_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer("no_such_module_for_optbench_tests:Opt")
    assert_one_line_error(excinfo, "no_such_module_for_optbench_tests")


def test_missing_user_file(tmp_path):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{tmp_path / 'absent.py'}:Opt")
    assert_one_line_error(excinfo, "absent.py")


def test_user_module_that_fails_to_import(tmp_path):
    broken = tmp_path / "broken_opt.py"
    broken.write_text("import this_module_does_not_exist_either\n")
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{broken}:Opt")
    assert_one_line_error(excinfo, "broken_opt.py")
    syntax = tmp_path / "syntax_opt.py"
    syntax.write_text("def broken(:\n")
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(f"{syntax}:Opt")
    assert_one_line_error(excinfo, "syntax_opt.py")


# ==================================================================================================
# Every optimizer minimises a simple convex quadratic
# ==================================================================================================

# Learning rates picked per optimizer for f = 0.5 (p_x^2 + 4 p_y^2) from (3, -2). RMSprop at a
# constant lr keeps bouncing around the minimum with amplitude ~ lr/2 (its normalised step does
# not shrink with the gradient), and a lr small enough for 1e-3 is too slow to arrive in 3000
# steps, so it runs with momentum 0.9, which damps the bounce.
CONVERGENCE = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.03},
    "nesterov": {"lr": 0.03},
    "adagrad": {"lr": 1.0},
    "rmsprop": {"lr": 5e-4, "momentum": 0.9},
    "adadelta": {"lr": 0.3},
    "adam": {"lr": 0.1},
    "adamw": {"lr": 0.1},
    "amsgrad": {"lr": 0.1},
    "nadam": {"lr": 0.1},
    "radam": {"lr": 0.3},
    "adamax": {"lr": 0.3},
}


def test_convergence_table_covers_every_optimizer():
    assert set(CONVERGENCE) == set(TORCH_OPTIM)


@pytest.mark.parametrize("name", ALL)
def test_reaches_the_minimum_of_a_convex_quadratic(name):
    opt = make_optimizer(name, **CONVERGENCE[name])
    p = np.array([3.0, -2.0])
    state = opt.init(p)
    distances = []
    for _ in range(3000):
        opt.update(p, QUAD_A * p, state)
        distances.append(np.abs(p).max())
    # Reached, and stays there: the last 100 steps all within 1e-3 of the minimum at 0.
    assert max(distances[-100:]) < 1e-3, f"{name}: |p| = {distances[-1]:.3g} after 3000 steps"


def test_a_rule_file_edited_since_it_was_loaded_is_loaded_again(tmp_path):
    import os

    from optbench.optimizers import defaults_of, optimizer_class

    path = tmp_path / "mine.py"
    path.write_text("class Mine:\n    defaults = {'lr': 0.1}\n    def init(self, p): return {}\n    def update(self, p, g, s): pass\n")
    first = optimizer_class(f"{path}:Mine")
    assert optimizer_class(f"{path}:Mine") is first  # named again: the same class
    path.write_text(path.read_text().replace("0.1", "0.5"))
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert defaults_of(optimizer_class(f"{path}:Mine"))["lr"] == 0.5
