"""Learning-rate schedules: the factor of the peak lr at each step of a run.

A schedule is a linear warmup from peak / W to the peak over the first W steps, then one of

- `constant`: the peak to the end;
- `cosine`: a half cosine from the peak down to `min_lr_ratio` x peak at the last step;
- `linear`: a straight line from the peak down to `min_lr_ratio` x peak at the last step;
- `wsd` (warmup-stable-decay): the peak until the last D = `decay_fraction` x T steps (at least
  one), then a straight line down to `min_lr_ratio` x peak at the last step.

Every decaying schedule ends at `min_lr_ratio` x peak, even when its decay is a single step (where
PyTorch's composition below divides by zero), except a run of one step, which takes it at the
peak. A warmup given as a fraction rounds to the nearest whole step, halves up.

The factors are those of PyTorch's compositions, step for step (a test checks each): the warmup
is `LinearLR(start_factor=1/W, total_iters=W - 1)` and the rest `CosineAnnealingLR(T_max=T - W - 1,
eta_min=min_lr_ratio * lr)`, `LinearLR(1, min_lr_ratio, total_iters=T - W - 1)` or `ConstantLR(1)`,
chained by `SequentialLR(milestones=[W])`; wsd chains a `ConstantLR` and
`LinearLR(1, min_lr_ratio, total_iters=D - 1)` with milestones [W, T - D]. Step t (1-based) is the
t-th update: the lr PyTorch's scheduler holds after t - 1 calls of `scheduler.step()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optbench.errors import OptbenchError

KINDS = ("constant", "cosine", "linear", "wsd")


@dataclass(frozen=True)
class Schedule:
    """`kind` with `warmup` steps (a number of steps, or below 1 a fraction of the run)."""

    kind: str = "constant"
    warmup: float = 0.0
    min_lr_ratio: float = 0.0
    decay_fraction: float = 0.2  # wsd: the share of the run spent decaying

    def check(self, total_steps: int | None = None) -> None:
        if self.kind not in KINDS:
            raise OptbenchError(f"unknown schedule {self.kind!r} (choose from {', '.join(KINDS)})")
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise OptbenchError(f"invalid --warmup {self.warmup} (a number of steps, or a fraction of the run below 1)")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise OptbenchError(f"invalid --warmup {self.warmup}: a number of steps is whole; a fraction is below 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise OptbenchError(f"invalid --min-lr-ratio {self.min_lr_ratio} (must be in [0, 1])")
        if not 0 < self.decay_fraction <= 1:
            raise OptbenchError(f"invalid --decay-fraction {self.decay_fraction} (must be in (0, 1])")
        if total_steps is not None:
            warmup = self.warmup_steps(total_steps)
            if warmup >= total_steps and warmup > 0:
                raise OptbenchError(f"--warmup of {warmup} steps is not shorter than the run ({total_steps} steps)")
            if self.kind == "wsd" and warmup > total_steps - self.decay_steps(total_steps):
                raise OptbenchError(
                    f"--warmup of {warmup} steps runs into the decay (the last {self.decay_steps(total_steps)} steps)"
                )

    def warmup_steps(self, total_steps: int) -> int:
        # A fraction rounds to the nearest step, halves up (Python's round would take 2.5 to 2).
        return math.floor(self.warmup * total_steps + 0.5) if self.warmup < 1 else int(self.warmup)

    def decay_steps(self, total_steps: int) -> int:
        # Rounded as the warmup is, halves up (2.5 steps are 3).
        return max(1, math.floor(self.decay_fraction * total_steps + 0.5))

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and self.warmup == 0

    def factors(self, total_steps: int) -> np.ndarray:
        """The factor of the peak lr at steps 1 .. total_steps, float64."""
        self.check(total_steps)
        t = np.arange(1, total_steps + 1, dtype=np.float64)
        w = self.warmup_steps(total_steps)
        m = self.min_lr_ratio
        out = np.ones(total_steps)
        if w > 0:
            out[:w] = t[:w] / w
        after = t[w:] - 1 - w  # steps since the warmup ended, 0 at its first step
        span = total_steps - w - 1  # reached at the last step
        decay = span if self.kind in ("cosine", "linear") else self.decay_steps(total_steps) - 1
        if self.kind == "cosine" and span > 0:
            out[w:] = m + (1 - m) * (1 + np.cos(np.pi * after / span)) / 2
        elif self.kind == "linear" and span > 0:
            out[w:] = 1 + (m - 1) * after / span
        elif self.kind == "wsd" and decay > 0:
            into_decay = t[total_steps - decay - 1:] - (total_steps - decay - 1) - 1
            out[total_steps - decay - 1:] = 1 + (m - 1) * into_decay / decay
        if self.kind != "constant" and decay == 0 and total_steps > max(w, 1):
            # A decay of one step (PyTorch's composition divides by zero there) is that last step,
            # at the minimum; unless it is also the run's first step at the peak (a run of one).
            out[-1] = m
        return out

    def label(self) -> str:
        """One cell of a table: "constant", or e.g. "cosine, warmup 0.1, min 0"."""
        if self.is_constant:
            return "constant"
        parts = [self.kind]
        if self.warmup:
            parts.append(f"warmup {self.warmup:g}")
        if self.kind != "constant":
            parts.append(f"min {self.min_lr_ratio:g}")
        if self.kind == "wsd":
            parts.append(f"decay {self.decay_fraction:g}")
        return ", ".join(parts)


CONSTANT = Schedule()


class ScheduledLRs:
    """Sets each optimizer's `lr` to its peak (its lr when this is made) times the schedule's
    factor, step by step: `at(t)` before the t-th update. A constant schedule touches nothing."""

    def __init__(self, optimizers, schedule: Schedule, total_steps: int):
        self.optimizers = list(optimizers)
        self.factors = None if schedule.is_constant else schedule.factors(total_steps)
        if self.factors is not None:
            for opt in self.optimizers:
                if not hasattr(opt, "lr"):
                    raise OptbenchError(f"{type(opt).__name__} has no lr attribute: a schedule cannot set its lr")
        self.peaks = [getattr(opt, "lr", None) for opt in self.optimizers]

    def at(self, step: int) -> None:
        if self.factors is None:
            return
        # A Python float: a NumPy float64 scalar would turn a float32 update into float64.
        factor = float(self.factors[min(max(step, 1), len(self.factors)) - 1])
        for opt, peak in zip(self.optimizers, self.peaks):
            opt.lr = peak * factor

    def restore(self) -> None:
        """Every lr back to its peak."""
        for opt, peak in zip(self.optimizers, self.peaks):
            if peak is not None:
                opt.lr = peak
