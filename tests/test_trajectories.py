"""Trajectories on the 2-D surfaces: closed forms, row independence, populations of members,
divergence, summaries, --tune.

The oracles are hand derivations (gradient descent on a diagonal quadratic is a geometric
sequence per coordinate), the same computation done row by row or member by member, and the
rules the docstrings promise (a diverged row is cut at its first non-finite step and never
chosen by tune_lr).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from optbench.errors import OptbenchError
from optbench.optimizers import OPTIMIZERS, SGD, Contender

# The rules that run on points (Muon updates matrices only).
POINT_OPTIMIZERS = {name: cls for name, cls in OPTIMIZERS.items() if not cls.needs_matrices}
from optbench.surface_lrs import SURFACE_LRS
from optbench.surface_run import run_surface, surface_members
from optbench.surfaces import SURFACES, get_surface
from optbench.trajectories import (
    GAP_TOL, TUNE_GRID, SurfaceMember, distance_to_minimum, run, run_members, steps_to_tol, tune_lr,
)

BOWL = get_surface("bowl")
BOUNDED = sorted(name for name, s in SURFACES.items() if s.bounded)


@pytest.fixture
def no_warnings():
    """Turn every warning (RuntimeWarning from overflow in particular) into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- closed form -----------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [0.05, 0.3, 0.9])
def test_sgd_on_the_bowl_follows_the_closed_form(lr):
    # f = x^2/20 + y^2, grad = (x/10, 2y), so one SGD step is
    #   x <- x - lr x / 10 = (1 - lr/10) x,   y <- y - 2 lr y = (1 - 2 lr) y
    # and after t steps x_t = (1 - lr/10)^t x_0, y_t = (1 - 2 lr)^t y_0.
    steps = 60
    x0, y0 = -7.0, 2.0
    batch = run(BOWL, SGD(lr=lr), [(x0, y0)], steps)
    t = np.arange(steps + 1)
    expected = np.column_stack([(1 - lr / 10) ** t * x0, (1 - 2 * lr) ** t * y0])
    assert batch.positions.shape == (steps + 1, 1, 2)
    assert batch.losses.shape == (steps + 1, 1)
    # One rounding per step in each: a few ulps per step, relative.
    np.testing.assert_allclose(batch.positions[:, 0], expected, rtol=1e-13, atol=0)
    np.testing.assert_allclose(
        batch.losses[:, 0], expected[:, 0] ** 2 / 20 + expected[:, 1] ** 2, rtol=1e-12, atol=0
    )
    assert batch.stop.tolist() == [steps + 1]
    assert not batch.diverged.any()
    assert batch.steps == steps
    np.testing.assert_allclose(batch.final_positions[0], expected[-1], rtol=1e-13)


def test_run_does_not_modify_the_starts():
    starts = np.array([[-7.0, 2.0], [3.0, -1.0]])
    copy = starts.copy()
    run(BOWL, SGD(lr=0.1), starts, 10)
    np.testing.assert_array_equal(starts, copy)


# --- rows are independent --------------------------------------------------------------------

STARTS = np.array([[-0.27, -0.92], [4.0, 4.0], [-4.5, 1.0], [0.5, -4.0], [2.0, 0.1]])


@pytest.mark.parametrize("opt", sorted(POINT_OPTIMIZERS))
def test_a_batch_of_starts_equals_running_each_start_alone(opt):
    surface = get_surface("himmelblau")
    cls = OPTIMIZERS[opt]
    lr = SURFACE_LRS["himmelblau"][opt]
    steps = 150
    batch = run(surface, cls(lr=lr), STARTS, steps)
    assert batch.positions.shape == (steps + 1, len(STARTS), 2)
    for i, start in enumerate(STARTS):
        alone = run(surface, cls(lr=lr), start[None, :], steps)
        assert alone.stop[0] == batch.stop[i]
        # Elementwise rules: the same operations on the same numbers, so equal up to the
        # rounding of vectorised kernels (in practice bit-for-bit).
        np.testing.assert_allclose(batch.positions[:, i], alone.positions[:, 0], rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(batch.losses[:, i], alone.losses[:, 0], rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("opt", sorted(POINT_OPTIMIZERS))
def test_a_column_of_learning_rates_equals_one_run_per_learning_rate(opt):
    surface = get_surface("himmelblau")
    cls = OPTIMIZERS[opt]
    base = SURFACE_LRS["himmelblau"][opt]
    lrs = np.array([base / 4, base, base * 2])
    start = np.array([[-0.27, -0.92]])
    batch = run(surface, cls(lr=lrs[:, None]), np.repeat(start, 3, axis=0), 100)
    for i, lr in enumerate(lrs):
        alone = run(surface, cls(lr=float(lr)), start, 100)
        np.testing.assert_allclose(batch.positions[:, i], alone.positions[:, 0], rtol=1e-13, atol=1e-300)


# --- populations of members ------------------------------------------------------------------


def assert_same_trajectory(batch, k, alone):
    """Row k of `batch` is bit for bit the batch of one `alone` (NaN tails included)."""
    assert batch.stop[k] == alone.stop[0]
    np.testing.assert_array_equal(batch.positions[:, k], alone.positions[:, 0])
    np.testing.assert_array_equal(batch.losses[:, k], alone.losses[:, 0])


def test_a_population_of_two_optimizers_at_two_lrs_is_bitwise_each_member_alone(no_warnings):
    # Rosenbrock from (-1.5, 2.5): SGD at lr 0.01 overflows within a few steps, so one member
    # diverges while the three others run all their steps beside it.
    rosenbrock = get_surface("rosenbrock")
    contenders = [Contender("adam", OPTIMIZERS["adam"], {"beta1": 0.8}), Contender("sgd", OPTIMIZERS["sgd"], {})]
    members = surface_members(rosenbrock, contenders, [1e-3, 1e-2])
    assert [(m.optimizer, m.lr) for m in members] == [("adam", 1e-3), ("adam", 1e-2), ("sgd", 1e-3), ("sgd", 1e-2)]
    assert [m.hparams for m in members] == [{"beta1": 0.8}] * 2 + [{}] * 2
    assert all(m.start == rosenbrock.start for m in members)
    batch = run_members(rosenbrock, members, 300)
    assert batch.diverged.tolist() == [False, False, False, True]
    for k, m in enumerate(members):
        # Alone: the member's own optimizer object with a scalar lr, from its own start.
        assert_same_trajectory(batch, k, run(rosenbrock, OPTIMIZERS[m.optimizer](lr=m.lr, **m.hparams), [m.start], 300))


@pytest.mark.parametrize("opt", sorted(POINT_OPTIMIZERS))
def test_members_with_other_lrs_and_starts_are_bitwise_each_member_alone(opt):
    surface = get_surface("himmelblau")
    cls = OPTIMIZERS[opt]
    base = SURFACE_LRS["himmelblau"][opt]
    members = [SurfaceMember(opt, cls, {}, lr, tuple(start)) for lr in (base / 3, base * 2) for start in STARTS[:3]]
    batch = run_members(surface, members, 120)
    for k, m in enumerate(members):
        assert_same_trajectory(batch, k, run(surface, cls(lr=m.lr), [m.start], 120))


class Recording:
    """A user optimizer (plain SGD) that records each instance and the shapes it updates."""

    defaults = {"lr": 0.01}
    instances: list = []

    def __init__(self, lr=0.01):
        self.lr = lr
        self.shapes = []
        Recording.instances.append(self)

    def init(self, p):
        return {}

    def update(self, p, g, state):
        self.shapes.append(p.shape)
        p -= self.lr * g


def test_user_members_run_one_instance_each_and_keep_the_member_order():
    Recording.instances.clear()
    members = [
        SurfaceMember("recording", Recording, {}, 0.1, (-7.0, 2.0)),
        SurfaceMember("sgd", SGD, {}, 0.1, (-7.0, 2.0)),
        SurfaceMember("recording", Recording, {}, 0.3, (3.0, -1.0)),
        SurfaceMember("sgd", SGD, {}, 0.3, (3.0, -1.0)),
    ]
    batch = run_members(BOWL, members, 25)
    assert [inst.lr for inst in Recording.instances] == [0.1, 0.3]
    assert all(set(inst.shapes) == {(1, 2)} for inst in Recording.instances)
    # Recording is plain SGD: member k of either class follows the bowl's closed form
    # x_t = (1 - lr/10)^t x_0, y_t = (1 - 2 lr)^t y_0.
    t = np.arange(26)
    for k, m in enumerate(members):
        (x0, y0), lr = m.start, m.lr
        expected = np.column_stack([(1 - lr / 10) ** t * x0, (1 - 2 * lr) ** t * y0])
        np.testing.assert_allclose(batch.positions[:, k], expected, rtol=1e-13)


def test_surface_members_take_the_lr_from_hp_then_every_lr_given_then_the_table():
    adam, sgd = OPTIMIZERS["adam"], OPTIMIZERS["sgd"]
    table = SURFACE_LRS["bowl"]
    chosen = [Contender("adam", adam, {"lr": 0.05, "beta1": 0.5}), Contender("sgd", sgd, {}), Contender("recording", Recording, {})]
    assert [(m.optimizer, m.lr) for m in surface_members(BOWL, chosen)] == [("adam", 0.05), ("sgd", table["sgd"]), ("recording", 0.01)]
    given = surface_members(BOWL, chosen, [0.2, 0.3])
    assert [(m.optimizer, m.lr) for m in given] == [("adam", 0.05), ("sgd", 0.2), ("sgd", 0.3), ("recording", 0.2), ("recording", 0.3)]
    # The lr is the member's, never one of its hyperparameters.
    assert given[0].hparams == {"beta1": 0.5} and given[0].build().lr == 0.05


@pytest.mark.parametrize("lr", [0.0, -1.0, math.nan, math.inf])
def test_a_non_positive_or_non_finite_lr_is_refused(lr):
    with pytest.raises(OptbenchError, match="must be a finite number > 0"):
        run_surface(BOWL, [Contender("sgd", SGD, {})], lrs=[0.1, lr])


def test_run_surface_has_one_summary_row_per_member():
    contenders = [Contender("sgd", SGD, {}), Contender("adam", OPTIMIZERS["adam"], {})]
    result = run_surface(BOWL, contenders, steps=30, lrs=[0.05, 0.5])
    pairs = set(zip(result.summary["optimizer"], result.summary["lr"]))
    assert pairs == {("sgd", 0.05), ("sgd", 0.5), ("adam", 0.05), ("adam", 0.5)}
    batch = run(BOWL, SGD(lr=0.5), [BOWL.start], 30)
    row = result.summary.set_index(["optimizer", "lr"]).loc[("sgd", 0.5)]
    assert row["final_loss"] == batch.final_losses[0]
    path = result.trajectories[(result.trajectories["optimizer"] == "sgd") & (result.trajectories["lr"] == 0.5)]
    np.testing.assert_array_equal(path[["x", "y"]].to_numpy(), batch.positions[:, 0])


# --- divergence ------------------------------------------------------------------------------


def test_divergent_row_is_cut_at_its_first_overflow_and_others_are_unaffected(no_warnings):
    rosenbrock = get_surface("rosenbrock")
    start = (-1.5, 2.5)
    steps = 200
    lrs = np.array([[1e-3], [10.0], [5e-4]])  # row 1 overflows within a few steps
    batch = run(rosenbrock, SGD(lr=lrs), np.repeat([start], 3, axis=0), steps)

    assert batch.diverged.tolist() == [False, True, False]
    stop = int(batch.stop[1])
    assert 1 <= stop <= steps

    # The finite prefix is the plain SGD iteration p <- p - lr grad(p), done here by hand.
    expected = [np.array(start)]
    with np.errstate(all="ignore"):
        while True:
            p = expected[-1] - 10.0 * rosenbrock.gradient(expected[-1])
            if not (np.all(np.isfinite(p)) and np.isfinite(rosenbrock.value(p))):
                break
            expected.append(p)
    assert stop == len(expected)
    np.testing.assert_allclose(batch.positions[:stop, 1], np.array(expected), rtol=1e-13)
    assert np.all(np.isfinite(batch.positions[:stop, 1]))
    assert np.all(np.isfinite(batch.losses[:stop, 1]))
    # Everything from the stop on is NaN (not inf, not stale values).
    assert np.all(np.isnan(batch.positions[stop:, 1]))
    assert np.all(np.isnan(batch.losses[stop:, 1]))
    # Summaries of the diverged row use its last finite step.
    assert batch.final_index[1] == stop - 1
    np.testing.assert_array_equal(batch.final_positions[1], batch.positions[stop - 1, 1])
    assert batch.final_losses[1] == batch.losses[stop - 1, 1]

    # The other rows run all their steps, exactly as if alone.
    for i, lr in ((0, 1e-3), (2, 5e-4)):
        alone = run(rosenbrock, SGD(lr=lr), [start], steps)
        assert batch.stop[i] == steps + 1
        np.testing.assert_allclose(batch.positions[:, i], alone.positions[:, 0], rtol=1e-13)
        np.testing.assert_allclose(batch.losses[:, i], alone.losses[:, 0], rtol=1e-13)
        assert np.all(np.isfinite(batch.losses[:, i]))


def test_all_rows_diverging_gives_no_warning_and_all_nan_tails(no_warnings):
    rosenbrock = get_surface("rosenbrock")
    batch = run(rosenbrock, SGD(lr=100.0), [(-1.5, 2.5), (1.5, -0.5)], 300)
    assert batch.diverged.all()
    for i in range(2):
        stop = batch.stop[i]
        assert np.all(np.isfinite(batch.losses[:stop, i]))
        assert np.all(np.isnan(batch.losses[stop:, i]))
        assert np.all(np.isnan(batch.positions[stop:, i]))


# --- steps_to_tol and distance_to_minimum ----------------------------------------------------


def test_steps_to_tol_is_the_first_step_within_1e_3_of_the_minimum_on_the_bowl():
    # SGD with lr = 0.5 from (-7, 2): y_1 = (1 - 2 * 0.5) * 2 = 0 exactly, x_t = 0.95^t * (-7),
    # so for t >= 1 loss_t = 49/20 * 0.95^(2t) = 2.45 * 0.9025^t.
    # loss_t < 1e-3  <=>  t > ln(1e-3 / 2.45) / ln(0.9025) = 76.07, so the first such step is 77.
    assert GAP_TOL == 1e-3
    hand = 77
    assert 2.45 * 0.9025**76 >= 1e-3 > 2.45 * 0.9025**77
    batch = run(BOWL, SGD(lr=0.5), [(-7.0, 2.0)], 120)
    assert steps_to_tol(BOWL, batch).tolist() == [hand]


def test_steps_to_tol_per_row_and_minus_one_when_never():
    # Row 0 as above (step 77); row 1 starts at the minimum (step 0); row 2 has a tiny lr and
    # never gets there in 120 steps.
    batch = run(BOWL, SGD(lr=np.array([[0.5], [0.5], [1e-4]])), [(-7.0, 2.0), (0.0, 0.0), (-7.0, 2.0)], 120)
    assert steps_to_tol(BOWL, batch).tolist() == [77, 0, -1]
    short = run(BOWL, SGD(lr=0.5), [(-7.0, 2.0)], 76)
    assert steps_to_tol(BOWL, short).tolist() == [-1]


def test_steps_to_tol_is_minus_one_on_unbounded_surfaces():
    for name in ("saddle", "monkey_saddle"):
        surface = get_surface(name)
        batch = run(surface, SGD(lr=0.01), [surface.start, (0.0, 0.0)], 50)
        assert steps_to_tol(surface, batch).tolist() == [-1, -1]


def test_steps_to_tol_ignores_the_nan_tail_of_a_diverged_row(no_warnings):
    batch = run(get_surface("rosenbrock"), SGD(lr=10.0), [(-1.5, 2.5)], 100)
    assert batch.diverged[0]
    assert steps_to_tol(get_surface("rosenbrock"), batch).tolist() == [-1]


def test_distance_to_minimum_picks_the_nearest_of_himmelblaus_minima():
    himmelblau = get_surface("himmelblau")
    # Published minima (Himmelblau 1972, 6 decimals); offsets small against their spacing (> 4).
    published = [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    offsets = [(0.1, 0.0), (0.0, -0.2), (0.3, 0.4), (-0.06, 0.08)]
    points = np.array([(x + dx, y + dy) for (x, y), (dx, dy) in zip(published, offsets)])
    expected = [0.1, 0.2, 0.5, 0.1]
    np.testing.assert_allclose(distance_to_minimum(himmelblau, points), expected, atol=2e-6)
    # From the origin the nearest is (3, 2): sqrt(13) = 3.606 against 4.204, 5.006 and 4.033.
    np.testing.assert_allclose(distance_to_minimum(himmelblau, np.zeros((1, 2))), [math.sqrt(13)], rtol=1e-15)


def test_distance_to_minimum_is_nan_without_a_minimum():
    assert np.isnan(distance_to_minimum(get_surface("saddle"), np.zeros((3, 2)))).all()


# --- tune_lr ---------------------------------------------------------------------------------


def test_tune_lr_on_the_bowl_picks_the_lr_with_the_lowest_final_loss(no_warnings):
    steps = 200
    chosen, batch = tune_lr(BOWL, SGD, {}, (-7.0, 2.0), steps)
    grid = np.asarray(TUNE_GRID)
    best = grid[chosen]
    assert batch.positions.shape == (steps + 1, grid.size, 2)
    (index,) = np.flatnonzero(grid == best)
    # SGD on y grows like |1 - 2 lr|^t for lr > 1; from lr = 3.98 on (|1 - 2 lr| >= 6.96) that
    # overflows within 200 steps, so some runs diverge, and the chosen one is not among them.
    assert batch.diverged.any()
    assert not batch.diverged[index]
    final = batch.final_losses
    for j in range(grid.size):
        if j != index:
            assert batch.diverged[j] or final[index] < final[j], (best, grid[j])
    # By hand: below lr = 1 the slower coordinate is x, shrinking by (1 - lr/10) per step, so the
    # largest grid lr below 1 (10^-0.2 = 0.631) wins.
    assert best == pytest.approx(10**-0.2)


class Jumper:
    """A user optimizer (not in OPTIMIZERS) that jumps straight to the bowl's minimum at step 1;
    with lr > 1 it then blows up (NaN), after having reached loss 0."""

    defaults = {"lr": 0.01}

    def __init__(self, lr=0.01):
        self.lr = lr

    def init(self, p):
        return {"step": 0}

    def update(self, p, g, state):
        state["step"] += 1
        if state["step"] == 1:
            p[...] = 0.0
        elif self.lr > 1:
            p[...] = np.nan
        else:
            p -= self.lr * g


def test_tune_lr_never_chooses_a_diverged_run_even_if_its_last_finite_loss_is_lowest(no_warnings):
    grid = [0.01, 0.1, 2.0, 5.0]
    chosen, batch = tune_lr(BOWL, Jumper, {}, (-7.0, 2.0), 10, grid=grid)
    best = grid[chosen]
    # lr 2 and 5: loss 0 at step 1, NaN at step 2 -> diverged, final (last finite) loss 0.
    assert batch.diverged.tolist() == [False, False, True, True]
    assert batch.final_losses[2] == 0.0
    # lr 0.01 and 0.1 stay at 0 with loss 0 too (gradient 0): ties go to the earlier arrival
    # (both step 1), then the smaller lr.
    assert best == 0.01


class SignSGD:
    """sign-SGD, p <- p - lr sign(g): a user-defined optimizer with the minimal interface.

    Records every instance so the test can see how tune_lr called it."""

    defaults = {"lr": 0.01}
    instances: list = []

    def __init__(self, lr=0.01):
        self.lr = lr
        self.shapes = []
        SignSGD.instances.append(self)

    def init(self, p):
        return {}

    def update(self, p, g, state):
        self.shapes.append(p.shape)
        p -= self.lr * np.sign(g)


def test_tune_lr_with_a_user_defined_optimizer_runs_one_lr_per_instance(no_warnings):
    assert SignSGD not in OPTIMIZERS.values()
    SignSGD.instances.clear()
    grid = [1e-3, 3e-2, 0.1, 0.7]
    steps = 100
    start = (-7.0, 2.0)
    chosen, batch = tune_lr(BOWL, SignSGD, {}, start, steps, grid=grid)
    best = grid[chosen]

    assert [inst.lr for inst in SignSGD.instances] == grid
    assert all(isinstance(inst.lr, float) for inst in SignSGD.instances)
    assert all(set(inst.shapes) == {(1, 2)} for inst in SignSGD.instances)
    assert batch.positions.shape == (steps + 1, len(grid), 2)

    # Oracle: sign-SGD by hand, one lr at a time.
    finals = []
    for lr in grid:
        p = np.array(start)
        for _ in range(steps):
            p = p - lr * np.sign(BOWL.gradient(p))
        finals.append(BOWL.value(p))
    np.testing.assert_allclose(batch.final_losses, finals, rtol=1e-12, atol=1e-300)
    assert best == grid[int(np.argmin(finals))]
    # By hand: in 100 steps lr = 1e-3 moves x by 0.1 and lr = 3e-2 by 3 (of the 7 needed);
    # lr = 0.1 reaches (0, 0) up to rounding (loss ~ 1e-30); lr = 0.7 ends with y oscillating
    # between +-0.6 around 0 (loss 0.36). So 0.1 wins.
    assert best == 0.1


def test_tune_lr_passes_the_other_hyperparameters():
    chosen_plain, _ = tune_lr(BOWL, SGD, {}, (-7.0, 2.0), 30, grid=[0.01, 0.05])
    best_plain = [0.01, 0.05][chosen_plain]
    _, batch = tune_lr(BOWL, SGD, {"momentum": 0.9}, (-7.0, 2.0), 30, grid=[0.05])
    expected = run(BOWL, SGD(lr=0.05, momentum=0.9), [(-7.0, 2.0)], 30)
    np.testing.assert_allclose(batch.positions, expected.positions, rtol=1e-13)
    assert best_plain == 0.05


# --- per-surface default learning rates ------------------------------------------------------


@pytest.mark.parametrize("opt", sorted(POINT_OPTIMIZERS))
@pytest.mark.parametrize("name", BOUNDED)
def test_every_optimizer_with_its_default_lr_makes_progress_on_every_bounded_surface(name, opt):
    # The promise behind `optbench surface --opt all`: with SURFACE_LRS and the surface's default
    # number of steps, no optimizer diverges and each ends lower than it started.
    surface = get_surface(name)
    lr = SURFACE_LRS[name][opt]
    batch = run(surface, OPTIMIZERS[opt](lr=lr), [surface.start], surface.steps)
    assert not batch.diverged[0], f"{opt} diverges on {name} with lr {lr} at step {batch.stop[0]}"
    assert np.all(np.isfinite(batch.losses[:, 0]))
    assert batch.final_losses[0] < batch.losses[0, 0], (opt, name, lr, batch.final_losses[0])


def test_surface_lrs_cover_every_surface_and_optimizer():
    assert set(SURFACE_LRS) == set(SURFACES)
    for name, lrs in SURFACE_LRS.items():
        assert set(lrs) == set(POINT_OPTIMIZERS), name
        assert all(lr > 0 for lr in lrs.values())


class Scripted:
    """A user optimizer that follows a script: on the bowl (minimum 0 at the origin) it holds a
    point of loss 1e-2 (at lr 0.1) or 1e-4 (at lr 0.2) for nine steps, then lands on the minimum."""

    def __init__(self, lr=0.1):
        self.lr = lr

    def init(self, p):
        return {"step": 0}

    def update(self, p, g, state):
        state["step"] += 1
        loss = 1e-2 if self.lr == 0.1 else 1e-4
        p[...] = (0.0, np.sqrt(loss)) if state["step"] < 10 else 0.0


def test_tune_lr_breaks_ties_by_the_steps_to_the_tolerance_it_is_given():
    # Both lrs end at loss 0. Within 0.1 both get there at step 1: the smaller lr wins the tie.
    # Within 1e-3 only lr 0.2 is there at step 1 (lr 0.1 at step 10): lr 0.2 wins.
    grid = [0.1, 0.2]
    assert tune_lr(BOWL, Scripted, {}, (-7.0, 2.0), 20, grid=grid, tol=0.1)[0] == 0
    assert tune_lr(BOWL, Scripted, {}, (-7.0, 2.0), 20, grid=grid, tol=1e-3)[0] == 1
