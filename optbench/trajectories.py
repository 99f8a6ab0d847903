"""Optimizers on 2-D surfaces: many trajectories at once, divergence, summaries and --tune.

A batch of trajectories is a point cloud `p` of shape (N, 2) updated by one optimizer; the
built-in rules are elementwise, so the rows are independent and a row that overflows or turns
NaN cannot disturb the others. A user's optimizer might couple coordinates (a global norm,
say), so it runs one row at a time.

A surface run is a population of members (optimizer, hyperparameters, lr, start point), as an
MNIST run is: `run_members` runs every member of one built-in optimizer as one point cloud with
a column of lrs, so each row is bitwise the trajectory that member would have alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from optbench.errors import OptbenchError
from optbench.optimizers import OPTIMIZERS, init_state, instantiate, optimizer_label
from optbench.schedules import CONSTANT, Schedule, ScheduledLRs
from optbench.surfaces import Surface

GAP_TOL = 1e-3  # steps_to_tol: the first step where loss - global minimum < GAP_TOL
TUNE_GRID = np.logspace(-5, 2, 36)  # 5 learning rates per decade, 1e-5 .. 1e2


@dataclass
class TrajectoryBatch:
    """N trajectories of `steps` steps: positions (steps + 1, N, 2) and losses (steps + 1, N).

    `stop[i]` is the number of finite steps of row i: positions[:stop[i]] are its trajectory.
    A row with stop[i] <= steps diverged at step stop[i], unless its rule raised there
    (`failures[i]` says what; a user's rule only: the other rows go on).
    """

    positions: np.ndarray
    losses: np.ndarray
    stop: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.positions.shape[0] - 1

    @property
    def failed(self) -> np.ndarray:
        mask = np.zeros(self.stop.shape, dtype=bool)
        mask[list(self.failures)] = True
        return mask

    @property
    def diverged(self) -> np.ndarray:
        return (self.stop <= self.steps) & ~self.failed

    @property
    def status(self) -> np.ndarray:
        """Per row: finished, diverged or failed."""
        return np.where(self.failed, "failed", np.where(self.diverged, "diverged", "finished"))

    @property
    def final_index(self) -> np.ndarray:
        return self.stop - 1

    @property
    def final_positions(self) -> np.ndarray:
        return self.positions[self.final_index, np.arange(self.positions.shape[1])]

    @property
    def final_losses(self) -> np.ndarray:
        return self.losses[self.final_index, np.arange(self.losses.shape[1])]

    def row(self, i: int) -> "TrajectoryBatch":
        """Trajectory i alone, as a batch of one."""
        failures = {0: self.failures[i]} if i in self.failures else {}
        return TrajectoryBatch(self.positions[:, i : i + 1], self.losses[:, i : i + 1], self.stop[i : i + 1], failures)

    @staticmethod
    def concat(batches: list["TrajectoryBatch"]) -> "TrajectoryBatch":
        """The rows of every batch, in order (all of one length of run)."""
        offsets = np.cumsum([0] + [b.stop.size for b in batches])
        return TrajectoryBatch(
            np.concatenate([b.positions for b in batches], axis=1),
            np.concatenate([b.losses for b in batches], axis=1),
            np.concatenate([b.stop for b in batches]),
            {int(offset) + i: text for b, offset in zip(batches, offsets) for i, text in b.failures.items()},
        )

    def reordered(self, order: np.ndarray) -> "TrajectoryBatch":
        """Row k of the result is row order[k] of this batch."""
        where = {int(old): new for new, old in enumerate(order)}
        return TrajectoryBatch(self.positions[:, order], self.losses[:, order], self.stop[order],
                               {where[i]: text for i, text in self.failures.items()})


@dataclass(frozen=True)
class SurfaceMember:
    """One trajectory: an optimizer (label, class, hyperparameters without lr), an lr and a start."""

    optimizer: str
    cls: type
    hparams: dict
    lr: float
    start: tuple[float, float]
    seed: int = 0  # of the gradient noise (`--noise`): members of one seed see the same draws

    def build(self):
        return instantiate(self.cls, **{**self.hparams, "lr": self.lr})


class GradientNoise:
    """Gaussian noise of standard deviation `sigma` on each gradient (the DeepOBS 2-D problems),
    one stream per seed, `SeedSequence([seed, 2])`: the rows of one seed get the same draws, so
    optimizers compared at a seed see the same noise, and a row alone gets what it got in a cloud."""

    def __init__(self, sigma: float, seeds):
        self.sigma = float(sigma)
        self.seeds = list(seeds)
        self.generators = {s: np.random.default_rng(np.random.SeedSequence([s, 2])) for s in dict.fromkeys(self.seeds)}

    def __call__(self, g: np.ndarray) -> np.ndarray:
        if self.sigma == 0:
            return g
        draws = {s: rng.standard_normal(g.shape[-1]) for s, rng in self.generators.items()}
        return g + self.sigma * np.stack([draws[s] for s in self.seeds])


def _run_rows(surface: Surface, optimizer, starts: np.ndarray, steps: int, schedule: Schedule = CONSTANT,
              noise: GradientNoise | None = None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """positions, losses and, where the rule raised, what it raised and at which step (the
    trajectory stops there, as a diverged one does)."""
    n = starts.shape[0]
    noisy = noise or GradientNoise(0.0, [0] * n)
    lrs = ScheduledLRs([optimizer], schedule, steps)
    positions = np.full((steps + 1, n, 2), np.nan)
    losses = np.full((steps + 1, n), np.nan)
    p = starts.copy()
    positions[0], losses[0] = p, surface.value(p)
    try:
        state = init_state(optimizer, p)  # no layout: each row is one point, the rule's one vector
    except OptbenchError:
        raise
    except Exception as exc:  # a user's rule
        return positions, losses, f"init(p) raised {type(exc).__name__}: {exc}"
    # What is recorded is the rule's answer: its evaluation weights (Schedule-Free's average),
    # which for most rules are the parameters themselves.
    answer = getattr(optimizer, "evaluation_weights", lambda p, state: p)
    # Overflow and NaN are expected here (that is divergence), and are found below, not warned.
    try:
        with np.errstate(all="ignore"):
            for t in range(1, steps + 1):
                lrs.at(t)
                g = noisy(surface.gradient(p))
                try:
                    optimizer.update(p, g, state)
                except OptbenchError:
                    raise
                except Exception as exc:  # a user's rule
                    return positions, losses, f"its update raised {type(exc).__name__}: {exc} at step {t}"
                positions[t] = answer(p, state)
                losses[t] = surface.value(positions[t])
                if not np.isfinite(losses[t]).any():
                    break
    finally:
        lrs.restore()
    return positions, losses, None


def run(surface: Surface, optimizer, starts, steps: int, schedule: Schedule = CONSTANT, noise: float = 0.0,
        seeds=None) -> TrajectoryBatch:
    """Run `optimizer` from each row of `starts` (N, 2) for `steps` steps, in float64, its lr
    (the peak) scaled by `schedule` step by step, with gradient noise of std `noise` drawn for
    each row from its seed (`seeds`, default 0 for every row).

    A user's rule runs row by row, and a row where it raises stops there, marked failed
    (`TrajectoryBatch.failures`); the other rows go on, as an MNIST member's failure leaves the
    others of its population."""
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    seeds = [0] * starts.shape[0] if seeds is None else list(seeds)
    failures = {}
    if type(optimizer) in OPTIMIZERS.values():
        positions, losses, failure = _run_rows(surface, optimizer, starts, steps, schedule, GradientNoise(noise, seeds))
        if failure:  # a built-in rule does not raise on a point: a bug, not the user's
            raise OptbenchError(f"{optimizer_label(type(optimizer))}: {failure} on {surface.name}")
    else:
        rows = [_run_rows(surface, optimizer, starts[i : i + 1], steps, schedule, GradientNoise(noise, seeds[i : i + 1]))
                for i in range(starts.shape[0])]
        positions = np.concatenate([r[0] for r in rows], axis=1)
        losses = np.concatenate([r[1] for r in rows], axis=1)
        failures = {i: r[2] for i, r in enumerate(rows) if r[2]}
    finite = np.isfinite(losses) & np.isfinite(positions).all(axis=-1)
    # A trajectory stops at its first non-finite step: nothing after it is kept.
    stop = np.where(finite.all(axis=0), steps + 1, np.argmin(finite, axis=0))
    after_stop = np.arange(steps + 1)[:, None] >= stop[None, :]
    positions[after_stop] = np.nan
    losses[after_stop] = np.nan
    return TrajectoryBatch(positions, losses, stop, failures)


def _same_optimizer(a: SurfaceMember, b: SurfaceMember) -> bool:
    return (a.optimizer, a.cls, a.hparams) == (b.optimizer, b.cls, b.hparams)


def run_members(surface: Surface, members: list[SurfaceMember], steps: int,
                schedule: Schedule = CONSTANT, noise: float = 0.0) -> TrajectoryBatch:
    """Every member for `steps` steps; row k of the batch is member k.

    The members of one built-in optimizer (same label, class and hyperparameters) run as one
    point cloud with lr as a column (K, 1); a user's class runs member by member.
    """
    groups: list[list[int]] = []  # member indices, one list per optimizer
    for k, m in enumerate(members):
        for rows in groups:
            if _same_optimizer(members[rows[0]], m):
                rows.append(k)
                break
        else:
            groups.append([k])
    order, batches = [], []
    for rows in groups:
        group = [members[k] for k in rows]
        starts = np.array([m.start for m in group], dtype=np.float64)
        seeds = [m.seed for m in group]
        if group[0].cls in OPTIMIZERS.values():
            lrs = np.array([m.lr for m in group], dtype=np.float64)[:, None]
            batches.append(run(surface, instantiate(group[0].cls, lr=lrs, **group[0].hparams), starts, steps, schedule,
                               noise, seeds))
        else:
            batches += [run(surface, m.build(), starts[i : i + 1], steps, schedule, noise, [m.seed])
                        for i, m in enumerate(group)]
        order += rows
    return TrajectoryBatch.concat(batches).reordered(np.argsort(order))  # from group order back to member order


def steps_to_tol(surface: Surface, batch: TrajectoryBatch, tol: float = GAP_TOL) -> np.ndarray:
    """Per row, the first step with loss - minimum < tol, or -1 when never (or no minimum)."""
    if not surface.bounded:
        return np.full(batch.losses.shape[1], -1)
    with np.errstate(invalid="ignore"):
        below = batch.losses - surface.min_value < tol
    return np.where(below.any(axis=0), np.argmax(below, axis=0), -1)


def distance_to_minimum(surface: Surface, points: np.ndarray) -> np.ndarray:
    """Distance from each point (N, 2) to the nearest listed minimum (NaN when there is none)."""
    if not surface.minima:
        return np.full(points.shape[0], np.nan)
    minima = np.asarray(surface.minima)
    return np.min(np.linalg.norm(points[:, None, :] - minima[None, :, :], axis=-1), axis=1)


def tune_lr(surface: Surface, cls: type, hparams: dict, start, steps: int, grid=TUNE_GRID,
            schedule: Schedule = CONSTANT, noise: float = 0.0, seed: int = 0, tol: float = GAP_TOL):
    """Run every lr of `grid` from `start` (a point, or (N, 2) start points); return (index of
    the best lr, batch with one row per lr, or per lr and start, lr-major).

    The grid is a population of one member per lr and start (`run_members`): one vectorised
    batch for a built-in optimizer, one instance per member for a user's class. The best lr has
    the lowest final loss (diverged and failed runs count as +inf), from several starts the lowest median
    over them; ties go to the run that came within `tol` of the minimum first (the median step),
    then to the smaller lr.
    """
    grid = np.asarray(grid, dtype=np.float64)
    starts = np.atleast_2d(np.asarray(start, dtype=np.float64))
    hparams = {k: v for k, v in hparams.items() if k != "lr"}
    members = [SurfaceMember(optimizer_label(cls), cls, hparams, float(lr), tuple(s), seed) for lr in grid for s in starts]
    batch = run_members(surface, members, steps, schedule, noise)
    final = np.where(batch.diverged | batch.failed, np.inf, batch.final_losses).reshape(grid.size, -1)
    reached = steps_to_tol(surface, batch, tol)
    reached = np.where(reached < 0, steps + 1, reached).reshape(grid.size, -1)
    return int(np.lexsort((grid, np.median(reached, axis=1), np.median(final, axis=1)))[0]), batch
