"""Regression suites: rerun fixed experiments and compare their numbers with committed baselines.

A suite is a TOML file (see benchmarks/suites/) naming what to run and the tolerance of each
metric; its baseline is a CSV beside it with one row per case and metric:
`case, metric, value, spread`. `spread` is how far the metric moved when the run was repeated
with its starting point nudged by one ulp (start point on a surface, initial weights of the
network): the size of the change a different BLAS or platform can cause on that case. A metric
passes when

    |now - baseline| <= abs + rel * |baseline| + spread_factor * spread

Same suite, same machine: bitwise the same numbers, so an unchanged tree always passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from optbench import results
from optbench.errors import OptbenchError
from optbench.optimizers import select_optimizers

BASELINE_COLUMNS = ["case", "metric", "value", "spread"]
COMPARISON_COLUMNS = ["suite", "case", "metric", "baseline", "now", "delta", "tolerance", "status"]
SPREAD_RUNS = 4  # nudged reruns per case when baselines are written
LOSS_WINDOW = 20  # train_loss@N is the mean loss of iterations N-19 .. N


@dataclass
class Tolerance:
    rel: float = 0.0
    abs: float = 0.0
    spread_factor: float = 0.0
    exact: bool = False  # booleans (diverged) must match exactly

    def allows(self, baseline: float, now: float, spread: float) -> tuple[bool, float]:
        if self.exact:
            return baseline == now, 0.0
        if math.isnan(baseline) or math.isnan(now):
            return math.isnan(baseline) and math.isnan(now), 0.0
        limit = self.abs + self.rel * abs(baseline) + self.spread_factor * spread
        return abs(now - baseline) <= limit, limit


@dataclass
class Suite:
    path: Path
    name: str
    kind: str  # "surface" or "mnist"
    settings: dict
    tolerances: dict[str, Tolerance]

    @property
    def baseline_path(self) -> Path:
        return self.path.parent / self.settings.get("baseline", f"{self.path.stem}-baseline.csv")


def load_suite(path: Path) -> Suite:
    path = Path(path)
    _, data = results.read_toml(path, "suite file")
    kind = data.get("kind")
    if kind not in RUNNERS:
        raise OptbenchError(f"suite {path}: kind must be one of {', '.join(RUNNERS)}, got {kind!r}")
    unknown = sorted(set(data) - {"kind", "name", "baseline", "tolerance"} - set(SETTINGS[kind]))
    if unknown:
        raise OptbenchError(f"suite {path}: unknown setting {unknown[0]!r} (a {kind} suite takes {', '.join(SETTINGS[kind])})")
    for key, check in SETTINGS[kind].items():
        if key in data and not check(data[key]):
            raise OptbenchError(f"suite {path}: bad value for {key}: {data[key]!r}")
    if kind == "mnist" and "iterations" not in data:
        raise OptbenchError(f"suite {path}: an mnist suite needs `iterations`")
    tolerances = _tolerances(path, kind, data.get("tolerance", {}))
    settings = {k: v for k, v in data.items() if k not in ("kind", "tolerance", "name")}
    suite = Suite(path, data.get("name", path.stem), kind, settings, tolerances)
    if kind == "mnist":
        _mnist_experiment(suite).check()
    return suite


def _tolerances(path: Path, kind: str, tables) -> dict[str, Tolerance]:
    """The suite's [tolerance.METRIC] tables, each checked: a misspelt metric would otherwise
    leave the real one with no tolerance at all."""
    if not isinstance(tables, dict):
        raise OptbenchError(f"suite {path}: `tolerance` must be tables such as [tolerance.{METRICS[kind][0]}]")
    for metric, spec in tables.items():
        if metric not in METRICS[kind]:
            raise OptbenchError(f"suite {path}: unknown metric {metric!r} in `tolerance` "
                                f"(a {kind} suite measures {', '.join(METRICS[kind])})")
        if not isinstance(spec, dict):
            raise OptbenchError(f"suite {path}: tolerance.{metric} must be a table such as [tolerance.{metric}]")
        for key, value in spec.items():
            _check_tolerance_value(path, metric, key, value)
    return {metric: Tolerance(**spec) for metric, spec in tables.items()}


def _check_tolerance_value(path: Path, metric: str, key: str, value) -> None:
    where = f"suite {path}: tolerance.{metric}.{key}"
    if key not in TOLERANCE_KEYS:
        raise OptbenchError(f"suite {path}: unknown key {key!r} in [tolerance.{metric}] "
                            f"(a tolerance takes {', '.join(TOLERANCE_KEYS)})")
    if key == "exact":
        if not isinstance(value, bool):
            raise OptbenchError(f"{where} must be true or false, got {value!r}")
    elif not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        # A negative or nan tolerance fails every run, an infinite one passes every run.
        raise OptbenchError(f"{where} must be a number, finite and >= 0, got {value!r}")


def _names(v) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _lr(v) -> bool:
    return v in ("table", "default") or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


# The settings each kind of suite takes, with a check of each value.
SETTINGS = {
    "surface": {"optimizers": _names, "surfaces": _names, "lr": _lr,
                "steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0},
    "mnist": {"optimizers": _names, "lr": _lr, "dataset": lambda v: isinstance(v, str), "data_dir": lambda v: isinstance(v, str),
              "hidden": lambda v: isinstance(v, list) and v and all(_positive_int(h) for h in v),
              "batch_size": _positive_int, "iterations": _positive_int, "train_size": _positive_int,
              "test_size": _positive_int, "seed": lambda v: isinstance(v, int) and v >= 0,
              "check_iterations": lambda v: isinstance(v, list) and all(_positive_int(i) for i in v)},
}


# The metrics each kind of suite measures (train_loss@N takes the tolerance of train_loss).
METRICS = {"surface": ("final_loss", "gap", "steps_to_tol", "diverged"),
           "mnist": ("train_loss", "final_test_acc", "diverged")}
TOLERANCE_KEYS = tuple(f.name for f in fields(Tolerance))


# --- running the suites ---------------------------------------------------------------------


def _optimizers(settings: dict, points: bool = False) -> list[tuple[str, type]]:
    names = settings.get("optimizers", "all")
    return select_optimizers([names] if isinstance(names, str) else list(names), points=points)


def run_surface_suite(suite: Suite, nudge: int | None = None) -> pd.DataFrame:
    """Metrics per `surface/optimizer`: final_loss, gap, steps_to_tol, diverged.

    Each surface runs as `optbench surface` runs it (`surface_run.run_surface`): one member per
    optimizer, at the suite's lr or the surface's table. `nudge` = k moves every start point by
    a random ±1 ulp per coordinate (seed k).
    """
    from optbench.optimizers import Contender
    from optbench.surface_run import run_surface, select_surfaces

    names = suite.settings.get("surfaces", "all")
    lr = suite.settings.get("lr", "table")
    contenders = [Contender(label, cls, {}) for label, cls in _optimizers(suite.settings, points=True)]
    rows = []
    for surface in select_surfaces([names] if isinstance(names, str) else list(names)):
        start = np.asarray(surface.start, dtype=np.float64)
        if nudge is not None:
            start = np.nextafter(start, start + np.random.default_rng(nudge).choice([-1.0, 1.0], 2) * np.inf)
        result = run_surface(surface, contenders, steps=int(suite.settings.get("steps", 0)) or None,
                             lrs=[] if lr == "table" else [float(lr)], start=tuple(start))
        # In the suite's order, not best first: nudged reruns are compared row by row.
        summary = result.summary.set_index("optimizer").loc[[c.label for c in contenders]]
        for label, member in summary.iterrows():
            case = f"{surface.name}/{label}"
            rows += [
                (case, "final_loss", float(member["final_loss"])),
                (case, "gap", float(member["gap"])),
                (case, "steps_to_tol", float(member["steps_to_tol"]) if not pd.isna(member["steps_to_tol"]) else math.nan),
                (case, "diverged", float(member["diverged"])),
            ]
    return pd.DataFrame(rows, columns=["case", "metric", "value"])


def run_mnist_suite(suite: Suite, nudge: int | None = None) -> pd.DataFrame:
    """Metrics per optimizer: train loss at the listed iterations and the final test accuracy.

    Every optimizer of the suite trains in one population (`experiment`). `nudge` = k moves
    every initial weight by a random ±1 ulp (seed k): the size of change that a different BLAS
    summation order causes.
    """
    s = suite.settings
    plan = _mnist_experiment(suite)
    checkpoints = [int(i) for i in s.get("check_iterations", [plan.problem.iterations])]

    def nudged(pop) -> None:
        signs = np.random.default_rng(nudge).choice([-1.0, 1.0], pop.rows.shape[1]).astype(np.float32)
        pop.rows[...] = np.nextafter(pop.rows, pop.rows + signs * np.float32(np.inf))

    result = plan.run(adjust_weights=nudged if nudge is not None else None)
    rows = []
    for label in dict.fromkeys(result.summary["optimizer"]):
        losses = result.curves.loc[result.curves["optimizer"] == label, "train_loss"].to_numpy()
        member = result.summary.set_index("optimizer").loc[label]
        for it in checkpoints:
            # The mean over the LOSS_WINDOW iterations up to `it`: one batch's loss is mostly
            # the luck of that batch.
            window = losses[max(0, it - LOSS_WINDOW) : it]
            rows.append((label, f"train_loss@{it}", float(window.mean()) if len(losses) >= it else math.nan))
        rows.append((label, "final_test_acc", float(member["final_test_acc"])))
        rows.append((label, "diverged", float(member["diverged"])))
    return pd.DataFrame(rows, columns=["case", "metric", "value"])


def _mnist_experiment(suite: Suite):
    from optbench.experiment import Experiment, MnistProblem

    s = suite.settings
    iterations = int(s.get("iterations", 1))
    problem = MnistProblem(
        dataset=s.get("dataset", "mnist"), hidden=tuple(s.get("hidden", (100, 100))), batch_size=int(s.get("batch_size", 128)),
        iterations=iterations, eval_every=iterations, train_size=s.get("train_size"), test_size=s.get("test_size"),
        data_dir=s.get("data_dir"),
    )
    late = [i for i in s.get("check_iterations", []) if i > iterations]
    if late:
        raise OptbenchError(f"suite {suite.path}: check_iterations {late[0]} is past iterations {iterations}")
    names = s.get("optimizers", "all")
    lr = s.get("lr", "default")
    return Experiment(optimizers=[names] if isinstance(names, str) else list(names), problem=problem,
                      lrs=[] if lr in ("default", "table") else [float(lr)], seed=int(s.get("seed", 0)))


RUNNERS: dict[str, Callable[[Suite, int | None], pd.DataFrame]] = {"surface": run_surface_suite, "mnist": run_mnist_suite}


def measure(suite: Suite, spread_runs: int = SPREAD_RUNS) -> pd.DataFrame:
    """The suite's metrics and, per metric, the largest move under `spread_runs` nudged reruns."""
    runner = RUNNERS[suite.kind]
    base = runner(suite, None)
    spread = np.zeros(len(base))
    for k in range(1, spread_runs + 1):
        nudged = runner(suite, k)["value"].to_numpy()
        with np.errstate(invalid="ignore"):
            moved = np.abs(nudged - base["value"].to_numpy())
        # A metric that appears or disappears (NaN on one side) gets no spread: it must match.
        spread = np.fmax(spread, np.where(np.isfinite(moved), moved, 0.0))
    return base.assign(spread=spread)[BASELINE_COLUMNS]


# --- baselines and comparison -----------------------------------------------------------------


def read_baseline(suite: Suite) -> pd.DataFrame:
    path = suite.baseline_path
    if not path.exists():
        raise OptbenchError(f"suite {suite.name}: baseline {path} is missing (write it with `optbench regress --update`)")
    frame = results.read_csv(path)
    missing = [c for c in BASELINE_COLUMNS if c not in frame.columns]
    if missing:
        raise OptbenchError(f"baseline {path} is malformed: missing column(s) {', '.join(missing)}")
    values = pd.to_numeric(frame["value"], errors="coerce")
    spreads = pd.to_numeric(frame["spread"], errors="coerce")
    bad = frame.index[(values.isna() & frame["value"].notna()) | spreads.isna()]
    if len(bad):
        raise OptbenchError(f"baseline {path} is malformed: row {int(bad[0]) + 2} has a non-numeric value or spread")
    if frame.duplicated(["case", "metric"]).any():
        raise OptbenchError(f"baseline {path} is malformed: a case and metric appear twice")
    return frame.assign(value=values, spread=spreads)


def compare(suite: Suite, baseline: pd.DataFrame, now: pd.DataFrame) -> pd.DataFrame:
    """One row per case and metric, failures first."""
    merged = baseline.merge(now, on=["case", "metric"], how="outer", suffixes=("_base", "_now"), indicator="side")
    rows = []
    for row in merged.to_dict("records"):
        base, value = float(row["value_base"]), float(row["value_now"])
        if row["side"] == "right_only":
            rows.append((suite.name, row["case"], row["metric"], math.nan, value, math.nan, math.nan, "no baseline"))
        elif row["side"] == "left_only":
            rows.append((suite.name, row["case"], row["metric"], base, math.nan, math.nan, math.nan, "missing"))
        else:
            # "train_loss@200" takes the tolerance of "train_loss".
            tolerance = suite.tolerances.get(row["metric"].split("@")[0], Tolerance())
            ok, limit = tolerance.allows(base, value, float(row["spread"]))
            delta = value - base if not (math.isnan(base) or math.isnan(value)) else math.nan
            rows.append((suite.name, row["case"], row["metric"], base, value, delta, limit, "ok" if ok else "FAIL"))
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    order = table["status"].map({"FAIL": 0, "missing": 1, "no baseline": 2, "ok": 3})
    return table.assign(_order=order).sort_values(["_order", "case", "metric"], kind="stable").drop(columns="_order").reset_index(drop=True)


def write_baseline(suite: Suite, measured: pd.DataFrame) -> pd.DataFrame:
    """Replace the suite's baseline atomically; return what changed (case, metric, old, new)."""
    try:
        old = read_baseline(suite)
    except OptbenchError:
        old = pd.DataFrame(columns=BASELINE_COLUMNS)
    results.write_csv(measured, suite.baseline_path)
    merged = old.merge(measured, on=["case", "metric"], how="outer", suffixes=("_old", "_new"))
    same = (merged["value_old"] == merged["value_new"]) | (merged["value_old"].isna() & merged["value_new"].isna())
    changed = merged[~same | merged["case"].isin(set(old["case"]) ^ set(measured["case"]))]
    return changed[["case", "metric", "value_old", "value_new"]].rename(columns={"value_old": "old", "value_new": "new"})


def check(suites: list[Suite], on_suite: Callable[[Suite], None] | None = None) -> pd.DataFrame:
    """Every suite run and compared with its baseline (every baseline read before any run, so a
    bad one stops the check at once): one row per case and metric, failures first across suites.
    `on_suite` hears of each suite as it starts."""
    baselines = [read_baseline(s) for s in suites]
    comparisons = []
    for suite, baseline in zip(suites, baselines):
        if on_suite:
            on_suite(suite)
        comparisons.append(compare(suite, baseline, RUNNERS[suite.kind](suite, None)))
    comparison = pd.concat(comparisons, ignore_index=True)
    order = comparison["status"].map({"FAIL": 0, "missing": 1, "no baseline": 2, "ok": 3})
    return comparison.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def update(suites: list[Suite], on_suite: Callable[[Suite, pd.DataFrame], None] | None = None) -> None:
    """Measure every suite and rewrite its baseline; `on_suite(suite, changed)` after each. Each
    baseline's folder is checked writable first, so a long measurement is not lost at its end."""
    for suite in suites:
        results.prepare_dir(suite.baseline_path.parent)
    for suite in suites:
        changed = write_baseline(suite, measure(suite))
        if on_suite:
            on_suite(suite, changed)


def default_suites(root: Path = Path("benchmarks/suites")) -> list[Path]:
    paths = sorted(Path(root).glob("*.toml"))
    if not paths:
        raise OptbenchError(f"no suites in {root}/ (name suite files with --suite FILE)")
    return paths

