"""`optbench sweep`: a study from a TOML file, expanded to cells, packed into populations, run on
an executor (in-process, local processes or Dask) and written to a resumable store.

A *cell* is one training: a problem (a surface from a start, or MNIST with its net), an optimizer
with its hyperparameters, an lr, a schedule and a seed. It is named by a hash of that whole
specification, so rerunning a sweep skips the cells already in the store and a changed setting
makes a new cell. Cells that share a problem and a schedule run together as one *population*
(at most `population` cells), the unit an executor runs and the store writes atomically.

The store is a folder pandas reads directly:

    DIR/cells/part-<population>.parquet    one row per cell: its specification and results
    DIR/curves/part-<population>.parquet   one row per cell and curve point (a surface's
                                           trajectory; MNIST's evaluations)
    DIR/manifest.json                      the sweep file, counts, status, environment

    pd.read_parquet("DIR/cells")

Knows nothing of the terminal: `run_sweep` calls `on_population(progress)` (a `SweepProgress`)
before anything runs and as each population lands.
Every population runs with the same number of BLAS and Numba threads (`threads`, 1 unless the
file says otherwise), because OpenBLAS's sums depend on its thread count: so a sweep's results are
bitwise the same whichever executor ran it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, cached_property
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from optbench import results
from optbench.errors import OptbenchError

DEFAULT_POPULATION = 64
STORE_FORMAT = 1


# --- the sweep file -------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v) -> bool:
    return _is_int(v) and v > 0


def _strings(v) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _lrs(v) -> bool:
    return v in ("default", "tune") or (isinstance(v, list) and v and all(_is_number(x) and x > 0 for x in v))


MAX_SEED = 2**32 - 1  # a seed is stored as a 64-bit integer; NumPy's generators take 32 bits at a time


def _seeds(v) -> bool:
    return (_positive(v) and v <= 10_000) or (
        isinstance(v, list) and v and all(_is_int(x) and 0 <= x <= MAX_SEED for x in v))


def _schedules(v) -> bool:
    return isinstance(v, list) and v and all(isinstance(x, (str, dict)) for x in v)


def _starts(v) -> bool:
    return (isinstance(v, str) and (v == "default" or v.startswith("grid:"))) or (
        isinstance(v, list) and v and all(isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in v))


TOP = {"name": lambda v: isinstance(v, str) and bool(re.fullmatch(r"[\w.+-]+", v)) and v not in (".", ".."), "device": lambda v: v in ("cpu", "gpu", "auto"),
       "optimizers": _strings, "hp": _strings, "lrs": _lrs, "seeds": _seeds, "schedules": _schedules,
       "population": _positive, "threads": _positive, "problems": lambda v: isinstance(v, list) and v}
SURFACE = {"kind": lambda v: v == "surface", "surface": lambda v: isinstance(v, str), "starts": _starts,
           "noise": lambda v: _is_number(v) and v >= 0, "steps": lambda v: _is_int(v) and v >= 0,
           "tol": lambda v: _is_number(v) and v > 0}
MNIST = {"kind": lambda v: v == "mnist", "dataset": lambda v: isinstance(v, str),
         "hidden": lambda v: isinstance(v, list) and v and all(_positive(h) for h in v),
         "activation": lambda v: isinstance(v, str), "init": lambda v: isinstance(v, str),
         "weight_decay": lambda v: _is_number(v) and v >= 0, "batch_size": _positive, "epochs": _positive,
         "iterations": _positive, "eval_every": _positive, "train_size": _positive, "test_size": _positive,
         "validation": _positive, "target": lambda v: _is_number(v) and 0 < v <= 100,
         "data_dir": lambda v: isinstance(v, str), "shuffle": lambda v: isinstance(v, bool)}
SCHEDULE = {"kind": lambda v: isinstance(v, str), "warmup": lambda v: _is_number(v) and v >= 0,
            "min_lr_ratio": lambda v: _is_number(v) and v >= 0, "decay_fraction": lambda v: _is_number(v) and 0 < v <= 1}
EXPECTED = {"name": "a folder name (letters, digits, . _ + -)", "optimizers": "a name or a list of names", "hp": "a list of 'name=value' strings",
            "lrs": '"default", "tune" or a list of positive numbers', "seeds": "a count up to 10,000 or a list of seeds in [0, 2**32)",
            "schedules": "a list of kinds or tables", "starts": '"default", "grid:N" or a list of [x, y]',
            "hidden": "a list of positive widths", "device": '"cpu", "gpu" or "auto"', "problems": "[[problems]] tables"}


@dataclass
class SweepFile:
    path: Path
    text: str
    data: dict

    def where(self, key: str, table: str | None = None, index: int = 0) -> str:
        """'FILE:LINE' of `key` (in the index-th `[[table]]` when given), for error messages."""
        return f"{self.path}:{key_line(self.text, key, table, index)}"

    def error(self, message: str, key: str, table: str | None = None, index: int = 0) -> OptbenchError:
        return OptbenchError(f"{self.where(key, table, index)}: {message}")


def key_line(text: str, key: str, table: str | None = None, index: int = 0) -> int:
    """The line defining `key` at the top level or in the index-th [[table]] (1 if not found)."""
    current, seen = None, -1
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\[\s*([\w.]+)\s*\]\]", stripped) or re.match(r"^\[\s*([\w.]+)\s*\]", stripped)
        if header:
            current = header.group(1)
            if current == table and stripped.startswith("[["):
                seen += 1
            continue
        if re.match(rf"^{re.escape(key)}\s*=", stripped) and (
                (table is None and current is None) or (current == table and seen == index)):
            return number
    if table is not None:  # the table's header, when the key is missing from it
        seen = -1
        for number, line in enumerate(text.splitlines(), start=1):
            if re.match(rf"^\[\[\s*{re.escape(table)}\s*\]\]", line.strip()):
                seen += 1
                if seen == index:
                    return number
    return 1


def load_sweep(path: Path) -> SweepFile:
    """Read and check a sweep file: unknown keys, bad types and unknown names are refused with
    the file, the key and its line."""
    path = Path(path)
    text, data = results.read_toml(path, "sweep file")
    sweep = SweepFile(path, text, data)
    _check_keys(sweep, data, TOP, None, 0)
    if "problems" not in data:
        raise OptbenchError(f"{path}: a sweep needs at least one [[problems]] table")
    for i, problem in enumerate(data["problems"]):
        if not isinstance(problem, dict):
            raise sweep.error("problems must be [[problems]] tables", "problems")
        kind = problem.get("kind")
        if kind not in ("surface", "mnist"):
            raise sweep.error(f"kind must be 'surface' or 'mnist', got {kind!r}", "kind", "problems", i)
        _check_keys(sweep, problem, SURFACE if kind == "surface" else MNIST, "problems", i)
        if kind == "surface" and "surface" not in problem:
            raise sweep.error("a surface problem needs `surface`", "kind", "problems", i)
    for j, schedule in enumerate(data.get("schedules", [])):
        if isinstance(schedule, dict):
            unknown = sorted(set(schedule) - set(SCHEDULE))
            bad = [k for k, v in schedule.items() if k in SCHEDULE and not SCHEDULE[k](v)]
            if unknown or bad or "kind" not in schedule:
                what = f"unknown key {unknown[0]!r}" if unknown else (f"bad value for {bad[0]}" if bad else "a schedule table needs `kind`")
                raise sweep.error(f"schedules[{j}]: {what}", "schedules")
    expand(sweep)  # unknown optimizers, surfaces, data sets and hyperparameters stop here
    return sweep


def _check_keys(sweep: SweepFile, table: dict, allowed: dict, name: str | None, index: int) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise sweep.error(f"unknown key {key!r} (allowed: {', '.join(allowed)})", key, name, index)
        if not allowed[key](value):
            hint = f" (expected {EXPECTED[key]})" if key in EXPECTED else ""
            raise sweep.error(f"bad value for {key}: {value!r}{hint}", key, name, index)


# --- cells and populations ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One training, named by the hash of its specification."""

    problem: dict  # canonical: every setting, defaults filled in
    optimizer: str  # label
    spec: str  # what selects the class: a built-in name or module:Class
    hparams: dict  # typed, without lr
    lr: float
    schedule: dict
    seed: int
    start: tuple[float, float] | None = None  # surfaces

    @property
    def spec_dict(self) -> dict:
        """What names the cell: every setting that changes its result. The hyperparameters with
        the optimizer's defaults filled in (naming the default is the same cell as leaving it
        out); the problem without where its data lies."""
        from optbench.optimizers import OPTIMIZERS, defaults_of

        cls = _cls(self)
        full = {k: v for k, v in {**defaults_of(cls), **self.hparams}.items()
                if k != "lr" and not (k in _ADDED_LATER.get(getattr(cls, "name", ""), {})
                                      and v == _ADDED_LATER[cls.name][k])}
        # The class by what it is, not by how the file names it ("rules/mine.py:Mine",
        # "./rules/mine.py:Mine" and "mine:Mine" are one class): a built-in's name, else
        # module:qualname, as stores have named cells since their format 1.
        name = self.optimizer if OPTIMIZERS.get(self.optimizer) is cls else f"{cls.__module__}:{cls.__qualname__}"
        return {"format": STORE_FORMAT, "problem": _identity(self.problem), "optimizer": self.optimizer,
                "class": name, "hparams": full, "lr": self.lr, "schedule": self.schedule, "seed": self.seed,
                "start": list(self.start) if self.start is not None else None}

    @cached_property
    def id(self) -> str:
        return _hash(self.spec_dict)

    @cached_property
    def problem_id(self) -> str:
        return _hash(_identity(self.problem))


# Options a built-in rule gained after stores began naming cells, at the default that is the rule
# as it was: left out of a cell's name there, so that a store's finished cells stay finished.
_ADDED_LATER = {"adam": {"decoupled_weight_decay": False}, "amsgrad": {"decoupled_weight_decay": False},
                "lamb": {"weight_decouple": True}}


def _identity(problem: dict) -> dict:
    return {k: v for k, v in problem.items() if k != "data_dir"}


def _hash(data) -> str:
    text = json.dumps(data, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


@dataclass
class Population:
    """Cells that share a problem and a schedule, run together; `id` names its partition."""

    cells: list[Cell]
    device: str = "cpu"
    threads: int = 1

    @property
    def id(self) -> str:
        return _hash(sorted(c.id for c in self.cells))



def expand(sweep: SweepFile) -> list[Cell]:
    """Every cell of the sweep, problem by problem, schedule, optimizer, lr, start, seed."""
    from optbench.optimizers import OPTIMIZERS, instantiate, optimizer_class, optimizer_label, resolve_hparams, select_optimizers
    from optbench.schedules import Schedule

    data = sweep.data
    names = data.get("optimizers", ["adam"])
    pairs = data.get("hp", [])
    names = [names] if isinstance(names, str) else list(names)
    try:
        selected = select_optimizers(names)
        typed = resolve_hparams(selected, [pairs] if isinstance(pairs, str) else list(pairs))
        # A user's class is found again in each worker from what the file says ("module:Class",
        # or a path to a .py file), so a cell keeps those words.
        user_specs = {optimizer_label(cls): spec for spec in names if spec != "all" and spec not in OPTIMIZERS
                      for cls in [optimizer_class(spec)]}
    except OptbenchError as exc:
        raise sweep.error(str(exc), "hp" if "--hp" in str(exc) else "optimizers") from None
    for label, cls in selected:  # hyperparameters out of range stop here, before anything runs
        try:
            instantiate(cls, **typed[label])
        except OptbenchError as exc:
            raise sweep.error(str(exc), "hp" if pairs else "optimizers") from None
    seeds = data.get("seeds", 1)
    seeds = list(range(seeds)) if _is_int(seeds) else list(seeds)
    schedules = []
    for item in data.get("schedules", ["constant"]):
        spec = {"kind": item} if isinstance(item, str) else dict(item)
        schedule = Schedule(spec["kind"], float(spec.get("warmup", 0.0)), float(spec.get("min_lr_ratio", 0.0)),
                            float(spec.get("decay_fraction", 0.2)))
        try:
            schedule.check()
        except OptbenchError as exc:
            raise sweep.error(str(exc), "schedules") from None
        schedules.append({"kind": schedule.kind, "warmup": schedule.warmup, "min_lr_ratio": schedule.min_lr_ratio,
                          "decay_fraction": schedule.decay_fraction})
    cells = []
    device = data.get("device", "cpu")
    for i, raw in enumerate(data["problems"]):
        if data.get("lrs") == "tune" and raw.get("kind") == "mnist" and "validation" not in raw:
            from optbench.experiment import TUNE_VALIDATION

            raw = {**raw, "validation": TUNE_VALIDATION}  # a tuning grid is judged on validation, never the test set
        try:
            problem, starts, total_steps = _problem(raw)
        except OptbenchError as exc:
            raise sweep.error(str(exc), "kind", "problems", i) from None
        if problem["kind"] == "mnist":
            problem["device"] = device  # float32 on another device is another result
        for schedule in schedules:
            try:
                Schedule(**schedule).check(total_steps)
            except OptbenchError as exc:
                raise sweep.error(f"{exc}, in problem {i + 1} ({_problem_name(problem)})", "schedules") from None
            for label, cls in selected:
                hparams = {k: v for k, v in typed[label].items() if k != "lr"}
                spec = user_specs.get(label, label)
                if problem["kind"] == "surface" and getattr(cls, "needs_matrices", False):
                    continue  # Muon needs weight matrices: no surface cells for it
                for lr in _cell_lrs(data.get("lrs", "default"), problem, label, cls, typed[label]):
                    for start in starts:
                        cells += [Cell(problem, label, spec, hparams, float(lr), schedule, seed, start) for seed in seeds]
    idle = [label for label, _ in selected if not any(c.optimizer == label for c in cells)]
    if idle:
        raise sweep.error(f"{idle[0]} updates weight matrices only: it needs an MNIST problem, and this sweep has "
                          "only surfaces", "optimizers")
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise OptbenchError(f"{sweep.path}: two cells have the same specification (a problem or seed listed twice?)")
    return cells


def _problem(raw: dict) -> tuple[dict, list, int]:
    """The canonical problem (every setting, defaults filled in), its start points and the
    number of steps a cell of it takes."""
    from optbench.experiment import MnistProblem
    from optbench.surface_run import grid_starts, parse_starts
    from optbench.surfaces import get_surface
    from optbench.trajectories import GAP_TOL

    if raw["kind"] == "surface":
        surface = get_surface(raw["surface"])
        problem = {"kind": "surface", "surface": surface.name, "steps": raw.get("steps") or surface.steps,
                   "noise": float(raw.get("noise", 0.0)), "tol": float(raw.get("tol", GAP_TOL))}
        starts = raw.get("starts", "default")
        if starts == "default":
            points = [tuple(map(float, surface.start))]
        elif isinstance(starts, str):
            points = grid_starts(surface, parse_starts(starts))
        else:
            points = [tuple(map(float, p)) for p in starts]
        return problem, points, problem["steps"]
    settings = {k: v for k, v in raw.items() if k not in ("kind", "target")}
    if "hidden" in settings:
        settings["hidden"] = tuple(settings["hidden"])
    for name in ("weight_decay", "dropout"):  # 0 and 0.0 are one setting: one cell name
        if name in settings:
            settings[name] = float(settings[name])
    mnist = MnistProblem(**settings, target=float(raw["target"]) / 100 if "target" in raw else None)
    mnist.check()
    problem = {"kind": "mnist", **{k: v for k, v in _problem_fields(mnist).items()}}
    return problem, [None], mnist.total_steps


def _problem_fields(mnist) -> dict:
    from dataclasses import asdict

    fields = asdict(mnist)
    fields.pop("schedule")  # a cell's schedule is its own
    fields.pop("cuda_graph")
    fields["hidden"] = list(fields["hidden"])
    return fields


def _cell_lrs(lrs, problem: dict, label: str, cls: type, hparams: dict) -> list[float]:
    """The lrs of one optimizer on one problem: a list, the default (surface table or MNIST's), or
    the tuning grid ("tune": TUNE_GRID on a surface, the MNIST grid around the default)."""
    from optbench.experiment import TUNE_FACTORS
    from optbench.experiment import default_lr as mnist_lr
    from optbench.surface_run import default_lr as surface_lr
    from optbench.surfaces import get_surface
    from optbench.trajectories import TUNE_GRID

    if "lr" in hparams:  # --hp lr= wins, as on the command line
        return [float(hparams["lr"])]
    if isinstance(lrs, list):
        return [float(x) for x in lrs]
    surface = problem["kind"] == "surface"
    default = surface_lr(get_surface(problem["surface"]), label, cls) if surface else mnist_lr(label, cls)
    if lrs == "default":
        return [default]
    return [float(x) for x in TUNE_GRID] if surface else [default * f for f in TUNE_FACTORS]


def populations(cells: list[Cell], size: int = DEFAULT_POPULATION, device: str = "cpu", threads: int = 1) -> list[Population]:
    """Cells grouped by problem and schedule, in order, cut into populations of at most `size`.
    MNIST cells of one seed stay together where they fit (they share the batches)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(_hash([cell.problem, cell.schedule]), []).append(cell)
    out = []
    for group in groups.values():
        if group[0].problem["kind"] == "mnist":
            group = sorted(group, key=lambda c: c.seed)  # stable: the file's order within a seed
        out += [Population(group[i : i + size], device, threads) for i in range(0, len(group), size)]
    return out


# --- running one population (in any process) ------------------------------------------------


def run_population(population: Population) -> dict:
    """Train every cell of `population`; return its two store parts, already Parquet:
    {'cells': bytes, 'curves': bytes, 'worker': 'host:pid', 'warnings': [one line per user's rule that
    raised, its cells marked failed]}. They are encoded where the population
    ran, so a client serving many workers only writes bytes. Pure: the same population gives the
    same rows anywhere (the files' footers name the pyarrow that wrote them)."""
    cells, curves, warnings = _train_cells(population)
    ids = {"population": population.id}
    cells_schema, curves_schema = _arrow_schemas()
    return {"cells": encode(cells.assign(**ids), cells_schema), "curves": encode(curves.assign(**ids), curves_schema),
            "worker": f"{socket.gethostname()}:{os.getpid()}", "warnings": warnings}


def _train_cells(population: Population) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The cells' rows and their curve points, as DataFrames, and the run's warnings."""
    from threadpoolctl import threadpool_limits

    import numba

    numba_threads = numba.get_num_threads()
    numba.set_num_threads(min(population.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(population.threads):
            kind = population.cells[0].problem["kind"]
            return (_run_surface_cells if kind == "surface" else _run_mnist_cells)(population)
    finally:
        numba.set_num_threads(numba_threads)


def _cell_columns(cells: list[Cell]) -> pd.DataFrame:
    return pd.DataFrame({
        "cell": [c.id for c in cells], "problem_id": [c.problem_id for c in cells],
        "problem": [_problem_name(c.problem) for c in cells], "kind": [c.problem["kind"] for c in cells],
        "optimizer": [c.optimizer for c in cells],
        "hparams": [json.dumps(c.hparams, sort_keys=True, default=_jsonable) for c in cells],
        "lr": [c.lr for c in cells], "schedule": [_schedule_label(c.schedule) for c in cells],
        "seed": [c.seed for c in cells],
    })


def _problem_name(problem: dict) -> str:
    if problem["kind"] == "surface":
        noise = f", noise {problem['noise']:g}" if problem["noise"] else ""
        return f"{problem['surface']} ({problem['steps']} steps{noise})"
    # Plural even for one: a store's parts keep the names they were written with, and a resumed
    # store must not name one problem two ways.
    length = f"{problem['iterations']} steps" if problem.get("iterations") else f"{problem['epochs']} epochs"
    return f"{problem['dataset']} {'-'.join(map(str, problem['hidden']))} ({length})"


def _schedule_label(schedule: dict) -> str:
    from optbench.schedules import Schedule

    return Schedule(**schedule).label()


def _cls(cell: Cell) -> type:
    from optbench.optimizers import select_optimizers

    return select_optimizers([cell.spec])[0][1]


def _run_surface_cells(population: Population) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    from optbench.schedules import Schedule
    from optbench.surface_run import failure_lines, summary_frame
    from optbench.surfaces import get_surface
    from optbench.trajectories import SurfaceMember, run_members

    cells = population.cells
    problem = cells[0].problem
    surface = get_surface(problem["surface"])
    schedule = Schedule(**cells[0].schedule)
    members = [SurfaceMember(c.optimizer, _cls(c), c.hparams, c.lr, tuple(c.start), c.seed) for c in cells]
    batch = run_members(surface, members, problem["steps"], schedule, problem["noise"])
    summary = summary_frame(surface, members, batch, schedule, problem["tol"]).drop(
        columns=["surface", "optimizer", "lr", "schedule", "seed"])
    table = pd.concat([_cell_columns(cells), summary.reset_index(drop=True)], axis=1)
    steps = batch.positions.shape[0]
    curves = pd.DataFrame({
        "cell": np.repeat([c.id for c in cells], steps),
        "step": np.tile(np.arange(steps), len(cells)),
        "x": batch.positions[:, :, 0].T.ravel(), "y": batch.positions[:, :, 1].T.ravel(),
        "loss": batch.losses.T.ravel(),
    })
    return table, curves[np.isfinite(curves["loss"])].reset_index(drop=True), failure_lines(surface, members, batch)


def _run_mnist_cells(population: Population) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    from optbench.experiment import Experiment, Member, MnistProblem, Reporter
    from optbench.schedules import Schedule

    cells = population.cells
    settings = {k: v for k, v in cells[0].problem.items() if k not in ("kind", "device")}
    settings["hidden"] = tuple(settings["hidden"])
    problem = MnistProblem(**settings, schedule=Schedule(**cells[0].schedule))
    members = [Member(c.optimizer, _cls(c), c.hparams, c.lr, c.seed) for c in cells]
    experiment = Experiment(optimizers=list(dict.fromkeys(c.spec for c in cells)), problem=problem,
                            device=population.device)

    class Warnings(Reporter):  # what a terminal would have shown: a user's rule that raised
        def __init__(self):
            self.lines: list[str] = []

        def warn(self, message: str) -> None:
            self.lines.append(f"{_problem_name(cells[0].problem)}: {message}")

    warnings = Warnings()
    result = experiment.run(warnings, members=members)
    if result.status == "interrupted":
        raise KeyboardInterrupt
    key = {(c.optimizer, c.lr, c.seed): c.id for c in cells}
    summary = result.summary.assign(cell=[key[(o, lr, s)] for o, lr, s in
                                          zip(result.summary["optimizer"], result.summary["lr"], result.summary["seed"])])
    table = _cell_columns(cells).merge(
        summary.drop(columns=["optimizer", "lr", "schedule", "seed"]), on="cell", how="left", validate="one_to_one")
    epochs = result.epochs
    curves = epochs.assign(cell=[key[(o, lr, s)] for o, lr, s in zip(epochs["optimizer"], epochs["lr"], epochs["seed"])])
    return table, curves.drop(columns=["optimizer", "lr", "seed"]).reset_index(drop=True), warnings.lines


# --- the store ------------------------------------------------------------------------------


def _schema() -> tuple[dict[str, str], dict[str, str]]:
    """The columns and types of every cells and curves part, surface and MNIST alike: pyarrow
    reads a folder of parts with the first part's schema, so every part has all of them."""
    from optbench.experiment import EPOCH_COLUMNS, SUMMARY_COLUMNS
    from optbench.surface_run import SUMMARY_COLUMNS as SURFACE_SUMMARY

    text = {"cell", "problem_id", "problem", "kind", "optimizer", "hparams", "schedule", "status", "population",
            "device", "surface"}
    whole = {"seed", "steps", "steps_to_tol", "step", "iteration", "steps_to_target", "steps_to_loss"}

    def typed(names):
        return {n: "string" if n in text else "boolean" if n == "diverged" else "Int64" if n in whole else "float64"
                for n in names}

    head = ["cell", "problem_id", "problem", "kind", "optimizer", "hparams", "lr", "schedule", "seed", "device"]
    cells = list(dict.fromkeys(head + [c for c in SURFACE_SUMMARY if c not in ("surface", "status")] + SUMMARY_COLUMNS + ["population"]))
    curves = list(dict.fromkeys(["cell", "step", "x", "y", "loss"] + [c for c in EPOCH_COLUMNS if c not in ("optimizer", "lr", "seed")]
                                + ["population"]))
    return typed(cells), typed(curves)


def conform(frame: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """`frame` with exactly the schema's columns, in order, of its types (missing ones empty)."""
    frame = frame.reset_index(drop=True)
    return pd.DataFrame({name: frame[name].pipe(_cast, dtype) if name in frame.columns else _empty(len(frame), dtype)
                         for name, dtype in schema.items()})


def _cast(column: pd.Series, dtype: str):
    if str(column.dtype) == dtype:
        return column
    if dtype == "Int64":
        return pd.to_numeric(column, errors="coerce").astype("Float64").round().astype("Int64")
    if dtype == "float64":
        return pd.to_numeric(column, errors="coerce").astype("float64")
    return column.astype(dtype)


@cache
def _arrow_schemas():
    """The cells and curves schemas as Arrow schemas, with the pandas metadata that makes
    `pd.read_parquet` give back the same dtypes (string, Int64, boolean)."""
    import pyarrow as pa

    return tuple(pa.Schema.from_pandas(conform(pd.DataFrame(), schema), preserve_index=False) for schema in _schema())


def encode(frame: pd.DataFrame, schema) -> bytes:
    """`frame` as one Parquet file of the Arrow `schema`: the same file `conform(...).to_parquet`
    writes, built column by column in Arrow, a quarter of the time (it runs once per population)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.reset_index(drop=True)
    arrays = []
    for field_ in schema:
        if field_.name not in frame.columns:
            arrays.append(pa.nulls(len(frame), field_.type))
            continue
        column = frame[field_.name]
        try:
            values = column.to_numpy() if isinstance(column.dtype, np.dtype) and column.dtype.kind in "fiub" else column
            arrays.append(pa.array(values, type=field_.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. fractional floats for an Int64 column
            arrays.append(pa.array(_cast(column, _dtype(schema, field_.name)),
                                   type=field_.type, from_pandas=True))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), sink)
    return sink.getvalue().to_pybytes()


def _dtype(schema, name: str) -> str:
    return next(c["numpy_type"] for c in schema.pandas_metadata["columns"] if c["name"] == name)


def _empty(n: int, dtype: str):
    """n missing values of `dtype`, built from masks (a list of pd.NA is slow at curve lengths)."""
    if dtype == "float64":
        return np.full(n, np.nan)
    if dtype == "Int64":
        return pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))
    if dtype == "boolean":
        return pd.arrays.BooleanArray(np.zeros(n, dtype=bool), np.ones(n, dtype=bool))
    return pd.Series(np.full(n, None, dtype=object), dtype=dtype).array


class Store:
    """A sweep's results folder: Parquet partitions per population and a manifest."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cells_dir, self.curves_dir = self.root / "cells", self.root / "curves"

    def prepare(self) -> None:
        """The store's folders, with what a killed sweep left: its orphaned curves, and the
        temporary files of a write it did not finish (`.part-….parquet`; under the store's lock,
        so no other sweep is writing them)."""
        for folder in (self.root, self.cells_dir, self.curves_dir):
            results.prepare_dir(folder)
        self._drop_orphans()
        for folder in (self.cells_dir, self.curves_dir):
            for path in folder.glob(".part-*"):
                path.unlink(missing_ok=True)

    # What a store holds, and what `optbench report` (--html, --out) and `optbench profile` may
    # write into it: none of them makes it another kind of folder.
    CONTENTS = ("cells", "curves", "manifest.json", "report.html", "profile", "aggregate.csv")

    def may_write(self) -> bool:
        """A new or empty folder, or a store (even one stopped before its manifest was written);
        not a folder of anything else."""
        if not self.root.is_dir():
            return not self.root.exists()
        foreign = [p for p in self.root.iterdir() if p.name not in self.CONTENTS and not p.name.startswith(".")]
        return not foreign and self.manifest().get("kind", "sweep") == "sweep"

    @contextmanager
    def locked(self):
        """The store's own lock, held while a sweep writes: a second sweep into the same store
        (its populations cut otherwise, so its parts named otherwise) would land its cells twice."""
        results.prepare_dir(self.root)
        with open(self.root / ".lock", "a+") as handle:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: no lock
                yield
                return
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OptbenchError(f"another sweep is writing {self.root}: wait for it, or give --out another "
                                        "store") from None
                yield  # a file system without locks (Lustre without -o flock, some FUSE mounts): none
                return
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def set_aside_damaged(self) -> list[str]:
        """Parts that do not read (a disk that filled, a copy cut short) are renamed
        `.damaged-part-…`, with their population's other part, so that its cells run again;
        returns the populations' part names."""
        import pyarrow.parquet as pq

        damaged = []
        for folder, check in ((self.cells_dir, pq.read_table), (self.curves_dir, pq.read_table)):
            for path in sorted(folder.glob("part-*.parquet")):
                try:
                    check(path)
                except Exception:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
                    damaged.append(path.name)
        for name in dict.fromkeys(damaged):
            for folder in (self.cells_dir, self.curves_dir):
                if (folder / name).exists():
                    (folder / name).rename(folder / f".damaged-{name}")
        return list(dict.fromkeys(damaged))

    def _drop_orphans(self) -> None:
        """A crash between a population's two partitions leaves its curves without its cells:
        the cells will run again, so those curves go."""
        kept = {p.name for p in self.cells_dir.glob("part-*.parquet")}
        for path in self.curves_dir.glob("part-*.parquet"):
            if path.name not in kept:
                path.unlink()

    def finished(self) -> set[str]:
        return set(self.cells()["cell"]) if any(self.cells_dir.glob("part-*.parquet")) else set()

    def cells(self) -> pd.DataFrame:
        return _read_parts(self.cells_dir)

    def curves(self) -> pd.DataFrame:
        return _read_parts(self.curves_dir)

    def write(self, population_id: str, parts: dict) -> None:
        """The curves, then the cells (Parquet bytes from `run_population`), each atomically:
        a cell is in the store once its row is."""
        name = f"part-{population_id}.parquet"
        for data, folder in ((parts["curves"], self.curves_dir), (parts["cells"], self.cells_dir)):
            with results.atomic_path(folder / name) as tmp:
                tmp.write_bytes(data)

    def write_manifest(self, manifest: dict) -> None:
        results.write_json(manifest, self.root / "manifest.json")

    def manifest(self) -> dict:
        return results.read_manifest(self.root)


def _read_parts(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    frames = []
    for path in parts:
        try:
            frames.append(pd.read_parquet(path))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise OptbenchError(f"{path}: a damaged part ({type(exc).__name__}); rerun the sweep into this store to run "
                                "its cells again") from None
    return pd.concat(frames, ignore_index=True)


def is_store(folder: Path) -> bool:
    return (Path(folder) / "cells").is_dir() and (Path(folder) / "manifest.json").exists()


# --- executors ------------------------------------------------------------------------------


@dataclass
class Executor:
    """Where populations run: in-process (workers None), N local processes, or Dask (`dask`:
    'local' for a LocalCluster of `workers` processes, or a scheduler's address; `client`: a
    distributed.Client of your own)."""

    workers: int | None = None
    dask: str | None = None
    client: Any = None
    gpus: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES per local worker

    def check(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise OptbenchError(f"invalid --workers {self.workers} (must be >= 1)")
        if self.dask is not None and self.dask != "local" and not re.match(r"^(tcp|tls|inproc|ucx)://", self.dask):
            raise OptbenchError(f"invalid --dask {self.dask!r} (local, or a scheduler address such as tcp://HOST:8786)")
        if self.workers is not None and self.dask not in (None, "local"):
            raise OptbenchError("--workers sets the size of a LocalCluster: not with a scheduler address")

    def pin_gpus(self, device: str) -> None:
        """Local worker processes on the GPU: one GPU each (CUDA_VISIBLE_DEVICES 0 .. N-1),
        refused past the GPUs there are. Dask's workers are the cluster's to place."""
        if device != "gpu" or not self.workers or self.dask or self.client is not None or self.gpus:
            return
        from optbench.backend import gpu_count

        count = gpu_count()
        if self.workers > count:
            raise OptbenchError(f"--workers {self.workers} with device gpu: one worker per GPU, and this machine has {count}")
        # Within what this process may use: a CUDA_VISIBLE_DEVICES of "2,3" gives the workers 2 and 3.
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        self.gpus = visible[: self.workers] if len(visible) >= self.workers else [str(i) for i in range(self.workers)]

    @property
    def label(self) -> str:
        if self.client is not None or self.dask:
            return f"dask {self.dask or 'client'}"
        return f"{self.workers} local processes" if self.workers else "in-process"

    def open(self) -> None:
        """Reach the Dask scheduler (or start the LocalCluster) now, before anything is written:
        an unreachable address or a missing Dask stops the sweep with nothing on disk."""
        self._owned = []
        if self.client is not None or not self.dask:
            return
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise OptbenchError("--dask needs dask: pip install 'optbench[dask]'") from None
        if self.dask == "local":
            from optbench.workers import sigint_ignored  # the client alone stops on a terminal's Ctrl-C

            with sigint_ignored():
                # Errors only: a stop mid-population (Ctrl-C, SIGTERM) cancels the workers' tasks,
                # which Dask reports as warnings, three lines above the sweep's own one.
                cluster = LocalCluster(n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1,
                                       processes=True, dashboard_address=None, silence_logs=logging.ERROR)
            try:
                self.client = Client(cluster)
            except BaseException:
                cluster.close()  # its processes would outlive the sweep
                raise
            self._owned = [self.client, cluster]
        else:
            self.client = _connect(self.dask)
            self._owned = [self.client]

    def close(self) -> None:
        owned = getattr(self, "_owned", [])
        for thing in owned:
            thing.close()
        if owned:
            self.client = None
        self._owned = []

    def map(self, pops: list[Population], done: Callable[[Population, dict], None]) -> None:
        """Run every population, calling `done(population, parts)` in this process as each finishes."""
        if not pops:
            return
        if self.client is not None:
            self._dask(pops, done)
        elif self.workers:
            self._processes(pops, done)
        else:
            for population in pops:
                done(population, run_population(population))

    def _processes(self, pops, done) -> None:
        from optbench.workers import run_in_processes

        run_in_processes(run_population, pops, self.workers, done,
                         [{"CUDA_VISIBLE_DEVICES": str(gpu)} for gpu in self.gpus])

    def _dask(self, pops, done) -> None:
        from distributed import as_completed

        futures = {self.client.submit(run_population, p, key=f"optbench-population-{p.id}", pure=False): p for p in pops}
        try:
            for future in as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            self.client.cancel(list(futures))
            raise


def _connect(address: str, timeout: float = 6.0):
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as exc:
        raise OptbenchError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({type(exc).__name__})") from None


# --- a whole sweep --------------------------------------------------------------------------


@dataclass
class SweepProgress:
    total: int  # cells in the sweep
    skipped: int  # already in the store
    done: int  # run now
    workers: dict[str, int]  # cells per worker
    damaged: list[str] = field(default_factory=list)  # parts that did not read, set aside: their cells run again
    warnings: list[str] = field(default_factory=list)  # of the populations run now: a user's rule that raised


def _missing(sweep: SweepFile, cells: list[Cell], store: Store) -> list[Population]:
    """The populations of the cells not yet in the store."""
    data = sweep.data
    finished = store.finished() if store.cells_dir.is_dir() else set()
    todo = [c for c in cells if c.id not in finished]
    return populations(todo, data.get("population", DEFAULT_POPULATION), data.get("device", "cpu"),
                       data.get("threads", 1))


def _check_device(sweep: SweepFile, executor: Executor, cells: list[Cell]) -> None:
    """A GPU asked for where the populations will run here (in-process, local processes, a
    LocalCluster) must be here, before anything is written. A scheduler's workers are elsewhere:
    their GPUs are theirs to check."""
    from optbench.backend import select_device

    remote = executor.dask not in (None, "local") or (executor.client is not None and executor.dask is None)
    if not remote and sweep.data.get("device") == "gpu" and any(c.problem["kind"] == "mnist" for c in cells):
        try:
            select_device("gpu")
        except OptbenchError as exc:
            raise sweep.error(str(exc), "device") from None


def run_sweep(sweep: SweepFile, out: Path, executor: Executor | None = None,
              on_population: Callable[[SweepProgress], None] | None = None) -> SweepProgress:
    """Run the cells of `sweep` missing from the store at `out`, writing each population as it
    finishes; return the counts (`on_population` hears them once before anything runs and
    after each population). Ctrl-C (or SIGTERM) stops it with every finished cell kept and the
    manifest marked interrupted."""
    executor = executor or Executor()
    executor.check()
    executor.open()
    try:
        return _run(sweep, Store(out), executor, on_population)
    finally:
        executor.close()


def _run(sweep: SweepFile, store: Store, executor: Executor, on_population) -> SweepProgress:
    if not store.may_write():  # an MNIST run folder, say: its manifest would be overwritten by the sweep's
        raise OptbenchError(f"{store.root} is not a sweep store and not empty: give --out a new folder or a store")
    if sweep.data.get("device") == "auto":
        # A cell is named by the device it ran on (float32 there is another result): resolved here.
        from optbench.backend import gpu_available

        sweep.data["device"] = "gpu" if gpu_available() else "cpu"
    cells = expand(sweep)
    try:  # read before the lock only to check: the cells a finished GPU store has need no GPU now
        finished = store.finished() if store.cells_dir.is_dir() else set()
    except OptbenchError:  # a damaged part, set aside under the lock: count its cells as missing
        finished = set()
    missing = [c for c in cells if c.id not in finished]
    _check_device(sweep, executor, missing)
    if missing:
        executor.pin_gpus(sweep.data.get("device", "cpu"))
    with store.locked():
        return _run_locked(sweep, store, executor, on_population, cells)


def _run_locked(sweep: SweepFile, store: Store, executor: Executor, on_population, cells: list[Cell]) -> SweepProgress:
    from optbench import __version__
    from optbench.backend import cpu_facts
    from optbench.experiment import git_commit

    damaged = store.set_aside_damaged()
    pops = _missing(sweep, cells, store)
    store.prepare()
    progress = SweepProgress(len(cells), len(cells) - sum(len(p.cells) for p in pops), 0, {}, damaged)
    manifest = {"kind": "sweep", "optbench": __version__, "sweep_file": str(sweep.path), "sweep": sweep.data,
                "command": sys.argv, "executor": executor.label, "cells": progress.total, "status": "running",
                "started": datetime.now().isoformat(timespec="seconds"), "device": cpu_facts(), "git_commit": git_commit()}
    store.write_manifest(manifest)
    if on_population:
        on_population(progress)  # the counts before anything runs: a progress bar's total

    def done(population: Population, parts: dict) -> None:
        store.write(population.id, parts)
        progress.done += len(population.cells)
        progress.workers[parts["worker"]] = progress.workers.get(parts["worker"], 0) + len(population.cells)
        progress.warnings += parts.get("warnings", [])
        if on_population:
            on_population(progress)

    status = "failed"
    try:
        executor.map(pops, done)
        status = "finished"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
        status = "interrupted"
        raise
    finally:
        manifest.update(status=status, written=datetime.now().isoformat(timespec="seconds"),
                        finished_cells=progress.skipped + progress.done, warnings=progress.warnings)
        store.write_manifest(manifest)
    return progress


# --- reading a store back -------------------------------------------------------------------

AGGREGATE_COLUMNS = ["problem", "optimizer", "lr", "schedule", "seeds", "finished", "diverged", "metric",
                     "metric_median", "metric_min", "metric_max", "reached", "steps_to_target_median"]


def labelled(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells whose names tell apart what ran differently: a problem name shared by two problems
    (different tolerances, batch sizes, ...) gets its id; an optimizer that ran with several
    sets of hyperparameters gets them ('momentum {"momentum": 0.95}')."""
    if not len(cells):  # a store interrupted before its first population: no columns either
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in _schema()[0].items()})
    cells = cells.copy()
    shared = cells.groupby("problem")["problem_id"].transform("nunique") > 1
    cells.loc[shared, "problem"] = cells.loc[shared, "problem"] + " [" + cells.loc[shared, "problem_id"].str[:6] + "]"
    several = cells.groupby("optimizer")["hparams"].transform("nunique") > 1
    cells.loc[several, "optimizer"] = cells.loc[several, "optimizer"] + " " + cells.loc[several, "hparams"]
    return cells


def current_cells(store: "Store") -> tuple[pd.DataFrame, int]:
    """The store's cells of the sweep its manifest last ran, and how many others (from earlier
    versions of the sweep file) it also holds."""
    cells, manifest = store.cells(), store.manifest()
    data = manifest.get("sweep")
    if not len(cells) or not data:
        return cells, 0
    try:
        ids = {c.id for c in expand(SweepFile(Path(manifest.get("sweep_file", "sweep.toml")), "", data))}
    except OptbenchError:
        return cells, 0
    mine = cells["cell"].isin(ids)
    return cells[mine].reset_index(drop=True), int((~mine).sum())


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per problem, optimizer, lr and schedule over seeds (and starts): the final loss
    (surfaces) or final test accuracy (MNIST), its median and range, how many reached the target
    and their median steps to it; best first within each problem."""
    if not len(cells):
        return pd.DataFrame(columns=AGGREGATE_COLUMNS)
    cells = labelled(cells)
    rows = []
    for (_, problem, optimizer, lr, schedule), group in cells.groupby(
            ["problem_id", "problem", "optimizer", "lr", "schedule"], sort=False):
        surface = group["kind"].iloc[0] == "surface"
        metric = "final_loss" if surface else "final_test_acc"
        ok = ~group["diverged"].astype(bool) & (group["status"] != "failed")  # a failed rule's numbers are none
        values = pd.to_numeric(group[metric], errors="coerce").where(ok)
        steps = pd.to_numeric(group["steps_to_tol" if surface else "steps_to_target"], errors="coerce")
        rows.append({"problem": problem, "optimizer": optimizer, "lr": lr, "schedule": schedule, "seeds": len(group),
                     "finished": int((group["status"] == "finished").sum()), "diverged": int(group["diverged"].astype(bool).sum()),
                     "metric": metric, "metric_median": values.median(), "metric_min": values.min(),
                     "metric_max": values.max(), "reached": int(steps.notna().sum()),
                     "steps_to_target_median": steps.median()})
    frame = pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)
    if not len(frame):
        return frame
    # Best first per problem: most reached, then the metric (low loss, high accuracy).
    frame["_sign"] = np.where(frame["metric"] == "final_loss", 1.0, -1.0)
    frame["_key"] = frame["_sign"] * frame["metric_median"]
    order = frame.sort_values(["problem", "reached", "_key"], ascending=[True, False, True], kind="stable",
                              na_position="last").index
    return frame.loc[order].drop(columns=["_sign", "_key"]).reset_index(drop=True)
