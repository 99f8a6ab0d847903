"""Run folders of `optbench mnist`: written atomically, read back (old layouts included), compared.

Knows nothing of the terminal. A folder holds curves.csv, epochs.csv, summary.csv (one row per
member), aggregate.csv (one row per optimizer and lr, over seeds), tuning.csv with --tune,
manifest.json and the plots.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from optbench import results, spread
from optbench.errors import OptbenchError
from optbench.experiment import CURVE_COLUMNS, EPOCH_COLUMNS, SUMMARY_COLUMNS, Results, sort_summary
from optbench.targets import TARGET_COLUMNS

# Columns a folder written before populations (or schedules) may lack; what they mean there.
# What `_complete` fills in for a folder written before these columns existed.
_OLD_COLUMNS = ("lr", "schedule", "seed", "val_loss", "val_acc", "final_val_acc", "best_val_acc", "status", *TARGET_COLUMNS)


def default_run_name(dataset: str, device: str) -> str:
    return f"{dataset}-{device}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_run(folder: Path, result: Results, *, plot: bool = True) -> list[Path]:
    """Write (or rewrite, as populations finish) every file of a run folder, each atomically;
    the manifest last, so that its status is only as final as the files before it."""
    folder = results.prepare_dir(folder)
    results.clear_temporaries(folder)
    try:
        return _write_files(folder, result, plot)
    except KeyboardInterrupt:  # a second Ctrl-C, or SIGTERM, while writing: each file is whole, the set is not
        result.manifest["status"] = "interrupted"
        results.write_json(result.manifest, folder / "manifest.json")
        raise


def _write_files(folder: Path, result: Results, plot: bool) -> list[Path]:
    written = [
        results.write_csv(result.curves, folder / "curves.csv"),
        results.write_csv(result.epochs, folder / "epochs.csv"),
        results.write_csv(result.summary, folder / "summary.csv"),
        results.write_csv(result.aggregate, folder / "aggregate.csv"),
    ]
    if result.tuning is not None:
        written.append(results.write_csv(result.tuning, folder / "tuning.csv"))
    if plot and len(result.summary):
        written += draw_run_plots(folder, result.curves, result.epochs, result.summary)
    if plot and result.tuning is not None and result.tuning["final_val_acc"].notna().any():  # none if cut short
        from optbench import plots

        written.append(plots.save_lr_sensitivity(result.tuning, "final_val_acc", folder / "lr_sensitivity.png",
                                                 ylabel="final validation accuracy (%)", scale=100))
    written.append(results.write_json(result.manifest, folder / "manifest.json"))
    return written


def draw_run_plots(folder: Path, curves: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    """loss.png, accuracy.png and time.png; none when no member trained."""
    if not len(curves) or not len(summary):
        return []
    from optbench import plots

    return [
        plots.save_loss_curves(curves, folder / "loss.png", summary),
        plots.save_accuracy(epochs, folder / "accuracy.png", summary),
        plots.save_epoch_times(summary, folder / "time.png"),
    ]


def read_runs(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict]]:
    """Curves, epochs and summaries of saved runs, concatenated, with each run's manifest.
    Folders written before populations (no lr or seed per row) read as one seed per row."""
    curves, epochs, summaries, metas = [], [], [], []
    for folder in folders:
        folder = Path(folder)
        if not (folder / "summary.csv").exists():
            raise OptbenchError(f"{folder} is not an optbench mnist run folder (no summary.csv)")
        meta = results.read_manifest(folder)
        config = meta.get("config")
        seed = int(config.get("seed", 0)) if isinstance(config, dict) else 0
        summary = _read(folder / "summary.csv", SUMMARY_COLUMNS, seed)
        summaries.append(summary.assign(run=folder.name))
        curves.append(_read(folder / "curves.csv", CURVE_COLUMNS, seed, summary).assign(run=folder.name))
        epochs.append(_read(folder / "epochs.csv", EPOCH_COLUMNS, seed, summary).assign(run=folder.name))
        metas.append(meta)
    return (pd.concat(curves, ignore_index=True), pd.concat(epochs, ignore_index=True),
            pd.concat(summaries, ignore_index=True), metas)


def _read(path: Path, columns: list[str], seed: int, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """One of a run folder's CSVs with `columns`, an old folder's completed (`_complete`, the lrs
    from `summary`); a file that lacks a column even so is named in one line."""
    frame = results.read_csv(path)
    try:
        return _complete(frame, seed, frame if summary is None else summary)[columns]
    except KeyError:
        missing = [c for c in columns if c not in frame.columns and c not in _OLD_COLUMNS]
        missing = missing or [c for c in ("optimizer", "lr") if c not in frame.columns]
        raise OptbenchError(f"{path}: missing columns {', '.join(missing)} (not a whole optbench run file)") from None


def _complete(frame: pd.DataFrame, seed: int, summary: pd.DataFrame) -> pd.DataFrame:
    """Fill what an old folder lacks: lr from its summary (one per optimizer then), the run's
    seed, a constant lr schedule, no validation split, no time to target, and the status its
    `diverged` column implies."""
    if "lr" not in frame.columns:
        lrs = summary.drop_duplicates("optimizer").set_index("optimizer")["lr"]
        frame = frame.assign(lr=frame["optimizer"].map(lrs))
    if "seed" not in frame.columns:
        frame = frame.assign(seed=seed)
    if "schedule" not in frame.columns and "final_test_acc" in frame.columns:  # before schedules: constant
        frame = frame.assign(schedule="constant")
    for column in ("val_loss", "val_acc", "final_val_acc", "best_val_acc", *TARGET_COLUMNS):
        if column not in frame.columns:
            frame = frame.assign(**{column: np.nan})
    if "diverged" in frame.columns and "status" not in frame.columns:
        frame = frame.assign(status=np.where(frame["diverged"], "diverged", "finished"))
    return frame


def label_by_run(curves: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame):
    """When one member (optimizer, lr, seed) ran on one device in several runs, name each
    `optimizer [run]`, so that tables and plots keep them apart."""
    if not summary.duplicated(["optimizer", "device", "lr", "seed"]).any():
        return curves, epochs, summary

    def relabel(frame):
        return frame.assign(optimizer=frame["optimizer"] + " [" + frame["run"] + "]")

    return relabel(curves), relabel(epochs), relabel(summary)


def combined(curves, epochs, summary, metas) -> Results:
    """Saved runs as one `Results` (aggregate over their seeds), for `optbench report`."""
    summary = sort_summary(summary)
    status = "finished" if all(m.get("status") in ("finished", None) for m in metas) else "partial"
    return Results(summary, spread.aggregate(summary), curves, epochs, None, {"status": status})


def device_comparison(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Per optimizer and lr, samples/s and s/epoch on each device (means over seeds) and the
    GPU/CPU speed-up; None unless the runs cover both devices."""
    if not {"cpu", "gpu"} <= set(summary["device"]):
        return None
    wide = summary.pivot_table(index=["optimizer", "lr"], columns="device",
                               values=["samples_per_s", "mean_epoch_seconds", "best_test_acc"], aggfunc="mean")
    wide = wide.dropna(subset=[("samples_per_s", "cpu"), ("samples_per_s", "gpu")])
    table = pd.DataFrame({
        "optimizer": wide.index.get_level_values(0),
        "lr": wide.index.get_level_values(1),
        "cpu_samples_per_s": wide[("samples_per_s", "cpu")].to_numpy(),
        "gpu_samples_per_s": wide[("samples_per_s", "gpu")].to_numpy(),
        "cpu_epoch_seconds": wide[("mean_epoch_seconds", "cpu")].to_numpy(),
        "gpu_epoch_seconds": wide[("mean_epoch_seconds", "gpu")].to_numpy(),
        "cpu_best_test_acc": wide[("best_test_acc", "cpu")].to_numpy(),
        "gpu_best_test_acc": wide[("best_test_acc", "gpu")].to_numpy(),
    })
    table["gpu_speedup"] = table["gpu_samples_per_s"] / table["cpu_samples_per_s"]
    return table.sort_values("gpu_speedup", ascending=False).reset_index(drop=True)
