"""The core of `optbench surface` and of regress's surface suites: optimizers on surfaces as a
population of members (optimizer × lr × start point), written as CSVs and pictures.

    result = run_surface(get_surface("rosenbrock"), select_contenders(["adam", "sgd"], []), lrs=[1e-3, 1e-2])
    result.summary              # one row per member, best first

Knows nothing of the terminal: the CLI chooses, calls `run_surface` and `write_surface_result`,
and shows the summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from optbench import results
from optbench.errors import OptbenchError
from optbench.experiment import check_lr, learning_rates, lrs_run
from optbench.optimizers import Contender, defaults_of, table_lr
from optbench.spread import series_label
from optbench.surface_lrs import SURFACE_LRS
from optbench.surfaces import SURFACES, Surface, get_surface
from optbench.schedules import CONSTANT, Schedule
from optbench.trajectories import GAP_TOL, TUNE_GRID, SurfaceMember, TrajectoryBatch, distance_to_minimum, run_members, steps_to_tol, tune_lr

TRAJECTORY_COLUMNS = ["surface", "optimizer", "lr", "seed", "start_x", "start_y", "step", "x", "y", "loss"]
SUMMARY_COLUMNS = [
    "surface", "optimizer", "lr", "schedule", "seed", "start_x", "start_y", "steps", "final_x", "final_y", "final_loss", "gap",
    "dist_to_min", "steps_to_tol", "diverged", "status",
]


def select_surfaces(names: list[str]) -> list[Surface]:
    chosen: dict[str, Surface] = {}
    for name in names or ["bowl"]:
        for surface in SURFACES.values() if name == "all" else [get_surface(name)]:
            chosen.setdefault(surface.name, surface)
    return list(chosen.values())


def default_lr(surface: Surface, label: str, cls: type) -> float:
    """The surface's table entry for a built-in optimizer, else the class's own default lr."""
    return table_lr(SURFACE_LRS.get(surface.name, {}), label, cls)


def check_lrs(lrs: Sequence[float], tune: bool = False, contenders: Sequence[Contender] = ()) -> None:
    """Refuse a bad --lr, and --lr or --hp lr= with --tune, before anything runs."""
    for lr in lrs:
        check_lr(lr)
    if tune and lrs:
        raise OptbenchError("--tune chooses the lr itself: give --tune or --lr, not both")
    if tune and any("lr" in c.hparams for c in contenders):
        raise OptbenchError("--tune searches its grid of lrs on a surface: give --tune or --hp lr=, not both")


def check_tolerance_and_noise(tol: float, noise: float) -> None:
    if not (math.isfinite(tol) and tol > 0):
        raise OptbenchError(f"invalid --tol {tol} (must be a finite number > 0)")
    if not (math.isfinite(noise) and noise >= 0):
        raise OptbenchError(f"invalid --noise {noise} (must be a finite number >= 0)")


MAX_GRID = 100  # --starts grid:N: up to 100 x 100 start points


def parse_starts(text: str) -> int:
    """--starts grid:N -> N, the side of the grid of start points."""
    kind, _, n = text.partition(":")
    if kind != "grid" or not n.isdigit() or not 2 <= int(n) <= MAX_GRID:
        raise OptbenchError(f"invalid --starts {text!r} (grid:N, N from 2 to {MAX_GRID}: an N x N grid of start points)")
    return int(n)


def grid_starts(surface: Surface, n: int) -> list[tuple[float, float]]:
    """The centres of an n x n grid of cells over the surface's plotting domain, row by row from
    the bottom left: cell centres stay off the domain's edges, where some surfaces are steepest."""
    (xmin, xmax), (ymin, ymax) = surface.domain
    xs = xmin + (np.arange(n) + 0.5) * (xmax - xmin) / n
    ys = ymin + (np.arange(n) + 0.5) * (ymax - ymin) / n
    return [(float(x), float(y)) for y in ys for x in xs]


def surface_members(
    surface: Surface, contenders: list[Contender], lrs: Sequence[float] = (), start: tuple[float, float] | None = None,
    seeds: Sequence[int] = (0,), starts: Sequence[tuple[float, float]] | None = None,
) -> list[SurfaceMember]:
    """Every optimizer at each of its lrs (`learning_rates`: --hp lr, then every --lr, then the
    surface's table), from each start point (`starts`, else `start`, default the surface's) and
    each seed, optimizer by optimizer."""
    if starts is not None and start is not None:
        raise OptbenchError("give --start or --starts, not both")
    points = [tuple(p) for p in starts] if starts is not None else [tuple(start) if start is not None else surface.start]
    for point in points:
        with np.errstate(all="ignore"):
            start_loss = surface.value(np.asarray(point, dtype=np.float64))
        if not (np.all(np.isfinite(point)) and np.isfinite(start_loss)):
            raise OptbenchError(f"--start {point[0]:g} {point[1]:g}: {surface.name} is not finite there (loss {start_loss:g})")
    members = []
    for c in contenders:
        rest = {k: v for k, v in c.hparams.items() if k != "lr"}
        for lr in learning_rates(c.hparams, lrs, default_lr(surface, c.label, c.cls)):
            check_lr(lr, f"{c.label}: lr")
            members += [SurfaceMember(c.label, c.cls, rest, lr, point, seed) for point in points for seed in seeds]
    return members


@dataclass
class SurfaceResult:
    surface: Surface
    trajectories: pd.DataFrame
    summary: pd.DataFrame
    tuning: pd.DataFrame | None
    config: dict = field(default_factory=dict)  # what ran, for manifest.json
    failures: list[str] = field(default_factory=list)  # one line per user's rule that raised, for a warning


def run_surface(
    surface: Surface,
    contenders: list[Contender],
    *,
    steps: int | None = None,
    lrs: Sequence[float] = (),
    start: tuple[float, float] | None = None,
    tune: bool = False,
    schedule: Schedule = CONSTANT,
    tol: float = GAP_TOL,
    noise: float = 0.0,
    seeds: Sequence[int] = (0,),
    starts: Sequence[tuple[float, float]] | None = None,
    trajectories: bool = True,
) -> SurfaceResult:
    """Run every member (`surface_members`) on `surface` as one population, with gradient noise
    of std `noise` drawn per seed; with `tune`, each optimizer at the lr of TUNE_GRID with the
    lowest final loss on the first seed instead (`tune_lr`; from a grid of `starts`, the lowest
    median over them), then over every seed. `trajectories=False` keeps no trajectory rows (the
    summary is complete without them)."""
    check_lrs(lrs, tune, contenders)
    check_tolerance_and_noise(tol, noise)
    steps = steps or surface.steps
    members = surface_members(surface, contenders, lrs, start, seeds, starts)
    points = list(dict.fromkeys(m.start for m in members))
    tunings = []
    if tune:
        # Without --lr there is one lr per optimizer: it runs at its best grid lr instead, and
        # the whole grid goes to tuning.csv.
        chosen: dict[str, float] = {}
        for m in members:
            if m.optimizer not in chosen:
                best, grid_batch = tune_lr(surface, m.cls, m.hparams, points, steps, schedule=schedule, noise=noise,
                                           seed=m.seed, tol=tol)
                tunings.append(_tuning_frame(surface, m.optimizer, grid_batch, best, points))
                chosen[m.optimizer] = float(TUNE_GRID[best])
        members = [replace(m, lr=chosen[m.optimizer]) for m in members]
    batch = run_members(surface, members, steps, schedule, noise)
    failures = failure_lines(surface, members, batch)
    # Every step of every member as rows: for a large grid of starts, far more memory than the run.
    paths = [trajectory_frame(surface, m, batch.row(k)) for k, m in enumerate(members)] if trajectories else []
    return SurfaceResult(
        surface,
        pd.concat(paths, ignore_index=True) if paths else pd.DataFrame(columns=TRAJECTORY_COLUMNS),
        sort_summary(summary_frame(surface, members, batch, schedule, tol)),
        pd.concat(tunings, ignore_index=True) if tunings else None,
        {"surface": surface.name, "formula": surface.formula, "steps": steps, "starts": len(points),
         "start": list(points[0]) if len(points) == 1 else None, "lrs": list(lrs), "tune": tune,
         "schedule": schedule.label(), "tol": tol, "noise": noise, "seeds": list(seeds),
         "optimizers": {c.label: {**defaults_of(c.cls), **c.hparams, "lr": lrs_run(m.lr for m in members if m.optimizer == c.label)} for c in contenders},
         "steps_run": steps},
        failures,
    )


def failure_lines(surface: Surface, members: list[SurfaceMember], batch: TrajectoryBatch) -> list[str]:
    """One line per (optimizer, lr) whose rule raised, with the first failure's words and how
    many of its runs (seeds x starts) failed."""
    by_run: dict[tuple, list[str]] = {}
    for k, text in sorted(batch.failures.items()):
        by_run.setdefault((members[k].optimizer, members[k].lr), []).append(text)
    lines = []
    for (optimizer, lr), texts in by_run.items():
        runs = sum(1 for m in members if (m.optimizer, m.lr) == (optimizer, lr))
        where = f" (in {len(texts)} of its {runs} runs, seeds x starts)" if runs > 1 else ""
        lines.append(f"{optimizer} (lr {lr:g}) on {surface.name}: {texts[0]}{where}; stopped there and marked failed, "
                     "the others go on")
    return lines


AGGREGATE_COLUMNS = ["surface", "optimizer", "lr", "seeds", "final_loss_median", "final_loss_min", "final_loss_max",
                     "gap_median", "reached", "steps_to_tol_median", "diverged", "failed"]


def _failed(summary: pd.DataFrame) -> pd.Series:
    """Rows whose rule raised (folders written before `status` existed have none)."""
    return summary["status"] == "failed" if "status" in summary.columns else pd.Series(False, index=summary.index)


def _stopped(summary: pd.DataFrame) -> pd.Series:
    """Rows that did not run to the end: diverged, or their rule raised."""
    return summary["diverged"].astype(bool) | _failed(summary)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (optimizer, lr) over its seeds: the median and range of the final loss, the
    median gap, how many seeds reached the tolerance and their median steps to it, how many
    diverged or failed, best first."""
    rows = []
    if summary[["start_x", "start_y"]].drop_duplicates().shape[0] > 1:
        raise OptbenchError("aggregate is over seeds from one start; a grid of starts has `robustness`")
    for (optimizer, lr), group in summary.groupby(["optimizer", "lr"], sort=False):
        final = group["final_loss"].where(~_stopped(group))
        reached = pd.to_numeric(group["steps_to_tol"], errors="coerce")
        rows.append({
            "surface": group["surface"].iloc[0], "optimizer": optimizer, "lr": lr, "seeds": len(group),
            "final_loss_median": final.median(), "final_loss_min": final.min(), "final_loss_max": final.max(),
            "gap_median": group["gap"].where(~_stopped(group)).median(),
            "reached": int(reached.notna().sum()), "steps_to_tol_median": reached.median(),
            "diverged": int((group["diverged"].astype(bool) & ~_failed(group)).sum()),
            "failed": int(_failed(group).sum()),
        })
    frame = pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)
    order = frame.sort_values(["reached", "final_loss_median"], ascending=[False, True], kind="stable",
                              na_position="last").index
    return frame.loc[order].reset_index(drop=True)


ROBUSTNESS_COLUMNS = ["surface", "optimizer", "lr", "starts", "reached", "success_rate", "steps_to_tol_median",
                      "steps_to_tol_max", "diverged", "failed"]


def start_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (optimizer, lr, start): `steps` to the tolerance, the median over seeds with an
    unreached seed counting as never (NaN when more than half never reached it), and how many
    seeds diverged and how many failed (their rule raised)."""
    failed = _failed(summary)
    frame = summary.assign(_steps=pd.to_numeric(summary["steps_to_tol"], errors="coerce").astype(float).fillna(np.inf),
                           _diverged=summary["diverged"].astype(bool) & ~failed, _failed=failed)
    cells = frame.groupby(["optimizer", "lr", "start_x", "start_y"], sort=False).agg(
        steps=("_steps", "median"), diverged=("_diverged", "sum"), failed=("_failed", "sum")).reset_index()
    cells["steps"] = cells["steps"].replace(np.inf, np.nan)
    return cells


def robustness(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (optimizer, lr) over the start points: how many reached the tolerance
    (`start_cells`), the success rate, the median and worst steps of those that did and how many
    starts diverged or failed, most successful first."""
    cells = start_cells(summary)
    rows = []
    for (optimizer, lr), group in cells.groupby(["optimizer", "lr"], sort=False):
        reached = group["steps"].dropna()
        rows.append({
            "surface": summary["surface"].iloc[0], "optimizer": optimizer, "lr": lr, "starts": len(group),
            "reached": len(reached), "success_rate": len(reached) / len(group),
            "steps_to_tol_median": reached.median(), "steps_to_tol_max": reached.max(),
            "diverged": int((group["diverged"] > 0).sum()),
            "failed": int((group["failed"] > 0).sum()),
        })
    frame = pd.DataFrame(rows, columns=ROBUSTNESS_COLUMNS)
    order = frame.sort_values(["reached", "steps_to_tol_median"], ascending=[False, True], kind="stable",
                              na_position="last").index
    return frame.loc[order].reset_index(drop=True)


def sort_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Best first: finished before diverged before failed, then lowest final loss, then fewest steps."""
    key = summary.assign(
        _reach=summary["steps_to_tol"].astype("Float64").fillna(np.inf),
        _stopped=summary["diverged"].astype(int) + 2 * _failed(summary),
    )
    order = key.sort_values(["_stopped", "final_loss", "_reach"], kind="stable").index
    return summary.loc[order].reset_index(drop=True)


def trajectory_frame(surface: Surface, member: SurfaceMember, batch) -> pd.DataFrame:
    n = int(batch.stop[0])
    return pd.DataFrame(
        {
            "surface": surface.name,
            "optimizer": member.optimizer,
            "lr": member.lr,
            "seed": member.seed,
            "start_x": member.start[0],
            "start_y": member.start[1],
            "step": np.arange(n),
            "x": batch.positions[:n, 0, 0],
            "y": batch.positions[:n, 0, 1],
            "loss": batch.losses[:n, 0],
        },
        columns=TRAJECTORY_COLUMNS,
    )


def summary_frame(surface: Surface, members: list[SurfaceMember], batch, schedule: Schedule = CONSTANT,
                   tol: float = GAP_TOL) -> pd.DataFrame:
    """One row per member (row of `batch`)."""
    final = batch.final_positions
    final_loss = batch.final_losses
    reached = steps_to_tol(surface, batch, tol)
    return pd.DataFrame(
        {
            "surface": surface.name,
            "optimizer": [m.optimizer for m in members],
            "lr": [m.lr for m in members],
            "schedule": schedule.label(),
            "seed": [m.seed for m in members],
            "start_x": [m.start[0] for m in members],
            "start_y": [m.start[1] for m in members],
            "steps": batch.final_index,
            "final_x": final[:, 0],
            "final_y": final[:, 1],
            "final_loss": final_loss,
            "gap": final_loss - surface.min_value if surface.bounded else np.nan,
            "dist_to_min": distance_to_minimum(surface, final),
            "steps_to_tol": pd.array(np.where(reached >= 0, reached, None), dtype="Int64"),
            "diverged": batch.diverged,
            "status": batch.status,
        },
        columns=SUMMARY_COLUMNS,
    )


def _tuning_frame(surface: Surface, label: str, batch, best: int, points: list[tuple[float, float]]) -> pd.DataFrame:
    """One row per lr of the grid and start point (lr-major, as `tune_lr` ran them)."""
    starts = np.asarray(points, dtype=np.float64)
    return pd.DataFrame(
        {
            "surface": surface.name,
            "optimizer": label,
            "lr": np.repeat(TUNE_GRID, len(points)),
            "start_x": np.tile(starts[:, 0], TUNE_GRID.size),
            "start_y": np.tile(starts[:, 1], TUNE_GRID.size),
            "final_loss": batch.final_losses,
            "diverged": batch.diverged,
            "chosen": np.repeat(np.arange(TUNE_GRID.size) == best, len(points)),
        }
    )


def several_starts(summary: pd.DataFrame) -> bool:
    return summary[["start_x", "start_y"]].drop_duplicates().shape[0] > 1


def write_surface_result(result: SurfaceResult, out: Path, *, plot: bool = True, animate: bool = False,
                         trajectories: bool = True) -> list[Path]:
    """Write CSVs (and pictures) under `out/surface/<name>/`; return the paths written.

    From a grid of starts, robustness.csv and robustness.png (one map per optimizer) take the
    place of aggregate.csv and the trajectory pictures; `trajectories=False` leaves out
    trajectories.csv, every step of every member, which a large grid makes large.
    """
    folder = results.prepare_dir(Path(out) / "surface" / result.surface.name)
    results.clear_temporaries(folder)
    try:
        return _write_files(result, folder, plot, animate, trajectories)
    except KeyboardInterrupt:  # each file is whole; the manifest says the set is not
        results.write_json(manifest(result, "interrupted"), folder / "manifest.json")
        raise


def _write_files(result: SurfaceResult, folder: Path, plot: bool, animate: bool, trajectories: bool) -> list[Path]:
    grid = several_starts(result.summary)
    written = [results.write_csv(result.trajectories, folder / "trajectories.csv")] if trajectories and len(result.trajectories) else []
    written.append(results.write_csv(result.summary, folder / "summary.csv"))
    if grid:
        written.append(results.write_csv(robustness(result.summary), folder / "robustness.csv"))
    elif result.summary["seed"].nunique() > 1:
        written.append(results.write_csv(aggregate(result.summary), folder / "aggregate.csv"))
    if result.tuning is not None:
        written.append(results.write_csv(result.tuning, folder / "tuning.csv"))
    if plot or animate:
        from optbench import plots  # matplotlib only when pictures are asked for

        note = _figure_note(result, grid)
        if grid and plot:
            written.append(plots.save_robustness(result.surface, _labelled(start_cells(result.summary)),
                                                 folder / "robustness.png", note))
        elif not grid:
            paths, summary = _one_path_per_label(result)
            if plot:
                written.append(plots.save_trajectories(result.surface, paths, summary, folder / "trajectories.png", note))
            if animate:
                written.append(plots.save_animation(result.surface, paths, summary, folder / "trajectories.gif", note))
        if plot and result.tuning is not None:
            bounded = result.surface.bounded
            tuning = result.tuning.assign(gap=result.tuning["final_loss"] - result.surface.min_value) if bounded else result.tuning
            starts = result.tuning[["start_x", "start_y"]].drop_duplicates().to_numpy(dtype=np.float64)
            start_gap = float(np.max(result.surface.value(starts) - result.surface.min_value)) if bounded else None
            written.append(plots.save_lr_sensitivity(
                tuning, "gap" if bounded else "final_loss", folder / "lr_sensitivity.png", log_y=bounded,
                ylabel="final gap (loss - minimum)" if bounded else "final loss",
                y_max=plots.LOSS_HEADROOM * start_gap if start_gap and start_gap > 0 else None))
    written.append(results.write_json(manifest(result), folder / "manifest.json"))  # last, as on MNIST
    return written


def _figure_note(result: SurfaceResult, grid: bool) -> str:
    """What a figure's title says beyond the surface and steps: the schedule, the gradient
    noise, and with several seeds which one a path picture draws (a map takes their median)."""
    config, seeds = result.config, sorted(result.summary["seed"].unique())
    parts = [f"lr schedule {config['schedule']}"] if config.get("schedule", "constant") != "constant" else []
    if config.get("noise"):
        parts.append(f"gradient noise σ = {config['noise']:g}")
    if len(seeds) > 1:
        parts.append(f"median over {len(seeds)} seeds" if grid else f"seed {seeds[0]} of {len(seeds)}")
    return ", ".join(parts)


def manifest(result: SurfaceResult, status: str = "finished") -> dict:
    """What ran and where, as an MNIST run folder's manifest.json has it."""
    import sys

    from optbench import __version__
    from optbench.backend import cpu_facts
    from optbench.experiment import git_commit

    return {"optbench": __version__, "command": sys.argv, "status": status,
            "written": datetime.now().isoformat(timespec="seconds"), "config": result.config,
            "device": cpu_facts(), "git_commit": git_commit()}


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """`optimizer` relabelled 'adam lr=0.01' where an optimizer ran at several lrs."""
    if not (frame.groupby("optimizer")["lr"].nunique() > 1).any():
        return frame
    labels = [series_label(o, lr, "cpu", several_lrs=True, several_devices=False) for o, lr in zip(frame["optimizer"], frame["lr"])]
    return frame.assign(optimizer=labels)


def _one_path_per_label(result: SurfaceResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames to draw: the plots draw one path per optimizer label, so where an optimizer
    ran at several lrs each (optimizer, lr) gets a label of its own ('adam lr=0.01'). With several
    seeds, the first seed's paths (one picture of many paths per optimizer would show nothing)."""
    first = result.summary["seed"].min()
    trajectories = result.trajectories[result.trajectories["seed"] == first]
    summary = result.summary[result.summary["seed"] == first]
    return _labelled(trajectories), _labelled(summary)
