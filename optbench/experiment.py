"""An experiment: what to train (problem, members, steps, data) and its run, as DataFrames.

The one pipeline behind `optbench mnist`, `optbench regress` and the Python API:

    from optbench import Experiment, MnistProblem
    result = Experiment(optimizers=["adam", "sgd"], seeds=5, problem=MnistProblem(epochs=1)).run()
    result.aggregate            # one row per (optimizer, lr): mean, std, min, max over seeds

A member is (optimizer, hyperparameters, lr, seed). Every optimizer trains at every lr (`lrs`,
else its own) and every seed (`seed` .. `seed + seeds - 1`); all members train together as one
population (`training.train_population`), split into chunks only when it would not fit in
memory. A seed sets the initial weights and the batch order: members of one seed start alike
and see the same batches. `tune` picks each optimizer's lr on a validation split first.

Knows nothing of the terminal: progress goes to an optional reporter. Nothing is written but the
data's own cache (`datasets.load`, which downloads and caches MNIST the first time) unless
`Results.write` is called.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from optbench import __version__, datasets, spread, targets
from optbench.backend import Device, select_device
from optbench.errors import OptbenchError
from optbench.mlp import Population, check_options, parameter_count
from optbench.optimizers import defaults_of, instantiate, optimizer_label, resolve_hparams, select_optimizers, table_lr
from optbench.schedules import CONSTANT, Schedule
from optbench.targets import TARGET_COLUMNS
from optbench.training import PopulationLog, train_population

# torch.optim's default lr for each optimizer, except plain SGD and its momentum variants, whose
# torch default (1e-3) barely moves this network in 5 epochs: they get the seed comparison's 0.01.
MNIST_LRS = {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01}
# --tune: the default lr times 10^(k/2), k = -3 .. 3: seven lrs, half a decade apart, from
# 1/31.6 to 31.6 times the default.
TUNE_FACTORS = tuple(10 ** (k / 2) for k in range(-3, 4))
TUNE_VALIDATION = 10_000  # images held out for --tune unless --validation says otherwise
MEMORY_FRACTION = 0.5  # of the machine's (or the GPU's free) memory, for one population

CURVE_COLUMNS = ["optimizer", "device", "lr", "seed", "epoch", "iteration", "train_loss"]
EPOCH_COLUMNS = ["optimizer", "device", "lr", "seed", "epoch", "iteration", "train_loss", "val_loss", "val_acc",
                 "test_loss", "test_acc", "epoch_seconds", "samples_per_s"]
SUMMARY_COLUMNS = [
    "optimizer", "device", "lr", "schedule", "seed", "epochs", "final_test_acc", "best_test_acc", "final_val_acc", "best_val_acc",
    "final_train_loss", "mean_epoch_seconds", "samples_per_s", *TARGET_COLUMNS, "diverged", "status",
]
TUNING_COLUMNS = ["optimizer", "lr", "seed", "final_val_acc", "best_val_acc", "final_val_loss", "final_train_loss",
                  "diverged", "status", "chosen"]


@dataclass
class MnistProblem:
    """The data set, the network and how it trains: what every member of an experiment shares."""

    dataset: str = "mnist"
    hidden: tuple[int, ...] = (100, 100, 100, 100)
    activation: str = "relu"
    init: str = "he"
    dropout: float = 0.0
    batchnorm: bool = False
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 5
    iterations: int | None = None
    eval_every: int | None = None
    shuffle: bool = True
    train_size: int | None = None  # the first N training images (all when None)
    test_size: int | None = None
    validation: int | None = None  # the last N of those training images, held out (None: none, or 10,000 to tune)
    cuda_graph: bool = False  # replay gather, forward and backward as one CUDA graph (`graphs`)
    data_dir: str | None = None
    schedule: Schedule = CONSTANT  # of every member's lr, its peak (what --lr and --tune set)
    target: float | None = None  # test accuracy to reach (a fraction; None: the data set's, `targets`)
    target_loss: float | None = None  # train loss to reach (None: not checked)

    def check(self) -> None:
        datasets.get_spec(self.dataset)
        check_options(self.activation, self.init, self.dropout, prefix="--")
        for name in ("batch_size", "epochs", "iterations", "eval_every", "train_size", "test_size", "validation"):
            value = getattr(self, name)
            if value is None and name not in ("batch_size", "epochs"):
                continue
            if not _whole(value) or value < 1:
                raise OptbenchError(f"invalid --{name.replace('_', '-')} {value!r} (a whole number >= 1)")
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Sequence) or not all(map(_whole, self.hidden)):
            raise OptbenchError(f"invalid hidden {self.hidden!r} (the layer widths, e.g. (100, 100); "
                                "--hidden 100,100 on the command line)")
        if not isinstance(self.schedule, Schedule):
            raise OptbenchError(f"invalid schedule {self.schedule!r} (a Schedule, e.g. Schedule('cosine', warmup=0.1))")
        if not (isinstance(self.weight_decay, Real) and math.isfinite(self.weight_decay)):
            raise OptbenchError(f"invalid --weight-decay {self.weight_decay!r} (a finite number >= 0)")
        if self.train_size is not None and self.train_size > datasets.TRAIN_IMAGES:
            raise OptbenchError(f"--train-size {self.train_size}: {self.dataset} has {datasets.TRAIN_IMAGES:,} training images")
        if self.test_size is not None and self.test_size > datasets.TEST_IMAGES:
            raise OptbenchError(f"--test-size {self.test_size}: {self.dataset} has {datasets.TEST_IMAGES:,} test images")
        train = self.train_size or datasets.TRAIN_IMAGES
        if self.validation is not None and self.validation >= train:
            raise OptbenchError(f"--validation {self.validation} leaves no training images (the training set has {train})")
        if train - (self.validation or 0) < self.batch_size:
            named = f"--train-size {self.train_size}" if self.train_size else f"the training set ({train} images)"
            held = f" less --validation {self.validation}" if self.validation else ""
            raise OptbenchError(f"--batch-size {self.batch_size} is larger than {named}{held}")
        if self.weight_decay < 0:
            raise OptbenchError(f"invalid --weight-decay {self.weight_decay} (must be >= 0)")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise OptbenchError(f"invalid --hidden {','.join(map(str, self.hidden))} (positive layer widths)")
        if self.cuda_graph and (self.dropout > 0 or self.batchnorm):
            raise OptbenchError("--cuda-graph does not support --dropout or --batchnorm (they do not survive replay)")
        self.schedule.check(self.total_steps)
        if self.target is not None and not 0 < self.target <= 1:
            raise OptbenchError(f"invalid target: a test accuracy of {100 * self.target:g} % (--target takes percent "
                                f"in (0, 100]; the Python API's MnistProblem a fraction in (0, 1])")
        if self.target_loss is not None and not (math.isfinite(self.target_loss) and self.target_loss > 0):
            raise OptbenchError(f"invalid --target-loss {self.target_loss} (must be a finite number > 0)")

    @property
    def target_accuracy(self) -> float:
        return self.target if self.target is not None else targets.default_accuracy(self.dataset)

    @property
    def total_steps(self) -> int:
        """Training steps of each member: --iterations, else epochs of full batches."""
        train = (self.train_size or datasets.TRAIN_IMAGES) - (self.validation or 0)
        return self.iterations or self.epochs * (train // self.batch_size)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (784, *self.hidden, 10)


def default_lr(label: str, cls: type) -> float:
    """An optimizer's lr on MNIST when nothing sets it: the table above, else the class default."""
    return table_lr(MNIST_LRS, label, cls)


def learning_rates(hparams: dict, lrs: Sequence[float], default: float) -> list[float]:
    """The lrs one optimizer trains at. Precedence: its own `--hp [name.]lr=`, then every
    `--lr` given, then `default` (a problem's table, else the class's default)."""
    if "lr" in hparams:
        return [float(hparams["lr"])]
    return [float(lr) for lr in lrs] or [float(default)]


def _whole(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_lr(lr: float, option: str = "--lr") -> None:
    if not (isinstance(lr, Real) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise OptbenchError(f"invalid {option} {lr} (must be a finite number > 0)")


@dataclass(frozen=True)
class Member:
    """One training: an optimizer with its hyperparameters, an lr and a seed."""

    optimizer: str
    cls: type
    hparams: dict
    lr: float
    seed: int

    def build(self):
        return instantiate(self.cls, **{**self.hparams, "lr": self.lr})


@dataclass
class Results:
    """What an experiment produced, as the tables the CLI writes."""

    summary: pd.DataFrame
    aggregate: pd.DataFrame
    curves: pd.DataFrame
    epochs: pd.DataFrame
    tuning: pd.DataFrame | None
    manifest: dict

    @property
    def status(self) -> str:
        return self.manifest["status"]

    def write(self, folder, *, plot: bool = True) -> list[Path]:
        """Every file of a run folder, each written atomically."""
        from optbench import runs

        return runs.write_run(Path(folder), self, plot=plot)


@dataclass
class Experiment:
    """Optimizers × lrs × seeds on one problem. `optimizers` holds names (`all` included),
    `module:Class` strings or classes; `hp` takes `--hp` strings (`momentum=0.95`,
    `adam.beta1=0.8`); `lrs` every lr each optimizer trains at (default: its own)."""

    optimizers: Sequence[Any] = ("adam",)
    problem: MnistProblem = field(default_factory=MnistProblem)
    lrs: Sequence[float] = ()
    hp: Sequence[str] = ()
    seeds: int = 1
    seed: int = 0
    tune: bool = False
    device: str = "cpu"
    max_population: int | None = None

    def __post_init__(self) -> None:
        # One name, one --hp string or one lr, as a notebook writes them, stand for a list of one.
        if isinstance(self.optimizers, str) or isinstance(self.optimizers, type):
            self.optimizers = (self.optimizers,)
        if isinstance(self.hp, str):
            self.hp = (self.hp,)
        if isinstance(self.lrs, Real):
            self.lrs = (self.lrs,)

    def check(self) -> None:
        """Refuse bad settings before anything is trained or written."""
        if not isinstance(self.problem, MnistProblem):
            raise OptbenchError(f"invalid problem {self.problem!r} (an MnistProblem)")
        for entry in self.optimizers:
            if not isinstance(entry, (str, type)):
                hint = f" (pass the class {type(entry).__name__} itself)" if callable(getattr(entry, "update", None)) else ""
                raise OptbenchError(f"optimizers takes names, 'module:Class' strings or classes: got {entry!r}{hint}")
            if isinstance(entry, type) and not (callable(getattr(entry, "init", None)) and callable(getattr(entry, "update", None))):
                raise OptbenchError(f"{entry.__name__} is not an optimizer class with init(p) and update(p, g, state)")
        if not _whole(self.seeds) or self.seeds < 1:
            raise OptbenchError(f"invalid --seeds {self.seeds} (a whole number >= 1)")
        if not _whole(self.seed) or self.seed < 0:
            raise OptbenchError(f"invalid --seed {self.seed} (a whole number >= 0)")
        if self.max_population is not None and (not _whole(self.max_population) or self.max_population < 1):
            raise OptbenchError(f"invalid --max-population {self.max_population} (a whole number >= 1)")
        for lr in self.lrs:
            check_lr(lr)
        if self.tune and self.lrs:
            raise OptbenchError("--tune chooses the lr itself: give --tune or --lr, not both")
        self.problem.check()
        if self.tune:
            train = self.problem.train_size or datasets.TRAIN_IMAGES
            if self.problem.validation is None and TUNE_VALIDATION >= train:
                raise OptbenchError(f"--tune holds out {TUNE_VALIDATION:,} training images for validation, and only {train} are used:"
                                    " pass a smaller --validation N")
            self.tuned_problem().check()
        self.members()

    def tuned_problem(self) -> MnistProblem:
        """The problem as trained: with --tune, a validation split of TUNE_VALIDATION unless set."""
        if self.tune and self.problem.validation is None:
            return replace(self.problem, validation=TUNE_VALIDATION)
        return self.problem

    def selected(self) -> list[tuple[str, type, dict]]:
        """(label, class, typed hyperparameters) per optimizer, in order."""
        specs = [o for o in self.optimizers if isinstance(o, str)]
        classes = [o for o in self.optimizers if isinstance(o, type)]
        pairs = select_optimizers(specs, default="adam") if specs or not classes else []
        for cls in classes:
            label = optimizer_label(cls)
            if any(label == existing for existing, _ in pairs):
                raise OptbenchError(f"two optimizers are both called {label!r}: give {cls.__name__} a `name` of its own")
            pairs.append((label, cls))
        typed = resolve_hparams(pairs, list(self.hp))
        return [(label, cls, typed[label]) for label, cls in pairs]

    def members(self, lrs: dict[str, list[float]] | None = None, seeds: Sequence[int] | None = None) -> list[Member]:
        """Every member, seed by seed (members of a seed are contiguous: they share batches),
        then optimizer, then lr; each built once so that a bad hyperparameter stops us now."""
        chosen = []
        for label, cls, hparams in self.selected():
            rest = {k: v for k, v in hparams.items() if k != "lr"}
            for lr in (lrs or {}).get(label) or learning_rates(hparams, self.lrs, default_lr(label, cls)):
                check_lr(lr, f"{label}: lr")
                chosen.append((label, cls, rest, lr))
        seeds = list(seeds) if seeds is not None else list(range(self.seed, self.seed + self.seeds))
        members = [Member(label, cls, rest, lr, s) for s in seeds for label, cls, rest, lr in chosen]
        for member in members[: len(chosen)]:
            member.build()
        return members

    def tuning_lrs(self) -> dict[str, list[float]]:
        """The grid each optimizer is tuned over: its lr (see `learning_rates`) times TUNE_FACTORS."""
        grids = {}
        for label, cls, hparams in self.selected():
            centre = learning_rates(hparams, (), default_lr(label, cls))[0]
            grids[label] = [centre * f for f in TUNE_FACTORS]
        return grids

    def run(self, reporter=None, data=None, device: Device | None = None, adjust_weights=None,
            members: list[Member] | None = None) -> Results:
        """Train every member; `reporter` (optional) hears of progress (see `Reporter`).

        `data` (x_train, y_train, x_test, y_test) on the device skips loading;
        `adjust_weights(population)` may change the initial weights (regress nudges them);
        `members` trains exactly those instead of the product of optimizers, lrs and seeds
        (a sweep's cells; not with tune). Ctrl-C returns what was trained, marked interrupted.
        """
        if members is not None and self.tune:
            raise OptbenchError("an explicit list of members is trained as given: not with tune")
        self.check()
        device = device or select_device(self.device)
        if self.problem.cuda_graph and device.name != "gpu":
            raise OptbenchError(f"--cuda-graph needs the GPU (--device gpu; this run is on {device.name})")
        reporter = reporter or Reporter()
        started = dt.datetime.now().isoformat(timespec="seconds")
        problem = self.tuned_problem()
        splits = split_data(problem, data if data is not None else load_data(problem, device, reporter))
        run = _Run(self, problem, device, reporter, started, adjust_weights)
        try:
            if self.tune:
                first = self.members(self.tuning_lrs(), seeds=[self.seed])
                reporter.phase(f"tuning: {len(first)} members on the validation split")
                run.train(first, splits, {"val": splits["val"]}, phase="tune")
                run.tuning = choose_lrs(run.tuned)
                best = {row.optimizer: [row.lr] for row in run.tuning[run.tuning["chosen"]].itertuples()}
                for label, grid in run.tuning.groupby("optimizer", sort=False):
                    if label not in best and not run.interrupted:
                        what = "diverged" if grid["diverged"].all() else "diverged or failed"
                        reporter.warn(f"{label}: every lr of the tuning grid {what}; it is left out of the final runs")
                if not run.interrupted and best:
                    final = [m for m in self.members(best) if m.optimizer in best]
                    reporter.phase(f"chosen lrs over {self.seeds} seed(s): {len(final)} members")
                    run.train(final, splits, _eval_sets(splits))
            else:
                run.train(self.members() if members is None else members, splits, _eval_sets(splits))
        except KeyboardInterrupt:
            run.interrupted = True
            if self.tune and run.tuning is None and run.tuned:
                run.tuning = choose_lrs(run.tuned)  # what the grid had trained when Ctrl-C came
        try:
            return run.results()
        except KeyboardInterrupt:  # it came as the tables were put together: again, marked
            run.interrupted = True
            return run.results()


class Reporter:
    """Progress of a run, for a terminal or a notebook; every method may be left as it is."""

    def phase(self, text: str) -> None: ...

    def population(self, index: int, count: int, members: int, total_steps: int) -> None: ...

    def step(self, done: int) -> None: ...

    def evaluated(self, record: dict) -> None: ...

    def written(self, results: "Results") -> None: ...

    def download(self, filename: str, done: int, total: int) -> None: ...

    def warn(self, message: str) -> None: ...


def load_data(problem: MnistProblem, device: Device, reporter: Reporter | None = None):
    """Train and test arrays on the device, cut to the requested sizes."""
    reporter = reporter or Reporter()
    x_train, y_train, x_test, y_test = datasets.load(problem.dataset, problem.data_dir, progress=reporter.download,
                                                     notify=reporter.warn)
    n_train, n_test = problem.train_size or len(x_train), problem.test_size or len(x_test)
    xp = device.xp
    return tuple(xp.asarray(a) for a in (x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test]))


def split_data(problem: MnistProblem, data) -> dict[str, tuple]:
    """{"train", "val" (the last `validation` training images, when held out), "test"}."""
    x_train, y_train, x_test, y_test = data
    held = problem.validation or 0
    if held >= len(x_train) or len(x_train) - held < problem.batch_size:
        raise OptbenchError(f"--validation {held} and --batch-size {problem.batch_size} leave too few of the {len(x_train)} training images")
    splits = {"train": (x_train[: len(x_train) - held], y_train[: len(y_train) - held]), "test": (x_test, y_test)}
    if held:
        splits["val"] = (x_train[len(x_train) - held :], y_train[len(y_train) - held :])
    return splits


def _eval_sets(splits: dict) -> dict:
    return {name: splits[name] for name in ("val", "test") if name in splits}


# Arrays the size of a member's parameters besides them and their gradients: up to eight of
# optimizer state, scratch and temporaries (Prodigy: s, p0, m, v and three temporaries;
# AdEMAMix: three of state, three of scratch), and one copy while Schedule-Free is evaluated
# at its average.
STATE_ARRAYS = 8 + 1


def member_bytes(problem: MnistProblem) -> int:
    """Memory one member needs while it trains: parameters, gradients, the optimizer's arrays
    (`STATE_ARRAYS`), and its activations (forward and backward) for one batch."""
    params = parameter_count(problem.sizes, problem.batchnorm)
    activations = problem.batch_size * sum(problem.sizes[1:]) * 6
    return 4 * (params * (2 + STATE_ARRAYS) + activations)


def memory_budget(device: Device) -> int:
    """Bytes a population may take: a fraction of the GPU's free memory or the machine's RAM."""
    if device.name == "gpu":
        free, _ = device.xp.cuda.Device().mem_info
        cached = device.xp.get_default_memory_pool().free_bytes()  # held by CuPy's pool, reusable
        return int((free + cached) * MEMORY_FRACTION)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MEMORY_FRACTION)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class _Run:
    """The state of one experiment's run: populations trained so far and their records."""

    def __init__(self, experiment: Experiment, problem: MnistProblem, device: Device, reporter: Reporter, started: str,
                 adjust_weights=None):
        self.experiment, self.problem, self.device, self.reporter = experiment, problem, device, reporter
        self.adjust_weights = adjust_weights
        self.started = started
        self.trained: list[tuple[list[Member], PopulationLog, int]] = []  # the final phase's populations
        self.tuned: list[tuple[list[Member], PopulationLog]] = []  # the tuning phase's
        self.planned: list[Member] = []  # every member of the final phase, trained or not
        self.tuning: pd.DataFrame | None = None
        self.chunks: list[dict] = []
        self.interrupted = False

    def chunk_size(self) -> int:
        fits = max(1, memory_budget(self.device) // member_bytes(self.problem))
        return min(fits, self.experiment.max_population or fits)

    def train(self, members: list[Member], splits, eval_sets, phase: str = "final") -> None:
        """Train `members` in chunks that fit; each finished chunk is recorded at once, so that
        Ctrl-C anywhere keeps it."""
        size = self.chunk_size()
        # Chunks of near-equal sizes: no population of one left over (it would keep two-thread
        # BLAS, and so differ in the last bits from the rest; see `training.Shards`).
        bounds = np.linspace(0, len(members), -(-len(members) // size) + 1).round().astype(int)
        chunks = [members[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        reason = "none" if len(chunks) == 1 else "--max-population" if self.experiment.max_population == size else "memory"
        x_train, y_train = splits["train"]
        per_epoch = len(x_train) // self.problem.batch_size
        if phase == "final":
            self.planned = list(members)
        for index, chunk in enumerate(chunks):
            if self.interrupted:
                break
            log = self._train_chunk(chunk, x_train, y_train, eval_sets, index, len(chunks))
            for k, failure in sorted(log.failures.items()):
                m = chunk[k]
                self.reporter.warn(f"{m.optimizer} (lr {m.lr:g}, seed {m.seed}): its update raised {failure} at step "
                                   f"{int(log.diverged_at[k])}; frozen there and marked failed, the others go on")
            self.chunks.append({"phase": phase, "members": len(chunk), "limit": size, "reason": reason})
            if phase == "final":
                self.trained.append((chunk, log, per_epoch))
                self.reporter.written(self.results(status="running"))
            else:
                self.tuned.append((chunk, log))
            if log.interrupted:
                self.interrupted = True

    def _train_chunk(self, chunk: list[Member], x_train, y_train, eval_sets, index: int, count: int) -> PopulationLog:
        p = self.problem
        seeds = [m.seed for m in chunk]
        pop = Population(p.sizes, seeds, activation=p.activation, init=p.init, dropout=p.dropout, batchnorm=p.batchnorm,
                         xp=self.device.xp)
        if self.adjust_weights:
            self.adjust_weights(pop)
        group_seeds = list(dict.fromkeys(seeds))
        per_epoch = len(x_train) // p.batch_size
        total = p.iterations or p.epochs * per_epoch
        self.reporter.population(index, count, len(chunk), total)
        return train_population(
            pop, [m.build() for m in chunk], x_train, y_train, eval_sets, epochs=p.epochs, iterations=p.iterations,
            eval_every=p.eval_every, batch_size=p.batch_size, group_seeds=group_seeds, shuffle=p.shuffle,
            weight_decay=p.weight_decay, sync=self.device.sync, on_step=self.reporter.step,
            on_eval=self.reporter.evaluated, cuda_graph=p.cuda_graph, schedule=p.schedule,
        )

    def results(self, status: str | None = None) -> Results:
        device = self.device.name
        p = self.problem
        schedule = p.schedule.label()
        frames = [_member_frames(members, log, per_epoch, p.batch_size, device, schedule, p.target_accuracy,
                                 p.target_loss)
                  for members, log, per_epoch in self.trained]
        curves = _concat([f[0] for f in frames], CURVE_COLUMNS)
        epochs = _concat([f[1] for f in frames], EPOCH_COLUMNS)
        trained = {id(m) for members, _, _ in self.trained for m in members}
        # Members an interruption kept from starting: in the tables, marked, with no numbers.
        unstarted = pd.DataFrame([{"optimizer": m.optimizer, "device": device, "lr": m.lr, "schedule": schedule,
                                   "seed": m.seed, "epochs": 0.0,
                                   "diverged": False, "status": "interrupted"}
                                  for m in self.planned if id(m) not in trained], columns=SUMMARY_COLUMNS)
        summary = sort_summary(_concat([f[2] for f in frames] + [unstarted], SUMMARY_COLUMNS))
        if status is None:
            status = "interrupted" if self.interrupted or (summary["status"] == "interrupted").any() else "finished"
        return Results(summary, spread.aggregate(summary), curves, epochs, self.tuning, self.manifest(summary, status))

    def manifest(self, summary: pd.DataFrame, status: str) -> dict:
        e = self.experiment
        return {
            "optbench": __version__,
            "command": sys.argv,
            "status": status,
            "started": self.started,
            "written": dt.datetime.now().isoformat(timespec="seconds"),
            "config": {**asdict(self.problem), "seed": e.seed, "seeds": e.seeds, "lrs": list(e.lrs), "tune": e.tune,
                       "tune_factors": list(TUNE_FACTORS) if e.tune else None, "max_population": e.max_population},
            # lr: what each ran at (its default for MNIST, --lr, or the tuned one), not the class's default
            "optimizers": {label: {**defaults_of(cls), **hparams, "lr": lrs_run(summary.loc[summary["optimizer"] == label, "lr"])}
                           for label, cls, hparams in e.selected()},
            "members": summary[["optimizer", "lr", "seed", "status"]].to_dict("records"),
            "populations": self.chunks,
            "device": self.device.facts,
            "git_commit": git_commit(),
        }


def lrs_run(lrs) -> float | list[float] | None:
    """For a manifest: the lr an optimizer ran at, the list of them, or None (it did not run)."""
    lrs = list(dict.fromkeys(float(lr) for lr in lrs))
    return lrs[0] if len(lrs) == 1 else lrs or None


def _concat(frames, columns) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _member_frames(members: list[Member], log: PopulationLog, per_epoch: int, batch_size: int, device: str,
                   schedule: str = "constant", target_accuracy: float | None = None, target_loss: float | None = None):
    """curves, epochs and summary rows of one population's members."""
    curves, epochs, summary = [], [], []
    for k, m in enumerate(members):
        last = log.last_iteration(k)
        iterations = np.arange(1, last + 1)
        curves.append(pd.DataFrame({"optimizer": m.optimizer, "device": device, "lr": m.lr, "seed": m.seed,
                                    "epoch": (iterations - 1) // per_epoch + 1, "iteration": iterations,
                                    "train_loss": log.losses[k, :last]}))
        rows = [{
            "optimizer": m.optimizer, "device": device, "lr": m.lr, "seed": m.seed, "epoch": r["epoch"],
            "iteration": r["iteration"], "train_loss": r["train_loss"][k],
            "val_loss": r["val_loss"][k] if "val_loss" in r else np.nan, "val_acc": r["val_acc"][k] if "val_acc" in r else np.nan,
            "test_loss": r["test_loss"][k] if "test_loss" in r else np.nan, "test_acc": r["test_acc"][k] if "test_acc" in r else np.nan,
            "epoch_seconds": r["epoch_seconds"], "samples_per_s": r["samples_per_s"],
        } for r in log.evaluations if r["members"][k]]
        frame = pd.DataFrame(rows, columns=EPOCH_COLUMNS)
        epochs.append(frame)
        steps = np.diff([0] + list(frame["iteration"]))
        seconds = float((steps * batch_size / frame["samples_per_s"]).sum()) if len(frame) else 0.0
        timed = int(steps.sum())
        diverged = log.diverged(k)
        summary.append({
            "optimizer": m.optimizer, "device": device, "lr": m.lr, "schedule": schedule, "seed": m.seed,
            "epochs": round(last / per_epoch, 3),
            "final_test_acc": _last(frame["test_acc"]), "best_test_acc": frame["test_acc"].max() if len(frame) else np.nan,
            "final_val_acc": _last(frame["val_acc"]), "best_val_acc": frame["val_acc"].max() if len(frame) else np.nan,
            "final_train_loss": _last(frame["train_loss"]),
            "mean_epoch_seconds": seconds * per_epoch / timed if timed else np.nan,
            "samples_per_s": timed * batch_size / seconds if timed else np.nan,
            **targets.member_targets(frame, batch_size, target_accuracy, target_loss),
            "diverged": diverged,
            "status": log.status(k),
        })
    # A member that stopped before its first evaluation has no epoch rows; its empty frame (of
    # object columns) would turn every column of the concatenation into objects.
    evaluated = [frame for frame in epochs if len(frame)] or epochs[:1]
    return (pd.concat(curves, ignore_index=True), pd.concat(evaluated, ignore_index=True),
            pd.DataFrame(summary, columns=SUMMARY_COLUMNS))


def _last(column: pd.Series) -> float:
    return float(column.iloc[-1]) if len(column) else np.nan


def sort_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Best test accuracy first; members that stopped early (diverged, or their rule failed) last."""
    stopped = summary["diverged"].astype(bool) | (summary["status"] == "failed")
    return (summary.assign(_stopped=stopped).sort_values(["_stopped", "best_test_acc"], ascending=[True, False], kind="stable")
            .drop(columns="_stopped").reset_index(drop=True))


def choose_lrs(tuned: list[tuple[list[Member], PopulationLog]]) -> pd.DataFrame:
    """The tuning grid as tuning.csv rows, with each optimizer's chosen lr: the highest final
    validation accuracy, then the lower final validation loss, then the smaller lr; only a
    member that trained to the end is chosen (status finished: not diverged, not interrupted)."""
    rows = []
    for chunk, log in tuned:
        for k, m in enumerate(chunk):
            evals = [r for r in log.evaluations if r["members"][k]]
            rows.append({
                "optimizer": m.optimizer, "lr": m.lr, "seed": m.seed,
                "final_val_acc": evals[-1]["val_acc"][k] if evals else np.nan,
                "best_val_acc": max(r["val_acc"][k] for r in evals) if evals else np.nan,
                "final_val_loss": evals[-1]["val_loss"][k] if evals else np.nan,
                "final_train_loss": evals[-1]["train_loss"][k] if evals else np.nan,
                "diverged": log.diverged(k), "status": log.status(k),
                "chosen": False,
            })
    table = pd.DataFrame(rows, columns=TUNING_COLUMNS)
    usable = table[(table["status"] == "finished") & table["final_val_acc"].notna()]
    ranked = usable.assign(_acc=-usable["final_val_acc"]).sort_values(["optimizer", "_acc", "final_val_loss", "lr"], kind="stable")
    table.loc[ranked.groupby("optimizer", sort=False).head(1).index, "chosen"] = True
    return table


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None
