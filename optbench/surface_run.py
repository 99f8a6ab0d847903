"""The core of `optbench surface`: run optimizers on surfaces and write CSVs and pictures.

Knows nothing of the terminal: the CLI chooses, calls `run_surface` and `write_surface_result`,
and shows the summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optbench import results
from optbench.errors import OptbenchError
from optbench.optimizers import OPTIMIZERS, Contender, defaults_of, instantiate
from optbench.surface_lrs import SURFACE_LRS
from optbench.surfaces import SURFACES, Surface, get_surface
from optbench.trajectories import TUNE_GRID, distance_to_minimum, run, steps_to_tol, tune_lr

TRAJECTORY_COLUMNS = ["surface", "optimizer", "lr", "step", "x", "y", "loss"]
SUMMARY_COLUMNS = [
    "surface", "optimizer", "lr", "steps", "final_x", "final_y", "final_loss", "gap",
    "dist_to_min", "steps_to_tol", "diverged",
]


def select_surfaces(names: list[str]) -> list[Surface]:
    chosen: dict[str, Surface] = {}
    for name in names or ["bowl"]:
        for surface in SURFACES.values() if name == "all" else [get_surface(name)]:
            chosen.setdefault(surface.name, surface)
    return list(chosen.values())


def default_lr(surface: Surface, contender: Contender) -> float:
    """The surface's table entry for a built-in optimizer, else the class's own default lr."""
    table = SURFACE_LRS.get(surface.name, {})
    if contender.cls is OPTIMIZERS.get(contender.label) and contender.label in table:
        return table[contender.label]
    return float(defaults_of(contender.cls).get("lr", 1e-3))


@dataclass
class SurfaceResult:
    surface: Surface
    trajectories: pd.DataFrame
    summary: pd.DataFrame
    tuning: pd.DataFrame | None


def run_surface(
    surface: Surface,
    contenders: list[Contender],
    *,
    steps: int | None = None,
    lr: float | None = None,
    start: tuple[float, float] | None = None,
    tune: bool = False,
) -> SurfaceResult:
    """Run every contender on `surface`; lr precedence: --tune, then --hp lr, --lr, the table."""
    steps = steps or surface.steps
    start = tuple(start) if start is not None else surface.start
    with np.errstate(all="ignore"):
        start_loss = surface.value(np.asarray(start))
    if not (np.all(np.isfinite(start)) and np.isfinite(start_loss)):
        raise OptbenchError(f"--start {start[0]:g} {start[1]:g}: {surface.name} is not finite there (loss {start_loss:g})")
    trajectories, summaries, tunings = [], [], []
    for contender in contenders:
        hparams = {k: v for k, v in contender.hparams.items() if k != "lr"}
        if tune:
            best, grid_batch = tune_lr(surface, contender.cls, hparams, start, steps)
            chosen_lr, batch = float(TUNE_GRID[best]), grid_batch.row(best)
            tunings.append(_tuning_frame(surface, contender.label, grid_batch, best))
        else:
            chosen_lr = contender.hparams.get("lr", lr if lr is not None else default_lr(surface, contender))
            batch = run(surface, instantiate(contender.cls, lr=chosen_lr, **hparams), [start], steps)
        trajectories.append(_trajectory_frame(surface, contender.label, chosen_lr, batch))
        summaries.append(_summary_frame(surface, contender.label, chosen_lr, batch))
    summary = pd.concat(summaries, ignore_index=True)
    summary = sort_summary(summary)
    return SurfaceResult(
        surface,
        pd.concat(trajectories, ignore_index=True),
        summary,
        pd.concat(tunings, ignore_index=True) if tunings else None,
    )


def sort_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Best first: converged before diverged, then lowest final loss, then fewest steps."""
    key = summary.assign(
        _reach=summary["steps_to_tol"].astype("Float64").fillna(np.inf),
    )
    order = key.sort_values(["diverged", "final_loss", "_reach"], kind="stable").index
    return summary.loc[order].reset_index(drop=True)


def _trajectory_frame(surface: Surface, label: str, lr: float, batch) -> pd.DataFrame:
    n = int(batch.stop[0])
    return pd.DataFrame(
        {
            "surface": surface.name,
            "optimizer": label,
            "lr": lr,
            "step": np.arange(n),
            "x": batch.positions[:n, 0, 0],
            "y": batch.positions[:n, 0, 1],
            "loss": batch.losses[:n, 0],
        },
        columns=TRAJECTORY_COLUMNS,
    )


def _summary_frame(surface: Surface, label: str, lr: float, batch) -> pd.DataFrame:
    final = batch.final_positions
    final_loss = batch.final_losses
    reached = steps_to_tol(surface, batch)
    return pd.DataFrame(
        {
            "surface": surface.name,
            "optimizer": label,
            "lr": lr,
            "steps": batch.final_index,
            "final_x": final[:, 0],
            "final_y": final[:, 1],
            "final_loss": final_loss,
            "gap": final_loss - surface.min_value if surface.bounded else np.nan,
            "dist_to_min": distance_to_minimum(surface, final),
            "steps_to_tol": pd.array(np.where(reached >= 0, reached, None), dtype="Int64"),
            "diverged": batch.diverged,
        },
        columns=SUMMARY_COLUMNS,
    )


def _tuning_frame(surface: Surface, label: str, batch, best: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "surface": surface.name,
            "optimizer": label,
            "lr": TUNE_GRID,
            "final_loss": batch.final_losses,
            "diverged": batch.diverged,
            "chosen": np.arange(TUNE_GRID.size) == best,
        }
    )


def write_surface_result(result: SurfaceResult, out: Path, *, plot: bool = True, animate: bool = False) -> list[Path]:
    """Write CSVs (and pictures) under `out/surface/<name>/`; return the paths written."""
    folder = results.prepare_dir(Path(out) / "surface" / result.surface.name)
    written = [
        results.write_csv(result.trajectories, folder / "trajectories.csv"),
        results.write_csv(result.summary, folder / "summary.csv"),
    ]
    if result.tuning is not None:
        written.append(results.write_csv(result.tuning, folder / "tuning.csv"))
    if plot or animate:
        from optbench import plots  # matplotlib only when pictures are asked for

        if plot:
            written.append(plots.save_trajectories(result.surface, result.trajectories, result.summary, folder / "trajectories.png"))
        if animate:
            written.append(plots.save_animation(result.surface, result.trajectories, result.summary, folder / "trajectories.gif"))
    return written
