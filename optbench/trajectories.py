"""Optimizers on 2-D surfaces: many trajectories at once, divergence, summaries and --tune.

A batch of trajectories is a point cloud `p` of shape (N, 2) updated by one optimizer; the
built-in rules are elementwise, so the rows are independent and a row that overflows or turns
NaN cannot disturb the others. A user's optimizer might couple coordinates (a global norm,
say), so it runs one row at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optbench.optimizers import OPTIMIZERS, instantiate
from optbench.surfaces import Surface

GAP_TOL = 1e-3  # steps_to_tol: the first step where loss - global minimum < GAP_TOL
TUNE_GRID = np.logspace(-5, 2, 36)  # 5 learning rates per decade, 1e-5 .. 1e2


@dataclass
class TrajectoryBatch:
    """N trajectories of `steps` steps: positions (steps + 1, N, 2) and losses (steps + 1, N).

    `stop[i]` is the number of finite steps of row i: positions[:stop[i]] are its trajectory,
    and a row with stop[i] <= steps diverged at step stop[i].
    """

    positions: np.ndarray
    losses: np.ndarray
    stop: np.ndarray

    @property
    def steps(self) -> int:
        return self.positions.shape[0] - 1

    @property
    def diverged(self) -> np.ndarray:
        return self.stop <= self.steps

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
        return TrajectoryBatch(self.positions[:, i : i + 1], self.losses[:, i : i + 1], self.stop[i : i + 1])


def _run_rows(surface: Surface, optimizer, starts: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    n = starts.shape[0]
    positions = np.full((steps + 1, n, 2), np.nan)
    losses = np.full((steps + 1, n), np.nan)
    p = starts.copy()
    state = optimizer.init(p)
    positions[0], losses[0] = p, surface.value(p)
    # Overflow and NaN are expected here (that is divergence), and are found below, not warned.
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            optimizer.update(p, surface.gradient(p), state)
            positions[t] = p
            losses[t] = surface.value(p)
            if not np.isfinite(losses[t]).any():
                break
    return positions, losses


def run(surface: Surface, optimizer, starts, steps: int) -> TrajectoryBatch:
    """Run `optimizer` from each row of `starts` (N, 2) for `steps` steps, in float64."""
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    if type(optimizer) in OPTIMIZERS.values():
        positions, losses = _run_rows(surface, optimizer, starts, steps)
    else:
        rows = [_run_rows(surface, optimizer, starts[i : i + 1], steps) for i in range(starts.shape[0])]
        positions = np.concatenate([r[0] for r in rows], axis=1)
        losses = np.concatenate([r[1] for r in rows], axis=1)
    finite = np.isfinite(losses) & np.isfinite(positions).all(axis=-1)
    # A trajectory stops at its first non-finite step: nothing after it is kept.
    stop = np.where(finite.all(axis=0), steps + 1, np.argmin(finite, axis=0))
    after_stop = np.arange(steps + 1)[:, None] >= stop[None, :]
    positions[after_stop] = np.nan
    losses[after_stop] = np.nan
    return TrajectoryBatch(positions, losses, stop)


def steps_to_tol(surface: Surface, batch: TrajectoryBatch) -> np.ndarray:
    """Per row, the first step with loss - minimum < GAP_TOL, or -1 when never (or no minimum)."""
    if not surface.bounded:
        return np.full(batch.losses.shape[1], -1)
    with np.errstate(invalid="ignore"):
        below = batch.losses - surface.min_value < GAP_TOL
    return np.where(below.any(axis=0), np.argmax(below, axis=0), -1)


def distance_to_minimum(surface: Surface, points: np.ndarray) -> np.ndarray:
    """Distance from each point (N, 2) to the nearest listed minimum (NaN when there is none)."""
    if not surface.minima:
        return np.full(points.shape[0], np.nan)
    minima = np.asarray(surface.minima)
    return np.min(np.linalg.norm(points[:, None, :] - minima[None, :, :], axis=-1), axis=1)


def tune_lr(surface: Surface, cls: type, hparams: dict, start, steps: int, grid=TUNE_GRID):
    """Run every lr of `grid`; return (index of the best lr, batch with one row per lr).

    A built-in optimizer gets lr as a column (G, 1), so the whole grid is one vectorised batch;
    a user's class gets one instance per lr. The best lr has the lowest final loss (diverged runs count as
    +inf); ties go to the run that came within tolerance first, then to the smaller lr.
    """
    grid = np.asarray(grid, dtype=np.float64)
    start = np.asarray(start, dtype=np.float64)[None, :]
    if cls in OPTIMIZERS.values():
        batch = run(surface, cls(lr=grid[:, None], **hparams), np.repeat(start, grid.size, axis=0), steps)
    else:
        rows = [run(surface, instantiate(cls, lr=float(lr), **hparams), start, steps) for lr in grid]
        batch = TrajectoryBatch(
            np.concatenate([r.positions for r in rows], axis=1),
            np.concatenate([r.losses for r in rows], axis=1),
            np.concatenate([r.stop for r in rows]),
        )
    final = np.where(batch.diverged, np.inf, batch.final_losses)
    reached = steps_to_tol(surface, batch)
    reached = np.where(reached < 0, steps + 1, reached)
    return int(np.lexsort((grid, reached, final))[0]), batch
