"""Trajectory parity with torch.optim, the reference the optimizers promise to follow.

Each case runs one of our optimizers and the matching `torch.optim` class side by side for
300 steps from the same start, feeding both the *same* analytic gradient (computed in NumPy
from the current parameters and, for torch, copied into `.grad`), so any difference comes from
the update rule alone. Everything is float64 and the positions must agree to rtol 1e-12 at
every step: a wrong default, a missing bias correction or a misplaced epsilon shows up after a
step or two as a relative difference far above 1e-12.

Bit-for-bit agreement is not expected: torch's CPU kernels fuse `a + alpha * b` (add with alpha,
addcmul, addcdiv, lerp) into one rounding where NumPy rounds twice, so single steps differ in the
last ulp. That only stays invisible on trajectories that do not amplify rounding, so every case
first checks that torch *against itself*, started 1 ulp away, stays within the tolerance; a case
that fails that check is a badly chosen case (chaotic), not evidence about the optimizer.

Torch is only the oracle here; the tests are skipped where it is not installed.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optbench.optimizers import TORCH_OPTIM as OPTIMIZERS, make_optimizer  # noqa: E402  (the modern rules: test_modern.py)

STEPS = 300
RTOL = 1e-12
# Coordinates that pass close to zero make a purely relative test meaningless there (a 1-ulp
# difference in O(1) terms that cancel is a huge relative one); 1e-15 is ~5 ulp at the O(1)
# scale of these problems.
ATOL = 1e-15


@pytest.fixture(autouse=True)
def float64_default_dtype():
    """Run torch in float64 (its optimizer scalars follow the default dtype); restore afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# --- objectives: value-free, gradient only, evaluated in NumPy for both sides -------------------


def rosenbrock_grad(p: np.ndarray) -> np.ndarray:
    """Gradient of f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 for each row (x, y) of p."""
    x, y = p[..., 0], p[..., 1]
    g = np.empty_like(p)
    g[..., 0] = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x)
    g[..., 1] = 200.0 * (y - x * x)
    return g


# Four start points at once, away from the valley floor and inside the region where torch's
# default SGD learning rate (1e-3) is stable (the x-curvature 1200 x^2 - 400 y + 2 stays < 2000).
ROSENBROCK_START = np.array([[-0.8, 1.2], [1.2, 1.0], [0.0, 0.8], [0.7, 0.0]])

# At torch's default lr, RMSprop (1e-2) and Adadelta (1.0) take sign-like steps as wide as the
# Rosenbrock valley and bounce across it chaotically: torch against itself from a start 1 ulp away
# parts by 1e-3..1e-1 within 300 steps, so no comparison can be made there. On Rosenbrock they run
# with a smaller lr (all else default); the quadratic test runs them at their full defaults.
ROSENBROCK_LR = {"rmsprop": 2e-3, "adadelta": 0.1}


def _random_quadratic(dim: int = 5, seed: int = 20240611):
    """f(p) = 0.5 p^T A p + b^T p with A symmetric positive definite, eigenvalues in [0.5, 5]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a = q @ np.diag(np.linspace(0.5, 5.0, dim)) @ q.T
    a = 0.5 * (a + a.T)
    b = rng.standard_normal(dim)
    p0 = 3.0 * rng.standard_normal(dim)
    return a, b, p0


QUAD_A, QUAD_B, QUAD_START = _random_quadratic()


def quadratic_grad(p: np.ndarray) -> np.ndarray:
    return QUAD_A @ p + QUAD_B


def test_rosenbrock_gradient_matches_autograd():
    """The analytic gradient fed to both optimizers is the true gradient (checked by autograd)."""
    p = torch.tensor(ROSENBROCK_START, requires_grad=True)
    x, y = p[:, 0], p[:, 1]
    ((1 - x) ** 2 + 100 * (y - x**2) ** 2).sum().backward()
    np.testing.assert_allclose(rosenbrock_grad(ROSENBROCK_START), p.grad.numpy(), rtol=1e-13)


def test_quadratic_gradient_matches_autograd():
    p = torch.tensor(QUAD_START, requires_grad=True)
    a, b = torch.tensor(QUAD_A), torch.tensor(QUAD_B)
    (0.5 * p @ a @ p + b @ p).backward()
    np.testing.assert_allclose(quadratic_grad(QUAD_START), p.grad.numpy(), rtol=1e-12)


# --- mapping our optimizers onto torch.optim ------------------------------------------------------

# Our name -> (torch class name, kwargs that our name implies). Only these implied kwargs and the
# explicit overrides of a case are passed to torch, so every other hyperparameter is *torch's own
# default*: a default that differs from torch's makes the trajectories part.
TORCH_EQUIVALENT = {
    "sgd": ("SGD", {}),
    "momentum": ("SGD", {"momentum": 0.9}),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "adagrad": ("Adagrad", {}),
    "rmsprop": ("RMSprop", {}),
    "adadelta": ("Adadelta", {}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "amsgrad": ("Adam", {"amsgrad": True}),
    "nadam": ("NAdam", {}),
    "radam": ("RAdam", {}),
    "adamax": ("Adamax", {}),
}


def torch_kwargs(name: str, overrides: dict) -> dict:
    """Our hyperparameter overrides in torch's spelling: beta1/beta2 become `betas`."""
    _, implied = TORCH_EQUIVALENT[name]
    kwargs = dict(implied)
    kwargs.update({k: v for k, v in overrides.items() if k not in ("beta1", "beta2")})
    if "beta1" in overrides or "beta2" in overrides:
        defaults = OPTIMIZERS[name].defaults
        kwargs["betas"] = (overrides.get("beta1", defaults["beta1"]), overrides.get("beta2", defaults["beta2"]))
    # CPU tensors take the single-tensor path anyway; say so, so the reference cannot change under us.
    kwargs["foreach"] = False
    return kwargs


def run_ours(name: str, overrides: dict, p0: np.ndarray, grad, steps: int = STEPS) -> np.ndarray:
    opt = make_optimizer(name, **overrides)
    p = p0.copy()
    state = opt.init(p)
    trajectory = [p.copy()]
    for _ in range(steps):
        opt.update(p, grad(p), state)
        trajectory.append(p.copy())
    return np.array(trajectory)


def run_torch(name: str, overrides: dict, p0: np.ndarray, grad, steps: int = STEPS) -> np.ndarray:
    cls_name, _ = TORCH_EQUIVALENT[name]
    param = torch.tensor(p0.copy(), dtype=torch.float64, requires_grad=True)
    opt = getattr(torch.optim, cls_name)([param], **torch_kwargs(name, overrides))
    trajectory = [p0.copy()]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        param.grad = torch.from_numpy(grad(param.detach().numpy().copy()))
        opt.step()
        trajectory.append(param.detach().numpy().copy())
    return np.array(trajectory)


def assert_well_conditioned(name: str, overrides: dict, p0: np.ndarray, grad, theirs: np.ndarray) -> None:
    """Torch against itself from starts 1 ulp away must agree within the tolerance.

    Otherwise the trajectory amplifies rounding (it is chaotic) and a last-ulp difference in one
    step, which the contract allows, would grow into a failure that says nothing about the rule.
    """
    for direction in (np.inf, -np.inf):
        nudged = run_torch(name, overrides, np.nextafter(p0, direction), grad)
        excess = np.max(np.abs(nudged - theirs) / (RTOL * np.abs(theirs) + ATOL))
        assert excess <= 1.0, (
            f"ill-conditioned test case: torch from a start 1 ulp away parts from itself by "
            f"{excess:.1e} x the tolerance; choose a smaller lr or another start"
        )


def assert_same_trajectory(ours: np.ndarray, theirs: np.ndarray) -> None:
    """rtol 1e-12 at every step; on failure, name the first step that parts and by how much."""
    assert ours.shape == theirs.shape
    assert np.all(np.isfinite(theirs)), "the torch reference itself left the finite range"
    scale = np.abs(theirs)
    bad = np.abs(ours - theirs) > RTOL * scale + ATOL
    if bad.any():
        step = int(np.argwhere(bad.reshape(len(bad), -1).any(axis=1))[0, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(ours - theirs) / scale
        raise AssertionError(
            f"trajectories part at step {step}: ours {ours[step].ravel()[:4]} vs torch "
            f"{theirs[step].ravel()[:4]}, max relative difference there {np.nanmax(rel[step]):.3e}, "
            f"at step {len(ours) - 1} {np.nanmax(rel[-1]):.3e}"
        )


# --- the cases ------------------------------------------------------------------------------------

# Every registry entry at its defaults (so defaults are checked against torch's too) ...
DEFAULT_CASES = [pytest.param(name, {}, id=f"{name}-defaults") for name in OPTIMIZERS]

# ... and the non-default branches of each update rule.
SETTING_CASES = [
    pytest.param("sgd", {"weight_decay": 0.1}, id="sgd-weight_decay"),
    pytest.param("sgd", {"momentum": 0.9, "dampening": 0.5}, id="sgd-momentum-dampening"),
    pytest.param("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01}, id="sgd-nesterov-weight_decay"),
    pytest.param("momentum", {"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.05}, id="momentum-dampening-wd"),
    pytest.param("nesterov", {"momentum": 0.95, "lr": 5e-4}, id="nesterov-momentum0.95"),
    pytest.param("adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1}, id="adagrad-lr_decay-init_acc"),
    pytest.param("adagrad", {"weight_decay": 0.1, "eps": 1e-6}, id="adagrad-weight_decay-eps"),
    pytest.param("rmsprop", {"centered": True, "momentum": 0.9, "lr": 1e-3}, id="rmsprop-centered-momentum"),
    pytest.param("rmsprop", {"centered": True}, id="rmsprop-centered"),
    pytest.param(
        "rmsprop", {"momentum": 0.5, "weight_decay": 0.1, "alpha": 0.9, "lr": 3e-4}, id="rmsprop-momentum-wd-alpha"
    ),
    pytest.param("adadelta", {"rho": 0.95, "weight_decay": 0.1, "lr": 0.1}, id="adadelta-rho-wd"),
    pytest.param("adam", {"weight_decay": 0.1}, id="adam-coupled-weight_decay"),
    pytest.param("adam", {"amsgrad": True, "beta1": 0.8, "beta2": 0.99, "lr": 1e-2}, id="adam-amsgrad-betas"),
    pytest.param("adamw", {"weight_decay": 0.1, "lr": 1e-2}, id="adamw-weight_decay0.1"),
    pytest.param("adamw", {"amsgrad": True}, id="adamw-amsgrad"),
    pytest.param("amsgrad", {"weight_decay": 0.1, "eps": 1e-6}, id="amsgrad-weight_decay-eps"),
    pytest.param("adam", {"decoupled_weight_decay": True, "weight_decay": 0.1}, id="adam-decoupled-wd"),
    pytest.param("amsgrad", {"decoupled_weight_decay": True, "weight_decay": 0.2, "lr": 1e-2}, id="amsgrad-decoupled-wd"),
    pytest.param("nadam", {"decoupled_weight_decay": True, "weight_decay": 0.1}, id="nadam-decoupled-wd"),
    pytest.param("nadam", {"weight_decay": 0.1, "momentum_decay": 0.01, "beta1": 0.95}, id="nadam-coupled-wd-mdecay"),
    pytest.param("radam", {"decoupled_weight_decay": True, "weight_decay": 0.1}, id="radam-decoupled-wd"),
    pytest.param("radam", {"weight_decay": 0.1, "beta2": 0.99, "lr": 1e-2}, id="radam-coupled-wd-beta2"),
    pytest.param("adamax", {"weight_decay": 0.1, "beta1": 0.8, "beta2": 0.99}, id="adamax-wd-betas"),
]


@pytest.mark.parametrize(("name", "overrides"), DEFAULT_CASES + SETTING_CASES)
def test_rosenbrock_trajectory_matches_torch(name, overrides):
    if name in ROSENBROCK_LR:
        overrides = {"lr": ROSENBROCK_LR[name], **overrides}
    ours = run_ours(name, overrides, ROSENBROCK_START, rosenbrock_grad)
    theirs = run_torch(name, overrides, ROSENBROCK_START, rosenbrock_grad)
    # The run must actually move, or agreement would say little.
    assert np.abs(theirs[-1] - theirs[0]).max() > 1e-2
    assert_well_conditioned(name, overrides, ROSENBROCK_START, rosenbrock_grad, theirs)
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize(("name", "overrides"), DEFAULT_CASES + SETTING_CASES)
def test_random_quadratic_trajectory_matches_torch(name, overrides):
    # A 1-D parameter (5 coordinates coupled through A), unlike the (N, 2) Rosenbrock batch.
    ours = run_ours(name, overrides, QUAD_START, quadratic_grad)
    theirs = run_torch(name, overrides, QUAD_START, quadratic_grad)
    assert np.abs(theirs[-1] - theirs[0]).max() > 1e-2
    assert_well_conditioned(name, overrides, QUAD_START, quadratic_grad, theirs)
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_registry_defaults_equal_torch_signature_defaults(name):
    """A second oracle for the defaults: torch's own constructor signature."""
    cls_name, implied = TORCH_EQUIVALENT[name]
    signature = inspect.signature(getattr(torch.optim, cls_name).__init__)
    torch_defaults = {k: v.default for k, v in signature.parameters.items() if v.default is not inspect.Parameter.empty}
    torch_defaults.update(implied)
    if "betas" in torch_defaults:
        torch_defaults["beta1"], torch_defaults["beta2"] = torch_defaults.pop("betas")
    ours = OPTIMIZERS[name].defaults
    for key, value in ours.items():
        assert key in torch_defaults, f"{name}: {key} is not a torch.optim.{cls_name} hyperparameter"
        assert value == torch_defaults[key], f"{name}: default {key}={value!r}, torch has {torch_defaults[key]!r}"
    # And the other way: every option of torch's that changes the rule is ours too (a missing one
    # would be dropped without a word by a bare --hp meant for several optimizers).
    missing = set(torch_defaults) - set(ours) - set(implied) - TORCH_SWITCHES
    assert not missing, f"{name}: torch.optim.{cls_name} has {sorted(missing)}, optbench's {name} does not"


# torch's switches of how a step is computed, not of what it computes (`maximize` flips the
# problem, which a benchmark of minimisers does not: refused as unknown). Anything else of torch's
# signature must be one of our hyperparameters.
TORCH_SWITCHES = {"foreach", "maximize", "capturable", "differentiable", "fused"}
