"""Matplotlib figures drawn from the result DataFrames (so they can be redrawn without rerunning)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

if "matplotlib" not in sys.modules:
    # Files only, so the backend is Agg; said before the import, since matplotlib refuses to load
    # with a backend it does not know in $MPLBACKEND (a notebook's "inline", say).
    os.environ["MPLBACKEND"] = "Agg"

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: never open a window, work on machines with no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import animation, colors  # noqa: E402

from optbench import spread  # noqa: E402
from optbench.results import atomic_path  # noqa: E402
from optbench.surfaces import Surface  # noqa: E402

GRID_POINTS = 400
MAX_FRAMES = 60


def _legend(ax, **kwargs) -> None:
    """The legend, where something labelled was drawn (an interrupted run may have nothing yet:
    matplotlib would warn on the terminal and draw an empty box)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


# Ten hues that stay apart on the blue contours (tab10, its blue last and its grey made black),
# times four line styles: forty series, no two alike.
_HUES = [plt.get_cmap("tab10").colors[i] for i in (3, 1, 2, 4, 5, 6, 8, 9, 0)] + [(0.0, 0.0, 0.0)]
_DASHES = ["-", "--", ":", "-."]


def _slot_style(slot: int) -> dict:
    return {"color": _HUES[slot % len(_HUES)], "linestyle": _DASHES[slot // len(_HUES) % len(_DASHES)]}


def optimizer_styles(labels) -> dict:
    """A colour and line style per series. Where each optimizer is one series (the usual case),
    a built-in optimizer has the same style in every figure, from its place in the table of
    optimizers, and a user's class one after them. Several series of one optimizer (several lrs,
    or one per run: "adam lr=0.01", ("adam", 0.01), "adam [run]") take styles in order."""
    from optbench.optimizers import OPTIMIZERS

    labels = list(dict.fromkeys(labels))
    names = [str(label[0] if isinstance(label, tuple) else label).split(" ")[0] for label in labels]
    if len(set(names)) < len(names):
        return {label: _slot_style(i) for i, label in enumerate(labels)}
    builtin = list(OPTIMIZERS)
    others = iter(range(len(builtin), 10**6))
    return {label: _slot_style(builtin.index(name) if name in builtin else next(others))
            for label, name in zip(labels, names)}


def _contour(ax, surface: Surface) -> None:
    (xmin, xmax), (ymin, ymax) = surface.domain
    x = np.linspace(xmin, xmax, GRID_POINTS)
    y = np.linspace(ymin, ymax, GRID_POINTS)
    X, Y = np.meshgrid(x, y)
    Z = surface.value(np.stack([X, Y], axis=-1))
    low = Z.min()
    shifted = Z - low
    median = np.median(shifted)
    # Log-spaced levels when the values span orders of magnitude (Rosenbrock, Goldstein-Price).
    if median > 0 and shifted.max() / median > 20:
        floor = max(np.quantile(shifted[shifted > 0], 0.001), shifted.max() * 1e-9)
        levels = np.geomspace(floor, shifted.max(), 30)
        norm = colors.LogNorm(vmin=floor, vmax=shifted.max())
        shifted = np.maximum(shifted, floor)
    else:
        levels = np.linspace(0, shifted.max(), 30)
        norm = None
    ax.contourf(X, Y, shifted, levels=levels, norm=norm, cmap="Blues_r", alpha=0.55)
    ax.contour(X, Y, shifted, levels=levels[::2], norm=norm, colors="slategray", linewidths=0.4, alpha=0.6)
    if surface.minima:
        m = np.asarray(surface.minima)
        ax.plot(m[:, 0], m[:, 1], linestyle="none", marker="*", markersize=15, color="gold",
                markeredgecolor="black", zorder=5, label="global minimum")
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def _title(surface: Surface, trajectories: pd.DataFrame, note: str = "") -> str:
    steps = int(trajectories["step"].max()) if len(trajectories) else 0
    formula = textwrap.fill(f"f = {surface.formula}", 90)
    return f"{surface.name}, {steps} steps{_note(note)}\n{formula}"


def _note(note: str) -> str:
    """What else shaped the run (schedule, noise, the seed drawn), for a title."""
    return f" — {note}" if note else ""


def _in_domain(surface: Surface, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    (xmin, xmax), (ymin, ymax) = surface.domain
    return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)


def _failed(row) -> bool:
    return getattr(row, "status", None) == "failed"  # a user's rule that raised (folders before it: none)


def _legend_label(row) -> str:
    # A label that names its lr already ("adam lr=0.01", one of several lrs) is not told it twice.
    text = str(row.optimizer) if " lr=" in str(row.optimizer) else f"{row.optimizer} (lr {row.lr:.3g})"
    return text + " — diverged" if row.diverged else text + " — failed" if _failed(row) else text


def _new_figure(surface: Surface):
    (xmin, xmax), (ymin, ymax) = surface.domain
    aspect = (ymax - ymin) / (xmax - xmin)
    fig, ax = plt.subplots(figsize=(10.5, max(4.5, min(8.0, 7.0 * aspect))), layout="constrained")
    _contour(ax, surface)
    return fig, ax


def _visible(surface: Surface, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The path with its steps far outside the picture dropped: a point outside is kept only next
    to one inside, so the line runs out of (and back into) the picture, and two points far outside
    on opposite sides draw no chord across it."""
    inside = _in_domain(surface, xs, ys)
    near = inside | np.r_[inside[1:], False] | np.r_[False, inside[:-1]]
    return np.where(near, xs, np.nan), np.where(near, ys, np.nan)


def _end_point(surface: Surface, xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, bool]:
    """Where to mark a path's end: its last point, or where it last left the picture (the
    crossing of the picture's edge); and whether it ended outside."""
    inside = _in_domain(surface, xs, ys)
    if inside[-1] or not inside.any():
        return xs[-1], ys[-1], not inside[-1]
    i = np.flatnonzero(inside)[-1]
    (x0, y0), (x1, y1) = (xs[i], ys[i]), (xs[i + 1], ys[i + 1])
    if not (np.isfinite(x1) and np.isfinite(y1)):
        return x0, y0, True
    (xmin, xmax), (ymin, ymax) = surface.domain
    t = 1.0
    for start, end, low, high in ((x0, x1, xmin, xmax), (y0, y1, ymin, ymax)):
        if end > high:
            t = min(t, (high - start) / (end - start))
        elif end < low:
            t = min(t, (low - start) / (end - start))
    return x0 + t * (x1 - x0), y0 + t * (y1 - y0), True


def save_trajectories(surface: Surface, trajectories: pd.DataFrame, summary: pd.DataFrame, path: Path,
                      note: str = "") -> Path:
    """The contour of `surface` with one path per optimizer, start and end marked: a dot at the
    end, a cross where a diverged (or failed) path was last seen, a hollow dot where a path left
    the picture for good."""
    fig, ax = _new_figure(surface)
    styles = optimizer_styles(summary["optimizer"])
    left = stopped_any = False
    for row in summary.itertuples():
        path_df = trajectories[trajectories["optimizer"] == row.optimizer]
        style = styles[row.optimizer]
        xs, ys = path_df["x"].to_numpy(), path_df["y"].to_numpy()
        stopped = row.diverged or _failed(row)
        end_x, end_y, outside = _end_point(surface, xs, ys)
        label = _legend_label(row) + (" — left the picture" if outside and not stopped else "")
        ax.plot(*_visible(surface, xs, ys), **style, linewidth=1.5, alpha=0.9, label=label, zorder=3)
        marker = {"marker": "X", "markersize": 11} if stopped else {"marker": "o", "markersize": 7}
        if outside and not stopped:
            marker["markerfacecolor"] = "none"
        ax.plot(end_x, end_y, **marker, color=style["color"], markeredgecolor="black" if not outside or stopped
                else style["color"], markeredgewidth=1.0 if not outside or stopped else 2.0, linestyle="none",
                zorder=8 if stopped else 6, clip_on=False)
        left |= outside and not stopped
        stopped_any |= stopped
    first = trajectories.iloc[0]
    ax.plot(first["x"], first["y"], marker="s", markersize=9, color="white", markeredgecolor="black",
            linestyle="none", zorder=7, label="start")
    ax.set_title(_title(surface, trajectories, note), fontsize=10)
    failed = any(map(_failed, summary.itertuples()))
    key = "optimizer (lr); ● end" + (", ○ left the picture" if left else "") + (
        ", ✕ diverged" + (" or failed" if failed else "") if stopped_any else "")
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title=key, title_fontsize=8)
    return _save(fig, path)


def save_animation(surface: Surface, trajectories: pd.DataFrame, summary: pd.DataFrame, path: Path,
                   note: str = "") -> Path:
    """The same picture as a GIF, the paths growing step by step."""
    fig, ax = _new_figure(surface)
    styles = optimizer_styles(summary["optimizer"])
    steps = int(trajectories["step"].max())
    frames = np.unique(np.linspace(0, steps, min(MAX_FRAMES, steps + 1)).astype(int))
    paths = {}
    for row in summary.itertuples():
        df = trajectories[trajectories["optimizer"] == row.optimizer]
        style = styles[row.optimizer]
        (line,) = ax.plot([], [], **style, linewidth=1.6, label=_legend_label(row), zorder=3)
        (head,) = ax.plot([], [], marker="o", color=style["color"], markeredgecolor="black", zorder=6)
        xs, ys = _visible(surface, df["x"].to_numpy(), df["y"].to_numpy())
        paths[row.optimizer] = (df["step"].to_numpy(), xs, ys, line, head)
    first = trajectories.iloc[0]
    ax.plot(first["x"], first["y"], marker="s", markersize=9, color="white", markeredgecolor="black",
            linestyle="none", zorder=7, label="start")
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    title = ax.set_title("", fontsize=10)

    def draw(step):
        for steps_of, xs, ys, line, head in paths.values():
            n = np.searchsorted(steps_of, step, side="right")
            line.set_data(xs[:n], ys[:n])
            head.set_data(xs[n - 1 : n], ys[n - 1 : n])
        title.set_text(f"{surface.name}: step {step} of {steps}{_note(note)}")
        return [title] + [p[3] for p in paths.values()] + [p[4] for p in paths.values()]

    movie = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    try:
        with atomic_path(path) as tmp:
            movie.save(tmp, writer=animation.PillowWriter(fps=12), dpi=60)
    finally:
        plt.close(fig)
    return Path(path)


SERIES = ["optimizer", "lr", "device"]
BAND_ALPHA = 0.2


def _members(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with lr and seed columns: runs written before populations have one lr per
    optimizer and one seed, so a missing lr is one (NaN) lr and a missing seed is seed 0."""
    fill = {name: value for name, value in (("lr", np.nan), ("seed", 0)) if name not in frame.columns}
    return frame.assign(**fill) if fill else frame


class _Series:
    """Colour, line style and legend label of each (optimizer, lr, device) of a frame."""

    def __init__(self, frame: pd.DataFrame, every: pd.DataFrame | None = None):
        """`every`: a frame of every series (a run's summary), so that a series missing from
        `frame` (diverged before its first evaluation, say) does not shift the others' styles."""
        frames = [frame] if every is None else [_members(every), frame]
        both = pd.concat([f[["optimizer", "lr", "device"]] for f in frames], ignore_index=True)
        self.several_lrs = bool((both.groupby("optimizer")["lr"].nunique() > 1).any())
        self.several_devices = both["device"].nunique() > 1
        # One style per (optimizer, lr): with one lr per optimizer this is one per optimizer.
        pairs = dict.fromkeys(zip(both["optimizer"], both["lr"].map(_lr_key)))
        self.styles = optimizer_styles(pairs)

    def style(self, optimizer, lr, device, stopped: dict | None = None) -> dict:
        """`stopped`: from `_stopped`, what the label says of members that did not train to the end."""
        style = dict(self.styles[(optimizer, _lr_key(lr))])
        if self.several_devices:  # the line style tells the devices apart, then
            style["linestyle"] = "-" if device == "cpu" else "--"
        label = spread.series_label(optimizer, lr, device, several_lrs=self.several_lrs,
                                    several_devices=self.several_devices)
        note = (stopped or {}).get((optimizer, _lr_key(lr), device))
        return {**style, "label": f"{label} — {note}" if note else label}


def _stopped(summary: pd.DataFrame | None) -> dict:
    """(optimizer, lr, device) -> "diverged", "2/5 diverged", "failed", ... for the series whose
    members did not all train to the end (a legend says so: their lines stop early)."""
    if summary is None or "status" not in summary.columns:
        return {}
    summary = _members(summary)
    notes = {}
    for (optimizer, lr, device), group in summary.groupby(SERIES, sort=False, dropna=False):
        parts = []
        for status in ("diverged", "failed"):
            n = int((group["status"] == status).sum())
            if n:
                parts.append(status if n == len(group) else f"{n}/{len(group)} {status}")
        if parts:
            notes[(optimizer, _lr_key(lr), device)] = ", ".join(parts)
    return notes


def _lr_key(lr):
    # NaN != NaN, so a missing lr would never find its own colour.
    return None if pd.isna(lr) else lr


def _series(frame: pd.DataFrame):
    """(optimizer, lr, device), its rows, in the frame's order."""
    return frame.groupby(SERIES, sort=False, dropna=False)


ROBUSTNESS_COLUMNS_PER_ROW = 5


def save_robustness(surface: Surface, cells: pd.DataFrame, path: Path, note: str = "") -> Path:
    """Robustness maps: per optimizer, its grid of start points coloured by the steps it took to
    reach the tolerance from there (`surface_run.start_cells`), grey where it never did, red
    where it diverged; the surface's contours and minima drawn over them."""
    optimizers = list(dict.fromkeys(cells["optimizer"]))
    xs = np.sort(cells["start_x"].unique())
    ys = np.sort(cells["start_y"].unique())
    (xmin, xmax), (ymin, ymax) = surface.domain
    reached = cells["steps"].dropna()
    vmax = max(float(reached.max()) if len(reached) else 1.0, 2.0)
    norm = colors.LogNorm(vmin=1.0, vmax=vmax)
    cmap = plt.get_cmap("viridis").with_extremes(under=plt.get_cmap("viridis")(0.0))
    ncols = min(ROBUSTNESS_COLUMNS_PER_ROW, len(optimizers))
    nrows = -(-len(optimizers) // ncols)
    aspect = (ymax - ymin) / (xmax - xmin)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols + 1.2, max(2.4, 3.1 * aspect) * nrows + 0.8),
                             squeeze=False, layout="constrained", sharex=True, sharey=True)
    X, Y = np.meshgrid(np.linspace(xmin, xmax, 160), np.linspace(ymin, ymax, 160))
    Z = surface.value(np.stack([X, Y], axis=-1))
    levels = np.quantile(Z, np.linspace(0.02, 0.98, 12))
    image = None
    for ax, optimizer in zip(axes.flat, optimizers):
        mine = cells[cells["optimizer"] == optimizer]
        steps = np.full((ys.size, xs.size), np.nan)
        failed = np.zeros((ys.size, xs.size, 4))  # RGBA: grey never reached, red diverged
        for row in mine.itertuples():
            i, j = np.searchsorted(ys, row.start_y), np.searchsorted(xs, row.start_x)
            if np.isfinite(row.steps):
                steps[i, j] = max(row.steps, 1.0)  # a start already within tolerance: 0 steps
            elif getattr(row, "failed", 0):  # a user's rule raised from there
                failed[i, j] = (0.3, 0.3, 0.3, 1.0)
            else:
                failed[i, j] = (0.85, 0.2, 0.2, 1.0) if row.diverged else (0.72, 0.72, 0.72, 1.0)
        extent = (xmin, xmax, ymin, ymax)
        ax.imshow(failed, origin="lower", extent=extent, aspect="auto", interpolation="nearest")
        image = ax.imshow(np.ma.masked_invalid(steps), origin="lower", extent=extent, aspect="auto",
                          interpolation="nearest", cmap=cmap, norm=norm)
        ax.contour(X, Y, Z, levels=np.unique(levels), colors="white", linewidths=0.4, alpha=0.7)
        if surface.minima:
            m = np.asarray(surface.minima)
            ax.plot(m[:, 0], m[:, 1], linestyle="none", marker="*", markersize=10, color="gold", markeredgecolor="black")
        n_reached = int(np.isfinite(steps).sum())
        lr = mine["lr"].iloc[0]
        name = optimizer if " lr=" in str(optimizer) else f"{optimizer} (lr {lr:.3g})"
        ax.set_title(f"{name}: {n_reached}/{len(mine)}", fontsize=8)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(optimizers):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="steps to tolerance (log)")
    fig.supxlabel("x of the start", fontsize=9)
    fig.supylabel("y of the start", fontsize=9)
    key = "grey never reached, red diverged" + (", dark grey failed" if cells.get("failed", pd.Series(0)).any() else "")
    title = (f"{surface.name}: steps to tolerance from each of {xs.size} x {ys.size} starts "
             f"({key}, ★ global minimum)" + (f"\n{note}" if note else ""))
    width = max(60, int(14 * fig.get_figwidth()))  # characters a line of the figure holds at this size
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)  # a figure left open on failure would stay in pyplot's memory
    return Path(path)


def _draw(ax, df: pd.DataFrame, x: str, y: str, style: dict, **line) -> None:
    """One seed: its line. Several: the median over seeds and a shaded band (spread.band)."""
    if df["seed"].nunique() <= 1:
        df = df.sort_values(x)
        ax.plot(df[x], df[y], **style, **line)
        return
    b = spread.band(df, x, y, [])
    ax.plot(b[x], b["median"], **style, **line)
    ax.fill_between(b[x], b["lo"], b["hi"], color=style["color"], alpha=BAND_ALPHA, linewidth=0)


def _band_note(frame: pd.DataFrame) -> str:
    seeds = frame.groupby(SERIES, sort=False, dropna=False)["seed"].nunique()
    if seeds.max() <= 1:
        return ""
    spread_name = "interquartile range" if seeds.min() >= spread.IQR_FROM_SEEDS else "min–max"
    if seeds.min() < spread.IQR_FROM_SEEDS <= seeds.max():
        spread_name = f"min–max below {spread.IQR_FROM_SEEDS} seeds, else interquartile range"
    return f"\nmedian over seeds, band: {spread_name}"


LOSS_HEADROOM = 10.0  # the loss axis stops at this many times the highest starting loss


def save_loss_curves(curves: pd.DataFrame, path: Path, summary: pd.DataFrame | None = None) -> Path:
    """Train loss per iteration, smoothed by a running mean, one line per optimizer (lr, device);
    with several seeds the median of the smoothed curves and a band. A loss that blew up runs off
    the top (LOSS_HEADROOM x the highest starting loss) rather than squash the others; `summary`
    lets the legend name the series that diverged or failed."""
    curves = _members(curves)
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    series = _Series(curves, summary)
    stopped = _stopped(summary)
    starts = curves.sort_values("iteration").groupby([*SERIES, "seed"], sort=False, dropna=False)["train_loss"].first()
    top = LOSS_HEADROOM * float(starts[np.isfinite(starts)].max()) if np.isfinite(starts).any() else None
    for (optimizer, lr, device), df in _series(curves):
        # Smooth each seed first: the band then shows seed-to-seed spread, not batch noise.
        smoothed = []
        for _, member in df.groupby("seed", sort=False):
            member = member.sort_values("iteration")
            window = max(1, len(member) // 60)
            smoothed.append(member.assign(train_loss=member["train_loss"].rolling(window, min_periods=1).mean()))
        _draw(ax, pd.concat(smoothed), "iteration", "train_loss", series.style(optimizer, lr, device, stopped),
              linewidth=1.4)
    ax.set_yscale("log")
    if top and np.nanmax(curves["train_loss"].to_numpy(dtype=float, na_value=np.nan)) > top:
        ax.set_ylim(top=top)
    ax.set_xlabel("iteration")
    ax.set_ylabel("train loss (running mean)")
    ax.set_title("Training loss" + _band_note(curves))
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def save_accuracy(epochs: pd.DataFrame, path: Path, summary: pd.DataFrame | None = None) -> Path:
    """Test accuracy at each evaluation, one line per optimizer (lr, device); with several seeds
    the median and a band. `summary` lets the legend name the series that diverged or failed,
    and those that did so before their first evaluation, which have no line at all."""
    epochs = _members(epochs).assign(test_acc_percent=lambda f: 100 * f["test_acc"])
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    series = _Series(epochs, summary)
    stopped = _stopped(summary)
    members = epochs.groupby([*SERIES, "seed"], sort=False, dropna=False)
    # One evaluation per epoch: plot against epochs; with --eval-every, against iterations.
    x = "epoch" if all(df["epoch"].is_unique for _, df in members) else "iteration"
    for (optimizer, lr, device), df in _series(epochs):
        _draw(ax, df, x, "test_acc_percent", series.style(optimizer, lr, device, stopped), marker="o", markersize=4)
    drawn = set(zip(epochs["optimizer"], epochs["lr"].map(_lr_key), epochs["device"]))
    never = [key for key in stopped if key not in drawn]
    if never:  # no evaluation at all: named in the legend, so that they are not just missing
        labels = [f"{spread.series_label(o, lr, d, several_lrs=series.several_lrs, several_devices=series.several_devices)}"
                  f" — {stopped[(o, lr, d)]} before its first evaluation" for o, lr, d in never]
        for label in labels:
            ax.plot([], [], color="lightgray", label=label)
    if x == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy" + _band_note(epochs))
    ax.grid(True, alpha=0.3)
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def save_epoch_times(summary: pd.DataFrame, path: Path) -> Path:
    """Seconds per epoch of training steps, one bar per optimizer (lr) and device: the mean over
    seeds, with a min–max error bar when there are several."""
    summary = _members(summary)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    series = _Series(summary)
    times = (summary.groupby(SERIES, sort=False, dropna=False)["mean_epoch_seconds"]
             .agg(["mean", "min", "max", "count"]).reset_index())
    # One tick per (optimizer, lr); the devices sit side by side on it.
    ticks = list(dict.fromkeys(zip(times["optimizer"], times["lr"].map(_lr_key))))
    devices = sorted(set(times["device"]))
    width = 0.8 / len(devices)
    for k, device in enumerate(devices):
        rows = times[times["device"] == device]
        x = np.array([ticks.index((o, _lr_key(lr))) for o, lr in zip(rows["optimizer"], rows["lr"])])
        x = x + (k - (len(devices) - 1) / 2) * width
        ax.bar(x, rows["mean"], width, label=device)
        several = (rows["count"] > 1).to_numpy()
        if several.any():
            mean, low, high = (rows[c].to_numpy()[several] for c in ("mean", "min", "max"))
            ax.errorbar(x[several], mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black",
                        elinewidth=1, capsize=3)
    names = [spread.series_label(o, lr, "", several_lrs=series.several_lrs, several_devices=False) for o, lr in ticks]
    ax.set_xticks(np.arange(len(ticks)), names, rotation=30, ha="right")
    ax.set_ylabel("seconds per epoch (training steps only)")
    shared = times["mean"].round(12).duplicated().any()  # members trained together: their population's time
    ax.set_title("Time per epoch" + ("\nmean over seeds, bars: min–max" if (times["count"] > 1).any() else "")
                 + ("\nmembers trained together in one population share its time" if shared else ""))
    if len(devices) > 1:
        ax.set_yscale("log")
        _legend(ax, title="device", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def save_profile(curves: pd.DataFrame, scores: pd.Series, path: Path, cost: str = "steps") -> Path:
    """Performance profiles: rho(tau) per optimizer (columns of `curves`, tau its index), as
    steps, best integrated score first in the legend."""
    fig, ax = plt.subplots(figsize=(10, 5))
    styles = optimizer_styles(list(scores.index))
    # Best last, so that where profiles coincide the best one is seen; the legend keeps best first.
    for rank, optimizer in reversed(list(enumerate(scores.index))):
        ax.step(curves.index, curves[optimizer], where="post", **styles[optimizer], linewidth=1.8,
                label=f"{optimizer} ({scores[optimizer]:.2f})", zorder=3 + len(scores) - rank)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: list(scores.index).index(labels[i].rsplit(" (", 1)[0]))
    ax.set_xlim(curves.index.min(), curves.index.max())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"τ: within τ × the best optimizer's {cost}")
    ax.set_ylabel("fraction of problems solved, ρ(τ)")
    ax.set_title(f"Performance profiles over {curves.attrs.get('problems', '?')} problems (integrated score)")
    ax.grid(alpha=0.3)
    if handles:
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), title="optimizer (score)", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


BLOWN_UP = 1e100


def save_lr_sensitivity(tuning: pd.DataFrame, metric: str, path: Path, *, ylabel: str, log_y: bool = False,
                        scale: float = 1.0, y_max: float | None = None) -> Path:
    """Learning-rate sensitivity from a tuning grid: `metric` against lr, one curve per optimizer
    (the median over seeds with a band where there are several), its chosen lr starred, diverged
    lrs left out. Values past `y_max` (a surface's: LOSS_HEADROOM x the start's gap) run off the
    top, so that the lrs that blew up do not squash the ones that worked."""
    frame = tuning[~tuning["diverged"].astype(bool)] if "diverged" in tuning.columns else tuning
    frame = frame.assign(**{metric: pd.to_numeric(frame[metric], errors="coerce") * scale})
    # A loss past 1e100 has blown up even if it is still finite; near 1e308 a log axis cannot be
    # drawn at all (matplotlib's tick labels overflow), so those lrs are left out as diverged.
    frame = frame[frame[metric].abs() < BLOWN_UP]
    bands = spread.band(frame, "lr", metric, ["optimizer"])
    fig, ax = plt.subplots(figsize=(9, 5))
    optimizers = list(dict.fromkeys(tuning["optimizer"]))
    styles = optimizer_styles(optimizers)
    for optimizer in optimizers:
        b = bands[bands["optimizer"] == optimizer]
        if not len(b):
            continue
        color = styles[optimizer]["color"]
        ax.plot(b["lr"], b["median"], marker="o", markersize=3, **styles[optimizer], linewidth=1.4, label=optimizer)
        if (b["n"] > 1).any():
            ax.fill_between(b["lr"], b["lo"], b["hi"], color=color, alpha=0.15, linewidth=0)
        chosen = tuning[(tuning["optimizer"] == optimizer) & tuning["chosen"].astype(bool)]
        for lr in chosen["lr"].unique():
            at = b[b["lr"] == lr]["median"]
            if len(at):
                ax.plot([lr], [at.iloc[0]], marker="*", markersize=13, color=color, markeredgecolor="black",
                        linestyle="none", zorder=5)
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    title = f"Learning-rate sensitivity (★ chosen; diverged lrs, and any past {BLOWN_UP:g}, left out)"
    if y_max is not None and len(frame) and frame[metric].max() > y_max:
        ax.set_ylim(top=y_max)
        title += f"\nvalues past {y_max:.3g} ({LOSS_HEADROOM:g} × the start's) run off the top"
    ax.set_xlabel("learning rate")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)
