"""Spread over seeds: one row per (optimizer, device, lr) from one row per member, and bands.

    agg = aggregate(summary)                        # aggregate.csv, best first
    b = band(epochs, "epoch", "test_acc", ["optimizer", "lr", "device"])   # median, lo, hi per epoch

A member is one (optimizer, lr, seed); the seeds of one (optimizer, device, lr) are repeats of
the same experiment, so their spread is the noise a comparison has to beat. Pure pandas/numpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GROUP = ["optimizer", "device", "lr"]
METRICS = ["final_test_acc", "best_test_acc", "final_train_loss"]
STATS = ["mean", "std", "min", "max"]
AGGREGATE_COLUMNS = [
    *GROUP, "seeds",
    *(f"{metric}_{stat}" for metric in METRICS for stat in STATS),
    "mean_epoch_seconds", "samples_per_s",
    "steps_to_target_median", "seconds_to_target_median", "reached_target",
    "steps_to_loss_median", "seconds_to_loss_median", "reached_loss",
    "diverged", "status",
]
# Time to target over seeds: the median over the seeds that reached it, and how many did.
TARGETS = {"target": ("steps_to_target", "seconds_to_target"), "loss": ("steps_to_loss", "seconds_to_loss")}
# Below this many seeds a quartile is an interpolation between two or three points: show the range.
IQR_FROM_SEEDS = 5


def _finite(values: pd.Series) -> pd.Series:
    # A diverged seed may report inf; statistics skip it like NaN.
    values = pd.to_numeric(values, errors="coerce").astype(float)
    return values.where(np.isfinite(values))


def _status(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    if set(counts.index) <= {"finished"}:
        return "finished"
    # Fixed order, so that equal runs give equal strings.
    order = ["diverged", "interrupted"] + sorted(set(counts.index) - {"finished", "diverged", "interrupted"})
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts.index)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """aggregate.csv: one row per (optimizer, device, lr) over its seeds, best first."""
    if "status" not in summary.columns:  # runs written before status existed
        summary = summary.assign(status=np.where(summary["diverged"].astype(bool), "diverged", "finished"))
    rows = []
    for (optimizer, device, lr), group in summary.groupby(GROUP, sort=False, dropna=False):
        row = {"optimizer": optimizer, "device": device, "lr": lr, "seeds": len(group)}
        failed = group["status"] == "failed"  # its rule raised: what it had reached is no result
        for metric in METRICS:
            values = _finite(group[metric]).where(~failed)
            row.update({f"{metric}_mean": values.mean(), f"{metric}_std": values.std(ddof=1),
                        f"{metric}_min": values.min(), f"{metric}_max": values.max()})
        row["mean_epoch_seconds"] = _finite(group["mean_epoch_seconds"]).mean()
        row["samples_per_s"] = _finite(group["samples_per_s"]).mean()
        for name, (steps, seconds) in TARGETS.items():
            reached = _finite(group[steps]) if steps in group.columns else pd.Series(dtype=float)
            row[f"{steps}_median"] = reached.median()
            row[f"{seconds}_median"] = _finite(group[seconds]).median() if seconds in group.columns else np.nan
            row[f"reached_{name}"] = int(reached.notna().sum())
        row["diverged"] = int(group["diverged"].astype(bool).sum())
        row["status"] = _status(group["status"])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)
    all_diverged = frame["diverged"] == frame["seeds"]
    order = (frame.assign(_all_diverged=all_diverged)
             .sort_values(["_all_diverged", "best_test_acc_mean"], ascending=[True, False], kind="stable",
                          na_position="last").index)
    return frame.loc[order].reset_index(drop=True)


def band(frame: pd.DataFrame, x: str, y: str, by: list[str]) -> pd.DataFrame:
    """Per group of `by` and value of `x`, over the seeds there: n, median, lo, hi of `y`.

    lo/hi are the min and max below IQR_FROM_SEEDS seeds, the 25th and 75th percentiles from
    there up (decided per row, by the n of that row). NaN values are skipped.
    """
    keys = [*by, x]
    values = frame[keys + [y]].dropna(subset=[y])
    grouped = values.groupby(keys, sort=True, dropna=False)[y]
    out = pd.DataFrame({
        "n": grouped.count(), "median": grouped.median(), "min": grouped.min(), "max": grouped.max(),
        "q1": grouped.quantile(0.25), "q3": grouped.quantile(0.75),
    })
    iqr = out["n"] >= IQR_FROM_SEEDS
    out["lo"] = out["q1"].where(iqr, out["min"])
    out["hi"] = out["q3"].where(iqr, out["max"])
    return out.reset_index()[[*keys, "n", "median", "lo", "hi"]]


def series_label(optimizer: str, lr: float, device: str, *, several_lrs: bool, several_devices: bool) -> str:
    """'adam', 'adam lr=0.001', 'adam (gpu)' or 'adam lr=0.001 (gpu)'."""
    # An old run has no lr of its own (None/NaN): say nothing rather than 'lr=nan'.
    text = f"{optimizer} lr={lr:g}" if several_lrs and not pd.isna(lr) else str(optimizer)
    return f"{text} ({device})" if several_devices else text
