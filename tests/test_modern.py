"""The modern optimizers: trajectory parity with their reference implementations, and the
properties every rule must have (rows independent, float32 kept, bad settings refused).

Parity runs ours and the reference side by side in float64 from the same start, feeding both the
same gradient of a smooth separable function computed in NumPy, over several tensors at once (a
5 x 3 matrix and a 3-vector: one flat buffer for us, two tensors for the reference). The
references are only oracles: each test skips, saying why, where its package is not importable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from optbench.errors import OptbenchError
from optbench.modern import OPTIMIZERS as MODERN
from optbench.optimizers import init_state, make_optimizer

SHAPES = [("W0", (5, 3)), ("b0", (3,))]
STEPS = 100
RTOL, ATOL = 1e-10, 1e-14


def gradient(flat: np.ndarray) -> np.ndarray:
    """Gradient of sum(0.25 p^2 - cos(3 p) / 3 + 0.1 p): smooth, separable, minimum near 0."""
    return 0.5 * flat + np.sin(3 * flat) + 0.1


def start() -> np.ndarray:
    return np.random.default_rng(0).uniform(-2, 2, sum(math.prod(s) for _, s in SHAPES))


def ours(name: str, hparams: dict, steps: int = STEPS, layout=SHAPES):
    opt = make_optimizer(name, **hparams)
    p = start()
    state = init_state(opt, p, layout)
    trajectory = []
    for _ in range(steps):
        opt.update(p, gradient(p), state)
        trajectory.append(p.copy())
    return opt, p, state, trajectory


def reference(make, steps: int = STEPS, before_step=None):
    torch = pytest.importorskip("torch")
    flat = start()
    params, offset = [], 0
    for _, shape in SHAPES:
        size = math.prod(shape)
        params.append(torch.tensor(flat[offset : offset + size].reshape(shape), dtype=torch.float64,
                                   requires_grad=True))
        offset += size
    opt = make(params)
    if before_step:
        before_step(opt)
    trajectory = []
    for _ in range(steps):
        current = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
        g = gradient(current)
        offset = 0
        for p in params:
            p.grad = torch.tensor(g[offset : offset + p.numel()].reshape(p.shape), dtype=torch.float64)
            offset += p.numel()
        opt.step()
        trajectory.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy())
    return opt, params, trajectory


def assert_same_trajectory(mine, theirs, rtol=RTOL, atol=ATOL):
    for step, (a, b) in enumerate(zip(mine, theirs), start=1):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"step {step}")


# --- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hparams", [{}, {"lr": 3e-3, "weight_decay": 0.1}, {"lr": 1e-3, "beta1": 0.5, "beta2": 0.9},
                                     {"lr": 1e-3, "weight_decay": 0.1, "decoupled_weight_decay": True}])
def test_lion_follows_lion_pytorch(hparams):
    lion_pytorch = pytest.importorskip("lion_pytorch", reason="lion-pytorch is not installed: no reference")
    kwargs = {"lr": hparams.get("lr", 1e-4), "betas": (hparams.get("beta1", 0.9), hparams.get("beta2", 0.99)),
              "weight_decay": hparams.get("weight_decay", 0.0),
              "decoupled_weight_decay": hparams.get("decoupled_weight_decay", False)}
    _, _, _, mine = ours("lion", hparams)
    _, _, theirs = reference(lambda params: lion_pytorch.Lion(params, **kwargs))
    assert_same_trajectory(mine, theirs)


def _train_mode(opt):
    opt.train()


@pytest.mark.parametrize("hparams", [{}, {"lr": 0.01, "weight_decay": 0.05, "warmup_steps": 10.0},
                                     {"lr": 0.01, "beta1": 0.8, "r": 1.0, "weight_lr_power": 1.0}])
def test_sf_adamw_follows_schedulefree_and_evaluates_its_average(hparams):
    schedulefree = pytest.importorskip("schedulefree", reason="schedulefree is not installed: no reference")
    kwargs = {"lr": hparams.get("lr", 0.0025), "betas": (hparams.get("beta1", 0.9), 0.999),
              "weight_decay": hparams.get("weight_decay", 0.0), "warmup_steps": int(hparams.get("warmup_steps", 0)),
              "r": hparams.get("r", 0.0), "weight_lr_power": hparams.get("weight_lr_power", 2.0)}
    opt, p, state, mine = ours("sf_adamw", hparams)
    ref, params, theirs = reference(lambda ps: schedulefree.AdamWScheduleFree(ps, **kwargs), before_step=_train_mode)
    assert_same_trajectory(mine, theirs)
    ref.eval()  # the reference's evaluation weights x
    x = np.concatenate([q.detach().reshape(-1).numpy() for q in params])
    np.testing.assert_allclose(opt.evaluation_weights(p, state), x, rtol=RTOL, atol=ATOL)
    assert not np.array_equal(opt.evaluation_weights(p, state), p)


@pytest.mark.parametrize("hparams", [{"lr": 0.05}, {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1, "warmup_steps": 5.0}])
def test_sf_sgd_follows_schedulefree_and_evaluates_its_average(hparams):
    schedulefree = pytest.importorskip("schedulefree", reason="schedulefree is not installed: no reference")
    kwargs = {"lr": hparams["lr"], "momentum": hparams.get("momentum", 0.9),
              "weight_decay": hparams.get("weight_decay", 0.0), "warmup_steps": int(hparams.get("warmup_steps", 0))}
    opt, p, state, mine = ours("sf_sgd", hparams)
    ref, params, theirs = reference(lambda ps: schedulefree.SGDScheduleFree(ps, **kwargs), before_step=_train_mode)
    assert_same_trajectory(mine, theirs)
    ref.eval()
    x = np.concatenate([q.detach().reshape(-1).numpy() for q in params])
    np.testing.assert_allclose(opt.evaluation_weights(p, state), x, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hparams", [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decouple": False},
                                     {"use_bias_correction": True, "safeguard_warmup": True, "beta3": 0.9},
                                     {"beta1": 0.0, "d_coef": 0.5, "growth_rate": 1.02}])
def test_prodigy_follows_prodigyopt(hparams):
    prodigyopt = pytest.importorskip("prodigyopt", reason="prodigyopt is not installed: no reference")
    kwargs = dict(hparams)
    kwargs["betas"] = (kwargs.pop("beta1", 0.9), 0.999)
    opt, _, state, mine = ours("prodigy", hparams)
    _, _, theirs = reference(lambda ps: prodigyopt.Prodigy(ps, lr=1.0, **kwargs))
    # Prodigy's d sums dot products over every parameter: equal to the rounding of those sums.
    assert_same_trajectory(mine, theirs, rtol=1e-9, atol=1e-13)
    assert float(state["d"].max()) > 1e-6  # d grew from d0: the estimate is exercised


@pytest.mark.parametrize("hparams", [{}, {"lr": 0.01, "alpha": 2.0, "beta3": 0.99, "t_alpha_beta3": 40.0},
                                     {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True}])
def test_ademamix_follows_pytorch_optimizer(hparams):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer is not installed: no reference")
    kwargs = {"lr": hparams.get("lr", 1e-3), "betas": (0.9, 0.999, hparams.get("beta3", 0.9999)),
              "alpha": hparams.get("alpha", 5.0), "t_alpha_beta3": hparams.get("t_alpha_beta3"),
              "weight_decay": hparams.get("weight_decay", 0.0), "weight_decouple": hparams.get("weight_decouple", False)}
    _, _, _, mine = ours("ademamix", hparams)
    _, _, theirs = reference(lambda ps: pytorch_optimizer.AdEMAMix(ps, **kwargs))
    assert_same_trajectory(mine, theirs)


@pytest.mark.parametrize("hparams", [{}, {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.05, "beta1": 0.5, "clamp": 1.0},
                                     {"lr": 0.005, "weight_decay": 0.3, "weight_decouple": False}])
def test_lamb_follows_pytorch_optimizer_with_a_trust_ratio_per_tensor(hparams):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer is not installed: no reference")
    kwargs = {"lr": hparams.get("lr", 1e-3), "betas": (hparams.get("beta1", 0.9), 0.999),
              "weight_decay": hparams.get("weight_decay", 0.0), "weight_decouple": hparams.get("weight_decouple", True)}

    def make(params):
        lamb = pytorch_optimizer.Lamb(params, **kwargs)
        lamb.clamp = hparams.get("clamp", lamb.clamp)  # a class attribute there, not an argument
        return lamb

    _, _, _, mine = ours("lamb", hparams)
    _, _, theirs = reference(make)
    # The norms sum in NumPy's order, not torch's: equal to the rounding of a sum.
    assert_same_trajectory(mine, theirs, rtol=1e-9, atol=1e-12)
    # One trust ratio over the whole buffer is another rule: the layout matters.
    _, _, _, flat = ours("lamb", hparams, layout=[("all", (18,))])
    assert not np.allclose(flat[-1], theirs[-1], rtol=1e-6)


@pytest.mark.parametrize("hparams", [{}, {"lr": 0.05, "weight_decay": 0.1, "beta2_decay": -0.5, "eps1": 1e-20},
                                     {"lr": 0.02, "d": 2.0, "eps2": 1e-2}])
def test_adafactor_follows_torch_with_factored_matrices(hparams):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Adafactor"):
        pytest.skip("this torch has no torch.optim.Adafactor (torch >= 2.5): no reference")
    kwargs = {"lr": hparams.get("lr", 1e-2), "beta2_decay": hparams.get("beta2_decay", -0.8),
              "eps": (hparams.get("eps1"), hparams.get("eps2", 1e-3)), "d": hparams.get("d", 1.0),
              "weight_decay": hparams.get("weight_decay", 0.0)}
    _, _, state, mine = ours("adafactor", hparams)
    _, _, theirs = reference(lambda ps: torch.optim.Adafactor(ps, **kwargs))
    # Norms and means sum in NumPy's order; over 100 steps of relative step sizes that grows to
    # about 1e-11 near zero.
    assert_same_trajectory(mine, theirs, rtol=1e-9, atol=1e-10)
    row, col = state["moments"][0]
    assert row.shape == (1, 5, 1) and col.shape == (1, 1, 3)  # the matrix's moment is factored
    assert state["moments"][1].shape == (1, 3)  # the bias's is whole


MUON_SHAPES = [("W0", (5, 3)), ("b0", (3,)), ("W1", (3, 4)), ("b1", (4,))]


def _muon_reference(hparams, steps, newton_schulz_in_float64: bool):
    """torch.optim.Muon on each matrix (given as torch's (out, in): our (in, out) transposed) and
    torch.optim.AdamW on the biases, as a user pairs them."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this torch has no torch.optim.Muon (torch >= 2.9): no reference")
    import torch.optim._muon as muon_module

    flat = np.random.default_rng(1).uniform(-1, 1, sum(math.prod(s) for _, s in MUON_SHAPES))
    tensors, offset = [], 0
    for _, shape in MUON_SHAPES:
        size = math.prod(shape)
        block = flat[offset : offset + size].reshape(shape)
        tensors.append(torch.tensor(block.T.copy() if len(shape) == 2 else block, requires_grad=True))
        offset += size
    matrices = [t for t in tensors if t.ndim == 2]
    others = [t for t in tensors if t.ndim != 2]
    muon = torch.optim.Muon(matrices, lr=hparams.get("lr", 1e-3), weight_decay=0.1, momentum=0.95,
                            nesterov=hparams.get("nesterov", True),
                            adjust_lr_fn="match_rms_adamw" if hparams.get("match_rms_adamw") else None)
    adamw = torch.optim.AdamW(others, lr=1e-3)

    def newton_schulz_float64(grad, ns_coefficients, ns_steps, eps):
        a, b, c = ns_coefficients
        x = grad.to(torch.float64)
        if grad.size(0) > grad.size(1):
            x = x.T
        x = x / x.norm().clamp(min=eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if grad.size(0) > grad.size(1) else x

    original = muon_module._zeropower_via_newtonschulz
    if newton_schulz_in_float64:
        muon_module._zeropower_via_newtonschulz = newton_schulz_float64
    trajectory = []
    try:
        for _ in range(steps):
            current = np.concatenate([(t.detach().numpy().T if t.ndim == 2 else t.detach().numpy()).reshape(-1)
                                      for t in tensors])
            g = gradient(current)
            offset = 0
            for t, (_, shape) in zip(tensors, MUON_SHAPES):
                size = math.prod(shape)
                block = g[offset : offset + size].reshape(shape)
                t.grad = torch.tensor(block.T.copy() if len(shape) == 2 else block)
                offset += size
            muon.step()
            adamw.step()
            trajectory.append(np.concatenate([(t.detach().numpy().T if t.ndim == 2 else t.detach().numpy()).reshape(-1)
                                              for t in tensors]))
    finally:
        muon_module._zeropower_via_newtonschulz = original
    return flat, trajectory


def _muon_ours(hparams, steps, flat):
    opt = make_optimizer("muon", **hparams)
    p = flat.copy()
    state = init_state(opt, p, MUON_SHAPES)
    trajectory = []
    for _ in range(steps):
        opt.update(p, gradient(p), state)
        trajectory.append(p.copy())
    return trajectory


@pytest.mark.parametrize("hparams", [{}, {"lr": 0.02, "nesterov": False}, {"lr": 0.01, "match_rms_adamw": True}])
def test_muon_follows_torch_on_matrices_and_adamw_on_the_rest(hparams):
    # torch runs Newton-Schulz in bfloat16; with the same iteration in float64 the rules agree to
    # float64 rounding, which checks everything around it (momentum, Nesterov, the lr
    # adjustment in torch's (out, in) convention, weight decay, the AdamW pairing).
    flat, theirs = _muon_reference(hparams, 50, newton_schulz_in_float64=True)
    assert_same_trajectory(_muon_ours(hparams, 50, flat), theirs, rtol=1e-9, atol=1e-12)


def test_muon_is_torch_muon_to_bfloat16_precision():
    flat, theirs = _muon_reference({}, 20, newton_schulz_in_float64=False)
    mine = _muon_ours({}, 20, flat)
    moved_theirs, moved_mine = theirs[-1] - flat, mine[-1] - flat
    # bfloat16 keeps 8 bits: the steps agree to a few parts in a hundred, not to float64.
    np.testing.assert_allclose(moved_mine, moved_theirs, rtol=0.05, atol=2e-4)


def test_muon_refuses_a_surface_point_in_one_line():
    opt = make_optimizer("muon")
    with pytest.raises(OptbenchError) as excinfo:
        init_state(opt, POINTS.copy())
    assert "matri" in str(excinfo.value) and "\n" not in str(excinfo.value)


# --- properties every modern rule has ------------------------------------------------------------

POINTS = np.array([[3.0, -2.0], [-0.5, 0.25], [1e-3, 4.0], [1.5, 1.5]])
SURFACE_LRS = {"lion": 1e-2, "sf_adamw": 0.05, "sf_sgd": 0.05, "prodigy": 1.0, "ademamix": 0.05, "lamb": 0.05,
               "adafactor": 0.05}
POINT_RULES = sorted(set(MODERN) - {"muon"})  # muon needs matrices


def run_points(name, p, steps=40, grad=gradient, **hparams):
    opt = make_optimizer(name, **{"lr": SURFACE_LRS[name], **hparams})
    p = p.copy()
    state = init_state(opt, p)
    for _ in range(steps):
        opt.update(p, grad(p), state)
    return p


@pytest.mark.parametrize("name", POINT_RULES)
def test_points_of_a_cloud_move_as_if_alone(name):
    together = run_points(name, POINTS)
    for i, row in enumerate(POINTS):
        np.testing.assert_allclose(together[i], run_points(name, row[None])[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", POINT_RULES)
def test_a_per_row_lr_array_equals_separate_runs(name):
    lrs = np.array([0.3, 1.0, 2.0, 0.5])[:, None] * SURFACE_LRS[name]
    together = run_points(name, POINTS, lr=lrs)
    for i, row in enumerate(POINTS):
        alone = run_points(name, row[None], lr=float(lrs[i, 0]))
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-13, atol=1e-15)


def bowl(p):
    return p * np.array([1.0, 4.0], dtype=p.dtype) + p.dtype.type(0.1)


@pytest.mark.parametrize("name", sorted(set(POINT_RULES) - {"prodigy"}))
def test_float32_stays_float32_and_tracks_float64(name):
    p32 = run_points(name, POINTS.astype(np.float32), grad=bowl)
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, run_points(name, POINTS, grad=bowl), rtol=1e-3, atol=1e-4)


def test_prodigy_in_float32_follows_prodigyopt_in_float32():
    # Prodigy's first steps move p by about d0 = 1e-6, below float32's resolution of p0 - p, so
    # its float32 and float64 runs part ways (in torch as here): the oracle is the reference in
    # float32, one point at a time.
    torch = pytest.importorskip("torch")
    prodigyopt = pytest.importorskip("prodigyopt", reason="prodigyopt is not installed: no reference")
    p32 = run_points("prodigy", POINTS.astype(np.float32), grad=bowl)
    assert p32.dtype == np.float32
    for row, mine in zip(POINTS, p32):
        p = torch.tensor(row, dtype=torch.float32, requires_grad=True)
        opt = prodigyopt.Prodigy([p], lr=1.0)
        for _ in range(40):
            p.grad = torch.from_numpy(bowl(p.detach().numpy()))
            opt.step()
        np.testing.assert_allclose(mine, p.detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", POINT_RULES)
def test_descends_the_smooth_function(name):
    def f(p):
        return (0.25 * p * p - np.cos(3 * p) / 3 + 0.1 * p).sum(axis=-1)

    end = run_points(name, POINTS, steps=300)
    assert np.all(f(end) < f(POINTS)), name


@pytest.mark.parametrize("name", sorted(MODERN))
def test_every_modern_rule_names_its_reference_and_paper(name):
    cls = MODERN[name]
    assert cls.reference and cls.paper and cls.name == name


@pytest.mark.parametrize(("name", "hparams", "fragment"), [
    ("lion", {"lr": 0.0}, "lr"), ("lion", {"beta2": 1.5}, "beta2"), ("sf_sgd", {"momentum": 1.0}, "momentum"),
    ("sf_adamw", {"eps": -1.0}, "eps"), ("prodigy", {"d0": 0.0}, "d0"), ("prodigy", {"beta3": 2.0}, "beta3"),
    ("sf_adamw", {"beta1": 0.0}, "beta1"), ("ademamix", {"t_alpha_beta3": 10.0, "beta1": 0.0}, "beta1 > 0"),
    ("ademamix", {"t_alpha_beta3": 10.0, "beta3": 0.0}, "beta3 > 0"), ("adafactor", {"d": 0.5}, "d"),
    ("sf_sgd", {"warmup_steps": 2.5}, "warmup_steps"), ("sf_adamw", {"warmup_steps": -1.0}, "whole number"),
])
def test_bad_settings_are_refused_in_one_line(name, hparams, fragment):
    with pytest.raises(OptbenchError) as excinfo:
        make_optimizer(name, **hparams)
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_prodigy_rows_stay_independent_when_one_row_cannot_move():
    # A row whose gradient is 0 at its start has |s|_1 = 0: the reference skips its step, and
    # its step count with it. The other rows must count theirs, bias correction included.
    def grad(p):
        g = gradient(p)
        g[(p == POINTS[0]).all(axis=1)] = 0.0  # the first start's row, which then never moves
        return g

    def run(p):
        opt = make_optimizer("prodigy", use_bias_correction=True)
        state = init_state(opt, p)
        for _ in range(20):
            opt.update(p, grad(p), state)
        return p

    together = run(POINTS.copy())
    np.testing.assert_array_equal(together[0], POINTS[0])
    np.testing.assert_allclose(together[1:], run(POINTS[1:].copy()), rtol=1e-13, atol=1e-15)


def test_muon_under_a_decaying_schedule_reaches_lr_zero():
    from optbench.schedules import Schedule, ScheduledLRs

    opt = make_optimizer("muon")
    p = np.random.default_rng(2).uniform(-1, 1, sum(math.prod(s) for _, s in MUON_SHAPES))
    state = init_state(opt, p, MUON_SHAPES)
    lrs = ScheduledLRs([opt], Schedule("cosine"), 10)
    for t in range(1, 11):
        lrs.at(t)
        before = p.copy()
        opt.update(p, gradient(p), state)
    assert opt.lr == 0.0 and np.array_equal(p, before)  # the last step has lr 0: nothing moves
    lrs.restore()
    assert opt.lr == 1e-3


def test_a_layout_that_does_not_fit_is_refused_in_one_line():
    with pytest.raises(OptbenchError, match="does not fit"):
        init_state(make_optimizer("lamb"), np.zeros(18), [("W0", (5, 3)), ("b0", (4,))])
