"""Rich tables built from DataFrames and registries; the CLI prints them."""

from __future__ import annotations

import math

import pandas as pd
from rich.markup import escape
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from optbench.optimizers import OPTIMIZERS
from optbench.surfaces import SURFACES


def _number(value, digits: int = 3) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def surface_summary(summary: pd.DataFrame, title: str, tol: float = 1e-3) -> Table:
    """One row per optimizer, in the summary's order (best first); diverged and failed rows in red."""
    bounded = summary["gap"].notna().any()
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("optimizer", style="bold", no_wrap=True)
    names = ["lr", "final loss"] + (["gap", "dist to min", f"steps to {tol:g}"] if bounded else []) + ["final x, y"]
    for name in names:
        table.add_column(name, justify="right")
    for rank, row in enumerate(summary.itertuples(), start=1):
        failed = getattr(row, "status", None) == "failed"
        label = escape(f"{row.optimizer} (diverged at step {row.steps + 1})" if row.diverged else
                       f"{row.optimizer} (failed at step {row.steps + 1})" if failed else row.optimizer)
        cells = [_number(row.lr, 3), _number(row.final_loss)]
        if bounded:
            cells += [_number(row.gap, 3), _number(row.dist_to_min, 3), _number(row.steps_to_tol)]
        cells.append(f"{row.final_x:.3g}, {row.final_y:.3g}")
        table.add_row(str(rank), label, *cells, style="red" if row.diverged or failed else None)
    return table


def _failed_column(frame: pd.DataFrame) -> list[str]:
    """The "failed" column (a user's rule that raised) where any failed: most runs have none."""
    return ["failed"] if "failed" in frame.columns and frame["failed"].any() else []


def _failed_cell(row, columns: list[str]) -> list[str]:
    return [str(row.failed) if row.failed else ""] if columns else []


def surface_aggregate(frame: pd.DataFrame, title: str, tol: float = 1e-3) -> Table:
    """One row per (optimizer, lr) over its seeds, best first: the final loss's median and range,
    how many seeds got within `tol` and their median steps."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("optimizer", style="bold", no_wrap=True)
    failed = _failed_column(frame)
    for name in ("lr", "final loss (median)", "range", f"reached {tol:g}", "median steps", "diverged", *failed):
        table.add_column(name, justify="right")
    for rank, row in enumerate(frame.itertuples(), start=1):
        table.add_row(str(rank), escape(row.optimizer), _number(row.lr, 3), _number(row.final_loss_median),
                      f"{_number(row.final_loss_min, 3)}–{_number(row.final_loss_max, 3)}"
                      if row.final_loss_min == row.final_loss_min else "—", f"{row.reached}/{row.seeds}",
                      _number(row.steps_to_tol_median), str(row.diverged) if row.diverged else "",
                      *_failed_cell(row, failed),
                      style="red" if row.diverged + getattr(row, "failed", 0) == row.seeds else None)
    return table


def surface_robustness(frame: pd.DataFrame, title: str, tol: float = 1e-3) -> Table:
    """One row per (optimizer, lr) over a grid of starts, most successful first: how many starts
    got within `tol`, the success rate, the median and worst steps of those, how many diverged
    (and failed, where a user's rule raised)."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("optimizer", style="bold", no_wrap=True)
    failed = _failed_column(frame)
    for name in ("lr", f"reached {tol:g}", "success", "median steps", "worst steps", "diverged", *failed):
        table.add_column(name, justify="right")
    for rank, row in enumerate(frame.itertuples(), start=1):
        table.add_row(str(rank), escape(row.optimizer), _number(row.lr, 3), f"{row.reached}/{row.starts}",
                      f"{row.success_rate:.0%}", _number(row.steps_to_tol_median), _number(row.steps_to_tol_max),
                      str(row.diverged) if row.diverged else "", *_failed_cell(row, failed),
                      style="red" if row.reached == 0 else None)
    return table


def sweep_aggregate(frame: pd.DataFrame, title: str) -> Group:
    """A sweep store's cells over seeds: one table per problem (its long name as the table's
    title, not a column that squeezes the numbers), rows by optimizer, lr and schedule, best first."""
    parts = [Text(title, style="bold")]
    for problem, rows in frame.groupby("problem", sort=False):
        table = Table(title=escape(str(problem)), title_justify="left", header_style="bold")
        table.add_column("optimizer", style="bold", no_wrap=True)
        # "cells": seeds x starts (a surface problem from a grid has one cell per start and seed)
        for name in ("lr", "schedule", "cells", "final (median)", "range", "reached", "median steps", "diverged"):
            table.add_column(name, justify="right", no_wrap=name != "schedule")  # a cut number is a wrong one
        for row in rows.itertuples():
            accuracy = row.metric == "final_test_acc"
            show = (lambda v: f"{100 * v:.2f}%" if v == v else "—") if accuracy else (lambda v: _number(v, 3))
            table.add_row(escape(row.optimizer), _number(row.lr, 3), escape(row.schedule), str(row.seeds),
                          show(row.metric_median),
                          f"{show(row.metric_min)}–{show(row.metric_max)}" if row.metric_min == row.metric_min else "—",
                          f"{row.reached}/{row.seeds}", _number(row.steps_to_target_median),
                          str(row.diverged) if row.diverged else "", style="red" if row.diverged == row.seeds else None)
        parts.append(table)
    return Group(*parts)


def optimizers_table() -> Table:
    table = Table(title="Optimizers: each follows the update rule and defaults of its reference", title_justify="left",
                  header_style="bold")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("reference")
    table.add_column("kind")
    table.add_column("defaults")
    table.add_column("paper")
    for name, cls in OPTIMIZERS.items():
        # Settings are floats inside (ns_steps 5.0): shown as numbers are written, 5 and 1e-08.
        defaults = ", ".join(f"{k}={v:.10g}" if isinstance(v, float) else f"{k}={v}" for k, v in cls.defaults.items())
        table.add_row(name, getattr(cls, "reference", ""), getattr(cls, "kind", "elementwise"), defaults,
                      getattr(cls, "paper", ""))
    return table


def surfaces_table() -> Table:
    table = Table(title="Surfaces", title_justify="left", header_style="bold")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("f(x, y)")
    table.add_column("domain")
    table.add_column("start")
    table.add_column("global minima")
    table.add_column("min value", justify="right")
    for s in SURFACES.values():
        (xmin, xmax), (ymin, ymax) = s.domain
        minima = ", ".join(f"({x:.4g}, {y:.4g})" for x, y in s.minima) or "none"
        table.add_row(
            s.name, s.formula, f"[{xmin:g}, {xmax:g}] × [{ymin:g}, {ymax:g}]", f"({s.start[0]:g}, {s.start[1]:g})",
            minima, "unbounded below" if s.min_value is None else f"{s.min_value:.10g}",
        )
    return table


def mnist_summary(summary: pd.DataFrame, title: str) -> Table:
    """One row per member, best test accuracy first, with the time columns; diverged or
    interrupted rows marked. A device column when there are several, a seed column likewise."""
    several_devices = summary["device"].nunique() > 1
    several_seeds = "seed" in summary.columns and summary["seed"].nunique() > 1
    # The members of one population train in the same seconds: its time per epoch and its
    # throughput (all members together) go in the title, not in every row.
    times = summary["mean_epoch_seconds"].dropna().unique()
    timed = len(times) > 1
    if len(times) == 1:
        together = summary["samples_per_s"].dropna().sum()
        title += f"; {_number(float(times[0]), 3)} s per epoch, {_thousands(together)} samples/s for the {len(summary)} together"
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("optimizer", style="bold", no_wrap=True)
    names = (["device"] if several_devices else []) + ["lr"] + (["seed"] if several_seeds else []) + [
        "epochs", "best %", "final %", "loss"] + (["s/epoch", "samples/s"] if timed else [])
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    for rank, row in enumerate(summary.itertuples(), start=1):
        status = getattr(row, "status", "finished")
        label = row.optimizer if status == "finished" else f"{row.optimizer} ({status})"
        cells = [label, *([row.device] if several_devices else []), _number(row.lr, 3),
                 *([_number(row.seed)] if several_seeds else []), _number(row.epochs, 3),
                 _percent(row.best_test_acc), _percent(row.final_test_acc), _number(row.final_train_loss, 3),
                 *([_number(row.mean_epoch_seconds, 3), _thousands(row.samples_per_s)] if timed else [])]
        table.add_row(str(rank), *map(escape, map(str, cells)),
                      style="red" if row.diverged else ("yellow" if status == "interrupted" else None))
    return table


def _spread(mean, std, seeds: int, show) -> str:
    """'97.51 ± 0.12' over several seeds, the plain value for one (or when only one was finite)."""
    if seeds > 1 and not pd.isna(mean) and not pd.isna(std):
        return f"{show(mean)} ± {show(std)}"
    return show(mean)


def mnist_aggregate(aggregate: pd.DataFrame, title: str) -> Table:
    """One row per (optimizer, lr, device) of aggregate.csv, in its order (best first): mean ± std
    over seeds. Red when every seed diverged, yellow when some did not finish."""
    several_devices = aggregate["device"].nunique() > 1
    # Members of one population share its seconds per epoch: said once in the title then, so
    # that the "mean ± std" cells fit an 80-column terminal whole (with light rules, no rank,
    # short headings: n is the number of seeds).
    times = aggregate["mean_epoch_seconds"].dropna().unique()
    timed = len(times) > 1
    if len(times) == 1:
        title += f"; {_number(float(times[0]), 3)} s per epoch"
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("optimizer", style="bold", no_wrap=True)
    names = (["device"] if several_devices else []) + ["lr", "n", "best %", "final %", "loss"] + (["s/ep"] if timed else [])
    for name in names:
        table.add_column(name, justify="right", no_wrap=True, min_width=2 if name == "lr" else None)
    table.add_column("status", min_width=8)  # "2 diverged, 1 interrupted" wraps, the numbers stay whole
    for row in aggregate.itertuples():
        seeds = int(row.seeds)
        cells = [
            row.optimizer, *([row.device] if several_devices else []), _number(row.lr, 3), str(seeds),
            _spread(row.best_test_acc_mean, row.best_test_acc_std, seeds, _percent),
            _spread(row.final_test_acc_mean, row.final_test_acc_std, seeds, _percent),
            _spread(row.final_train_loss_mean, row.final_train_loss_std, seeds, lambda v: _number(v, 2)),
            *([_number(row.mean_epoch_seconds, 3)] if timed else []), row.status,
        ]
        style = "red" if row.diverged >= seeds else ("yellow" if row.status != "finished" else None)
        table.add_row(*map(escape, map(str, cells)), style=style)
    return table


def tuning_table(tuning: pd.DataFrame, title: str) -> Table:
    """Per optimizer: the lr chosen on the validation split, its validation accuracy (mean over
    seeds), and how many lrs of the grid diverged (on any seed)."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("optimizer", style="bold", no_wrap=True)
    for name in ("chosen lr", "best val %", "final val %", "diverged lrs"):
        table.add_column(name, justify="right", no_wrap=True)
    for optimizer, group in tuning.groupby("optimizer", sort=False):
        chosen = group[group["chosen"].astype(bool)]
        grid = group.groupby("lr")["diverged"].agg(lambda d: d.astype(bool).any())
        cut = "status" in group.columns and (group["status"] == "interrupted").any()
        lr = _number(float(chosen["lr"].iloc[0]), 3) if len(chosen) else "— (interrupted)" if cut else "—"
        cells = [optimizer, lr, _percent(chosen["best_val_acc"].mean()), _percent(chosen["final_val_acc"].mean()),
                 f"{int(grid.sum())} of {len(grid)}"]
        # No chosen lr: the grid was interrupted, or every lr of it diverged.
        table.add_row(*map(escape, map(str, cells)), style="yellow" if cut and not len(chosen) else None if len(chosen) else "red")
    return table


def device_comparison(table_frame: pd.DataFrame) -> Table:
    table = Table(title="CPU vs GPU (training steps only)", title_justify="left", header_style="bold")
    table.add_column("optimizer", style="bold", no_wrap=True)
    for name in ("cpu samples/s", "gpu samples/s", "gpu speed-up", "cpu s/epoch", "gpu s/epoch", "cpu acc %", "gpu acc %"):
        table.add_column(name, justify="right")
    for row in table_frame.itertuples():
        table.add_row(
            escape(row.optimizer), _thousands(row.cpu_samples_per_s), _thousands(row.gpu_samples_per_s),
            f"{row.gpu_speedup:.2f}×", _number(row.cpu_epoch_seconds, 3), _number(row.gpu_epoch_seconds, 3),
            _percent(row.cpu_best_test_acc), _percent(row.gpu_best_test_acc),
        )
    return table


def _percent(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{100 * value:.2f}"


def _thousands(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:,.0f}"


def regression(comparison: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name, justify in (("suite", "left"), ("case", "left"), ("metric", "left"), ("baseline", "right"),
                          ("now", "right"), ("delta", "right"), ("tolerance", "right"), ("status", "left")):
        table.add_column(name, justify=justify, no_wrap=name in ("case", "metric", "status"))
    for row in comparison.itertuples():
        color = "green" if row.status == "ok" else "red"
        table.add_row(escape(row.suite), escape(row.case), escape(row.metric), _number(row.baseline, 6), _number(row.now, 6),
                      _number(row.delta, 3), _number(row.tolerance, 3), f"[{color}]{row.status}[/]")
    return table


def baseline_changes(changed: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in ("case", "metric", "old", "new"):
        table.add_column(name, justify="left" if name in ("case", "metric") else "right")
    for row in changed.itertuples():
        table.add_row(escape(row.case), escape(row.metric), _number(row.old, 6), _number(row.new, 6))
    return table


def bench_steps(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in ("net", "batch", "optimizer", "impl", "ms/step", "q1–q3", "samples/s", "vs torch", "of GEMM peak"):
        table.add_column(name, justify="left" if name in ("net", "optimizer", "impl") else "right", no_wrap=True)
    for row in frame.itertuples():
        table.add_row(escape(row.net), str(row.batch), escape(row.optimizer), escape(row.impl), f"{row.ms_per_step:.3f}",
                      f"{row.ms_q1:.3f}–{row.ms_q3:.3f}", _thousands(row.samples_per_s), _ratio(row.vs_torch),
                      f"{100 * row.of_bound:.0f} %")
    return table


def bench_population(frame: pd.DataFrame, title: str) -> Table:
    """Population rows of one net and batch (the title names them): ours, torch's stacked nets
    and our single model, samples/s counting K × batch, and the ratios to torch stacked and to
    our single model."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in ("K", "optimizer", "impl", "ms/step", "q1–q3", "samples/s", "vs torch", "vs single", "of GEMM peak"):
        table.add_column(name, justify="left" if name in ("optimizer", "impl") else "right", no_wrap=True)
    for row in frame.itertuples():
        table.add_row(str(row.members), escape(row.optimizer), escape(row.impl), _ms(row.ms_per_step),
                      f"{_ms(row.ms_q1)}–{_ms(row.ms_q3)}", _thousands(row.samples_per_s), _ratio(row.vs_torch),
                      _ratio(row.vs_single), f"{100 * row.of_bound:.0f} %")
    return table


def _ms(value: float) -> str:
    return f"{value:.{2 if value >= 1 else 3}f}"


def _ratio(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.2f}×"


def bench_updates(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in ("net", "params", "optimizer", "impl", "µs/update", "at DRAM bw µs", "GB/s"):
        table.add_column(name, justify="left" if name in ("net", "optimizer", "impl") else "right", no_wrap=True)
    for row in frame.itertuples():
        table.add_row(escape(row.net), f"{row.params:,}", escape(row.optimizer), escape(row.impl), f"{row.us_per_update:.1f}",
                      f"{row.dram_us:.1f}", f"{row.gb_per_s:.1f}")
    return table


def profile_scores(scores, ratios, title: str) -> Table:
    """One row per optimizer, best integrated score first: how many problems it solved and was best on."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("optimizer", style="bold")
    table.add_column("score", justify="right")
    table.add_column("solved", justify="right")
    table.add_column("best on", justify="right")
    for rank, (optimizer, score) in enumerate(scores.items(), start=1):
        column = ratios[optimizer]
        solved = int((column < float("inf")).sum())
        table.add_row(str(rank), optimizer, f"{score:.3f}", f"{solved}/{len(column)}", str(int((column == 1).sum())))
    return table
