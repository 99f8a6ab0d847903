"""The core of `optbench mnist` and `optbench report`: train, record, write, read back.

Knows nothing of the terminal. Every optimizer of a comparison starts from the same initial
weights (one seed) and sees the same batches (`training.batch_order`).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from optbench import __version__, datasets, results
from optbench.backend import Device
from optbench.errors import OptbenchError
from optbench.mlp import MLP, check_options
from optbench.optimizers import OPTIMIZERS, defaults_of, instantiate
from optbench.training import TrainLog, train

# torch.optim's default lr for each optimizer, except plain SGD and its momentum variants, whose
# torch default (1e-3) barely moves this network in 5 epochs: they get the seed comparison's 0.01.
MNIST_LRS = {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01}

CURVE_COLUMNS = ["optimizer", "device", "epoch", "iteration", "train_loss"]
EPOCH_COLUMNS = ["optimizer", "device", "epoch", "train_loss", "test_loss", "test_acc", "epoch_seconds", "samples_per_s", "iteration"]
SUMMARY_COLUMNS = [
    "optimizer", "device", "lr", "epochs", "final_test_acc", "best_test_acc", "final_train_loss",
    "mean_epoch_seconds", "samples_per_s", "diverged", "status",
]


@dataclass
class MnistConfig:
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
    seed: int = 0
    train_size: int | None = None  # the first N training images (all when None)
    test_size: int | None = None
    cuda_graph: bool = False  # replay forward and backward as one CUDA graph (`graphs`)

    def check(self) -> None:
        check_options(self.activation, self.init, self.dropout, prefix="--")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise OptbenchError(f"invalid --{name.replace('_', '-')} {getattr(self, name)} (must be >= 1)")
        for name in ("iterations", "eval_every", "train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptbenchError(f"invalid --{name.replace('_', '-')} {value} (must be >= 1)")
        if self.train_size is not None and self.train_size < self.batch_size:
            raise OptbenchError(f"--batch-size {self.batch_size} is larger than --train-size {self.train_size}")
        if self.weight_decay < 0:
            raise OptbenchError(f"invalid --weight-decay {self.weight_decay} (must be >= 0)")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise OptbenchError(f"invalid --hidden {','.join(map(str, self.hidden))} (positive layer widths)")
        if self.cuda_graph and (self.dropout > 0 or self.batchnorm):
            raise OptbenchError("--cuda-graph does not support --dropout or --batchnorm (they do not survive replay)")

    def check_device(self, device: Device) -> None:
        if self.cuda_graph and device.name != "gpu":
            raise OptbenchError(f"--cuda-graph needs the GPU (--device gpu; this run is on {device.name})")


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptbenchError(f"invalid --hidden {text!r} (comma-separated widths, e.g. 100,100,100,100)") from None
    if not widths or min(widths) < 1:
        raise OptbenchError(f"invalid --hidden {text!r} (comma-separated positive widths)")
    return widths


def default_mnist_lr(label: str, cls: type) -> float:
    if cls is OPTIMIZERS.get(label) and label in MNIST_LRS:
        return MNIST_LRS[label]
    return float(defaults_of(cls).get("lr", 1e-3))


def load_data(config: MnistConfig, data_dir, device: Device, progress=None, notify=None):
    """Train and test arrays on the device, cut to the requested sizes."""
    x_train, y_train, x_test, y_test = datasets.load(config.dataset, data_dir, progress=progress, notify=notify)
    n_train, n_test = config.train_size or len(x_train), config.test_size or len(x_test)
    xp = device.xp
    return tuple(
        xp.asarray(a)
        for a in (x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test])
    )


def build_network(config: MnistConfig, device: Device, n_inputs: int = 784, n_classes: int = 10) -> MLP:
    return MLP(
        (n_inputs, *config.hidden, n_classes), activation=config.activation, init=config.init,
        dropout=config.dropout, batchnorm=config.batchnorm, seed=config.seed, xp=device.xp,
    )


@dataclass
class OptimizerRun:
    """One optimizer's training, as records ready for the CSV files."""

    label: str
    lr: float
    log: TrainLog
    device: str
    per_epoch: int
    batch_size: int
    hparams: dict = field(default_factory=dict)  # every hyperparameter the optimizer ran with

    @property
    def status(self) -> str:
        return "diverged" if self.log.diverged else "interrupted" if self.log.interrupted else "finished"

    def curves(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.log.iterations, columns=["epoch", "iteration", "train_loss"])
        return frame.assign(optimizer=self.label, device=self.device)[CURVE_COLUMNS]

    def epochs(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.log.evaluations, columns=[c for c in EPOCH_COLUMNS if c not in ("optimizer", "device")])
        return frame.assign(optimizer=self.label, device=self.device)[EPOCH_COLUMNS]

    def summary(self) -> dict:
        evals = self.log.evaluations
        # Timed steps and seconds over all evaluated intervals (the timing of each is recorded
        # as a rate; steps * batch / rate gives its seconds back).
        steps = np.diff([0] + [e["iteration"] for e in evals])
        seconds = sum(n * self.batch_size / e["samples_per_s"] for n, e in zip(steps, evals))
        timed = int(steps.sum())
        return {
            "optimizer": self.label,
            "device": self.device,
            "lr": self.lr,
            "epochs": round(len(self.log.iterations) / self.per_epoch, 3),
            "final_test_acc": evals[-1]["test_acc"] if evals else np.nan,
            "best_test_acc": max(e["test_acc"] for e in evals) if evals else np.nan,
            "final_train_loss": evals[-1]["train_loss"] if evals else np.nan,
            "mean_epoch_seconds": seconds * self.per_epoch / timed if timed else np.nan,
            "samples_per_s": timed * self.batch_size / seconds if timed else np.nan,
            "diverged": self.log.diverged,
            "status": self.status,
        }


def train_optimizer(label, cls, hparams, config: MnistConfig, data, device: Device, *, lr=None, on_step=None, on_eval=None) -> OptimizerRun:
    """Train a fresh network (the config's seed: the same start for everyone) with one optimizer."""
    chosen_lr = hparams.get("lr", lr if lr is not None else default_mnist_lr(label, cls))
    optimizer = instantiate(cls, **{**hparams, "lr": chosen_lr})
    x_train, y_train, x_test, y_test = data
    net = build_network(config, device, n_inputs=x_train.shape[1])
    log = train(
        net, optimizer, x_train, y_train, x_test, y_test,
        epochs=config.epochs, iterations=config.iterations, eval_every=config.eval_every,
        batch_size=config.batch_size, seed=config.seed, weight_decay=config.weight_decay,
        sync=device.sync, on_step=on_step, on_eval=on_eval, cuda_graph=config.cuda_graph,
    )
    used = dict(getattr(optimizer, "hparams", {**hparams, "lr": chosen_lr}))
    return OptimizerRun(label, chosen_lr, log, device.name, len(x_train) // config.batch_size, config.batch_size, used)


def default_run_name(config: MnistConfig, device: Device) -> str:
    return f"{config.dataset}-{device.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def manifest(config: MnistConfig, device: Device, runs: list[OptimizerRun], status: str, started: str) -> dict:
    return {
        "optbench": __version__,
        "command": sys.argv,
        "status": status,
        "started": started,
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "config": asdict(config),
        "optimizers": {r.label: {**r.hparams, "status": r.status} for r in runs},
        "device": device.facts,
        "git_commit": _git_commit(),
    }


def sort_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Best test accuracy first; diverged runs last."""
    return summary.sort_values(["diverged", "best_test_acc"], ascending=[True, False], kind="stable").reset_index(drop=True)


def write_run(folder: Path, runs: list[OptimizerRun], meta: dict, *, plot: bool = True) -> list[Path]:
    """Write (or rewrite, as optimizers finish) every file of a run folder, each atomically."""
    folder = results.prepare_dir(folder)
    curves = pd.concat([r.curves() for r in runs], ignore_index=True) if runs else pd.DataFrame(columns=CURVE_COLUMNS)
    epochs = pd.concat([r.epochs() for r in runs], ignore_index=True) if runs else pd.DataFrame(columns=EPOCH_COLUMNS)
    summary = sort_summary(pd.DataFrame([r.summary() for r in runs], columns=SUMMARY_COLUMNS))
    written = [
        results.write_csv(curves, folder / "curves.csv"),
        results.write_csv(epochs, folder / "epochs.csv"),
        results.write_csv(summary, folder / "summary.csv"),
        results.write_json(meta, folder / "manifest.json"),
    ]
    if plot and runs:
        written += draw_run_plots(folder, curves, epochs, summary)
    return written


def draw_run_plots(folder: Path, curves: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    from optbench import plots

    return [
        plots.save_loss_curves(curves, folder / "loss.png"),
        plots.save_accuracy(epochs, folder / "accuracy.png"),
        plots.save_epoch_times(summary, folder / "time.png"),
    ]


def read_runs(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict]]:
    """Curves, epochs and summaries of saved runs, concatenated, with each run's manifest."""
    curves, epochs, summaries, metas = [], [], [], []
    for folder in folders:
        folder = Path(folder)
        if not (folder / "summary.csv").exists():
            raise OptbenchError(f"{folder} is not an optbench mnist run folder (no summary.csv)")
        summary = results.read_csv(folder / "summary.csv")
        missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns and c != "status"]
        if missing:
            raise OptbenchError(f"{folder / 'summary.csv'}: missing columns {', '.join(missing)}")
        summaries.append(summary.assign(run=folder.name))
        curves.append(results.read_csv(folder / "curves.csv").assign(run=folder.name))
        epochs.append(results.read_csv(folder / "epochs.csv").assign(run=folder.name))
        try:
            metas.append(json.loads((folder / "manifest.json").read_text()))
        except (OSError, ValueError):
            metas.append({})
    return (pd.concat(curves, ignore_index=True), pd.concat(epochs, ignore_index=True),
            pd.concat(summaries, ignore_index=True), metas)


def label_by_run(curves: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame):
    """When one optimizer ran on one device in several runs, name each `optimizer [run]`, so
    that tables and plots keep them apart."""
    if not summary.duplicated(["optimizer", "device"]).any():
        return curves, epochs, summary

    def relabel(frame):
        return frame.assign(optimizer=frame["optimizer"] + " [" + frame["run"] + "]")

    return relabel(curves), relabel(epochs), relabel(summary)


def device_comparison(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Per optimizer, samples/s and s/epoch on each device and the GPU/CPU speed-up; None
    unless the runs cover both devices."""
    if not {"cpu", "gpu"} <= set(summary["device"]):
        return None
    wide = summary.pivot_table(index="optimizer", columns="device", values=["samples_per_s", "mean_epoch_seconds", "best_test_acc"], aggfunc="first")
    table = pd.DataFrame({
        "optimizer": wide.index,
        "cpu_samples_per_s": wide[("samples_per_s", "cpu")].to_numpy(),
        "gpu_samples_per_s": wide[("samples_per_s", "gpu")].to_numpy(),
        "cpu_epoch_seconds": wide[("mean_epoch_seconds", "cpu")].to_numpy(),
        "gpu_epoch_seconds": wide[("mean_epoch_seconds", "gpu")].to_numpy(),
        "cpu_best_test_acc": wide[("best_test_acc", "cpu")].to_numpy(),
        "gpu_best_test_acc": wide[("best_test_acc", "gpu")].to_numpy(),
    })
    table["gpu_speedup"] = table["gpu_samples_per_s"] / table["cpu_samples_per_s"]
    return table.sort_values("gpu_speedup", ascending=False).reset_index(drop=True)
