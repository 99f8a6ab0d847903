"""Choose the default learning rate of every optimizer on every surface; writes optbench/surface_lrs.py.

    python benchmarks/choose_surface_lrs.py

The rule, per surface and optimizer, over the log grid of `optbench surface --tune`
(1e-5 .. 1e2, five per decade), each run for the surface's default number of steps from its
default start:
- only runs that never diverge and never leave the plotting domain count, so that the
  picture shows the whole path;
- on a surface with a minimum, take the lr with the lowest mean of log10(loss - minimum + 1e-12)
  over the run (it rewards getting close early and staying there, where the lowest final loss
  alone picks lrs at the edge of stability that zig-zag across the picture), then step two grid
  notches down (x 0.4) when that lr is usable too, for a readable path;
- on an unbounded surface (the saddles), the lr with the lowest final loss wins: the one that
  escapes the saddle furthest while staying in view.
"""

from __future__ import annotations

import pathlib

import numpy as np

from optbench.optimizers import OPTIMIZERS
from optbench.surfaces import SURFACES
from optbench.trajectories import TUNE_GRID, tune_lr

SAFETY_NOTCHES = 2
OUT = pathlib.Path(__file__).resolve().parents[1] / "optbench" / "surface_lrs.py"


def choose(surface, cls) -> float:
    _, batch = tune_lr(surface, cls, {}, surface.start, surface.steps)
    (xmin, xmax), (ymin, ymax) = surface.domain
    x, y = batch.positions[..., 0], batch.positions[..., 1]
    with np.errstate(invalid="ignore"):
        outside = (x < xmin) | (x > xmax) | (y < ymin) | (y > ymax)
    usable = ~batch.diverged & ~outside.any(axis=0)
    if surface.bounded:
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.log10(np.maximum(batch.losses - surface.min_value, 0) + 1e-12).mean(axis=0)
    else:
        score = batch.final_losses.copy()
    score[~usable] = np.inf
    best = int(np.argmin(score))
    if not surface.bounded:
        return float(TUNE_GRID[best])
    # Two grid notches (x 0.4) below the best usable lr, if still usable: the best sits near
    # the edge of stability and zig-zags; a step back keeps the character with a readable path.
    safer = best - SAFETY_NOTCHES
    return float(TUNE_GRID[safer if safer >= 0 and usable[safer] else best])


def main() -> None:
    table = {s.name: {name: choose(s, cls) for name, cls in OPTIMIZERS.items() if not cls.needs_matrices}
             for s in SURFACES.values()}
    lines = [
        '"""Default learning rates per surface and optimizer, written by benchmarks/choose_surface_lrs.py.',
        "",
        "That script's docstring gives the rule; rerun it after changing a surface or an optimizer.",
        '"""',
        "",
        "SURFACE_LRS: dict[str, dict[str, float]] = {",
    ]
    for surface, lrs in table.items():
        lines.append(f"    {surface!r}: {{")
        lines.extend(f"        {name!r}: {lr:.3g}," for name, lr in lrs.items())
        lines.append("    },")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n")
    for surface, lrs in table.items():
        print(surface, " ".join(f"{k}={v:.3g}" for k, v in lrs.items()))


if __name__ == "__main__":
    main()
