"""Performance profiles (Dolan & Moré 2002) and AlgoPerf's integrated score, over a set of problems.

A problem's cost for an optimizer is what it took to reach the problem's target: steps (or
seconds), NaN or inf when it never did. Its performance ratio is that cost over the best
optimizer's on the problem; the profile rho_s(tau) is the fraction of problems optimizer s solves
within tau times the best. A problem nobody solves counts as unsolved for everyone (it lowers
every profile alike). The integrated score is the area under rho_s on [1, r_max], divided by
r_max - 1: 1 for an optimizer that is best everywhere, 0 for one that never gets within r_max
(AlgoPerf's benchmark score, r_max = 4).

    costs = pd.DataFrame({"adam": [100, 50], "sgd": [200, np.nan]}, index=["bowl", "mnist"])
    ratios = performance_ratios(costs)   # adam 1, 1; sgd 2, inf
    integrated_scores(ratios)            # adam 1.0; sgd (4 - 2) / 3 / 2 = 1/3

Pure pandas and NumPy; `read_costs` turns run folders (`optbench surface` and `optbench mnist`
outputs) into such a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from optbench import results
from optbench.errors import OptbenchError

R_MAX = 4.0


def performance_ratios(costs: pd.DataFrame) -> pd.DataFrame:
    """Cost over the problem's best cost, per problem (row) and optimizer (column); inf unsolved."""
    values = costs.astype(float).where(np.isfinite(costs.astype(float)) & (costs.astype(float) > 0))
    best = values.min(axis=1)
    ratios = values.div(best, axis=0)
    return ratios.fillna(np.inf)


def profile(ratios: pd.DataFrame, taus) -> pd.DataFrame:
    """rho_s(tau): the fraction of problems each optimizer solves within tau x the best, per tau."""
    taus = np.asarray(taus, dtype=float)
    within = ratios.to_numpy(dtype=float)[None, :, :] <= taus[:, None, None]  # (tau, problem, optimizer)
    return pd.DataFrame(within.mean(axis=1), index=pd.Index(taus, name="tau"), columns=ratios.columns)


def integrated_scores(ratios: pd.DataFrame, r_max: float = R_MAX) -> pd.Series:
    """The area under each profile on [1, r_max] over r_max - 1, computed exactly (rho is a step
    function: a problem solved at ratio r counts from tau = r on)."""
    if r_max <= 1:
        raise OptbenchError(f"invalid --r-max {r_max} (must be > 1)")
    counted = (r_max - ratios.clip(lower=1.0)).clip(lower=0.0) / (r_max - 1)
    counted = counted.where(np.isfinite(ratios), 0.0)
    return counted.mean(axis=0).rename("score").sort_values(ascending=False, kind="stable")


def read_costs(folders: list[Path], cost: str = "steps") -> pd.DataFrame:
    """Costs per problem and optimizer from run folders, each optimizer at its best lr there.

    A surface folder (`results/surface/<name>`) is one problem per start point (one, or each of
    a `--starts grid:N`): the median over seeds of the steps to a gap below the tolerance
    (`steps_to_tol`; no seconds there). A start already within the tolerance is no problem, and
    left out. A MNIST run folder is one problem per data set:
    the median over seeds of the steps (or seconds) to the target accuracy. inf: it ran and never
    reached the target; NaN: it did not run on that problem. A surface without a minimum (a
    saddle) has no target: it is left out and named in `attrs["no_target"]`. A folder whose
    manifest says it did not finish (interrupted) counts with what it had, named in
    `attrs["unfinished"]`.
    """
    if cost not in ("steps", "seconds"):
        raise OptbenchError(f"invalid --cost {cost!r} (steps or seconds)")
    columns: dict[str, dict[str, float]] = {}
    no_target: list[str] = []  # surfaces without a minimum (the saddles): no target to reach
    unfinished = [str(f) for f in map(Path, folders) if _status(f) not in ("finished", None)]
    from optbench import sweep

    for folder in map(Path, folders):
        if sweep.is_store(folder):
            for problem, best in _sweep_problems(sweep.labelled(sweep.current_cells(sweep.Store(folder))[0]), cost):
                _add(columns, problem, best, no_target)
            continue
        path = folder / "summary.csv"
        if not path.exists():
            raise OptbenchError(f"{folder} is not an optbench run folder (no summary.csv)")
        summary = results.read_csv(path)
        needed = (["optimizer", "lr", "steps_to_tol", "diverged"] if "surface" in summary.columns else
                  ["optimizer", "lr", "steps_to_target" if cost == "steps" else "seconds_to_target"]
                  if "steps_to_target" in summary.columns else [])
        missing = [c for c in needed if c not in summary.columns]
        if missing:
            raise OptbenchError(f"{path}: missing columns {', '.join(missing)} (not a whole optbench summary)")
        if "surface" in summary.columns:
            if cost == "seconds":
                raise OptbenchError(f"{folder}: surface runs record steps, not seconds (use --cost steps)")
            for problem, best in _surface_problems(folder, summary):
                _add(columns, problem, best, no_target)
            continue
        elif "steps_to_target" in summary.columns:
            dataset = _dataset(folder)
            column = "steps_to_target" if cost == "steps" else "seconds_to_target"
            medians = summary.groupby(["optimizer", "lr"])[column].median()
            best = medians.groupby(level="optimizer").min()
            problem = f"{dataset} ({folder.name})"
        else:
            raise OptbenchError(f"{path}: no steps_to_tol or steps_to_target column (a run older than profiles)")
        _add(columns, problem, best, no_target)
    table = pd.DataFrame(columns).T  # NaN: not run on that problem
    table.index.name = "problem"
    table.attrs["no_target"] = list(dict.fromkeys(no_target))  # a sweep names each start's problem alike
    table.attrs["unfinished"] = unfinished
    return table


def _add(columns: dict, problem: str, best: pd.Series | None, no_target: list[str]) -> None:
    """`best` None: a problem without a target, named in `no_target` and left out."""
    if best is None:
        no_target.append(problem)
        return
    if problem in columns:
        raise OptbenchError(f"two folders are the same problem {problem!r}")
    columns[problem] = best.fillna(np.inf).to_dict()  # ran and never reached it: inf


def _surface_problems(folder: Path, summary: pd.DataFrame):
    """A surface folder's problems: one per start point (one, or a grid from --starts), each
    optimizer's cost the median over seeds of its steps to the tolerance (`start_cells`) at its
    best lr."""
    from optbench.surface_run import start_cells

    if not len(summary):
        return
    if "start_x" not in summary.columns:
        summary = summary.assign(start_x=np.nan, start_y=np.nan)  # a run older than grids: one start
    name = summary["surface"].iloc[0]
    if not _bounded(name):
        yield f"{name} ({folder.name})", None
        return
    cells = start_cells(summary.fillna({"start_x": 0.0, "start_y": 0.0}))
    points = cells[["start_x", "start_y"]].drop_duplicates()
    for x, y in points.itertuples(index=False):
        here = cells[(cells["start_x"] == x) & (cells["start_y"] == y)]
        problem = f"{name} ({folder.name})" if len(points) == 1 else f"{name} from ({x:.4g}, {y:.4g})"
        best = here.groupby("optimizer", sort=False)["steps"].min()
        if (best == 0).all():  # the start is already within the tolerance (a grid's centre on the bowl): no problem
            continue
        yield problem, best


def _sweep_problems(cells: pd.DataFrame, cost: str):
    """A sweep store's problems (`labelled` cells of its current sweep): each surface problem
    from each start, each MNIST problem; an optimizer's cost is the median over seeds of its steps (or seconds) to the target at its best
    lr and schedule. A start already within the tolerance is no problem."""
    if not len(cells):
        return
    surface = cells[cells["kind"] == "surface"]
    mnist = cells[cells["kind"] == "mnist"]
    if cost == "seconds" and len(surface):
        raise OptbenchError("surface cells record steps, not seconds (use --cost steps)")
    if len(surface):
        steps = pd.to_numeric(surface["steps_to_tol"], errors="coerce").astype(float).fillna(np.inf)
        frame = surface.assign(_cost=steps)
        keys = ["problem_id", "problem", "start_x", "start_y"]
        for (_, name, x, y), group in frame.groupby(keys, sort=False):
            if not _bounded(name.split(" (")[0]):  # a sweep names a surface problem "<surface> (<steps>...)"
                yield name, None
                continue
            best = _best_over_settings(group)
            if (best == 0).all():
                continue
            yield f"{name} from ({x:.4g}, {y:.4g})", best
    if len(mnist):
        column = "steps_to_target" if cost == "steps" else "seconds_to_target"
        frame = mnist.assign(_cost=pd.to_numeric(mnist[column], errors="coerce").astype(float).fillna(np.inf))
        for (_, name), group in frame.groupby(["problem_id", "problem"], sort=False):
            yield name, _chosen_by_validation(group) if group["final_val_acc"].notna().any() else _best_over_settings(group)


def _bounded(surface: str) -> bool:
    """Whether the surface has a minimum, so a target: a saddle has none."""
    from optbench.surfaces import SURFACES

    return surface not in SURFACES or SURFACES[surface].bounded


def _chosen_by_validation(group: pd.DataFrame) -> pd.Series:
    """With a validation split, each optimizer's lr and schedule are chosen by the median final
    validation accuracy over seeds (never by the test set), and its cost is taken there."""
    settings = group.groupby(["optimizer", "lr", "schedule"], sort=False).agg(
        val=("final_val_acc", "median"), cost=("_cost", "median")).reset_index()
    best = settings.sort_values(["optimizer", "val"], ascending=[True, False], kind="stable").groupby(
        "optimizer", sort=False).head(1)
    return best.set_index("optimizer")["cost"].replace(np.inf, np.nan)


def _best_over_settings(group: pd.DataFrame) -> pd.Series:
    medians = group.groupby(["optimizer", "lr", "schedule"], sort=False)["_cost"].median()
    return medians.groupby(level="optimizer", sort=False).min().replace(np.inf, np.nan)


@dataclass
class Profile:
    """A performance profile over a set of problems, ready to show or write."""

    costs: pd.DataFrame  # problem x optimizer: steps (or seconds) to the target, inf never
    ratios: pd.DataFrame  # cost over the problem's best
    scores: pd.Series  # integrated on [1, r_max], best first
    curves: pd.DataFrame  # rho(tau) per optimizer, tau from 1 to r_max
    cost: str
    r_max: float
    left_out: list[str] = field(default_factory=list)  # optimizers not run on every problem
    no_target: list[str] = field(default_factory=list)  # problems without a minimum (saddles)
    unfinished: list[str] = field(default_factory=list)  # interrupted folders, counted with what they reached


def build(folders: list[Path], cost: str = "steps", r_max: float = R_MAX) -> Profile:
    """The profile of run folders (and sweep stores): their costs (`read_costs`), the
    optimizers that ran on every problem, ratios, scores and curves; an OptbenchError when no
    problem has a target or no optimizer ran on all of them."""
    table = read_costs(folders, cost)
    costs, left_out = on_every_problem(table)
    no_target = table.attrs.get("no_target", [])
    if not len(costs):
        raise OptbenchError("none of these folders holds a problem with a target (they are empty, or surfaces "
                            "without a minimum" + (f": {', '.join(no_target)}" if no_target else "") + ")")
    if costs.shape[1] == 0:
        raise OptbenchError("no optimizer ran on every one of these problems")
    ratios = performance_ratios(costs)
    scores = integrated_scores(ratios, r_max)
    curves = profile(ratios, np.linspace(1.0, r_max, 301))
    curves.attrs["problems"] = len(costs)
    return Profile(costs, ratios, scores, curves, cost, r_max, left_out, no_target, table.attrs.get("unfinished", []))


def write(result: Profile, folder: Path) -> list[Path]:
    """costs.csv, ratios.csv, scores.csv and profile.png in `folder`."""
    from optbench import plots

    folder = results.prepare_dir(folder)
    return [
        results.write_csv(result.costs.reset_index(), folder / "costs.csv"),
        results.write_csv(result.ratios.reset_index(), folder / "ratios.csv"),
        results.write_csv(result.scores.rename_axis("optimizer").reset_index(), folder / "scores.csv"),
        plots.save_profile(result.curves, result.scores, folder / "profile.png", result.cost),
    ]


def on_every_problem(costs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The optimizers that ran on every problem (a profile compares them on the same set), and
    the names of those left out."""
    complete = costs.notna().all(axis=0)
    return costs.loc[:, complete], [str(name) for name in costs.columns[~complete]]


def _status(folder: Path) -> str | None:
    """The manifest's status ("finished", "interrupted", ...), None without one (older runs)."""
    return results.read_manifest(folder).get("status")


def _dataset(folder: Path) -> str:
    config = results.read_manifest(folder).get("config")
    return config.get("dataset", "mnist") if isinstance(config, dict) else "mnist"
