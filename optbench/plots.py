"""Matplotlib figures drawn from the result DataFrames (so they can be redrawn without rerunning)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on machines with no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import animation, colors  # noqa: E402

from optbench.results import atomic_path  # noqa: E402
from optbench.surfaces import Surface  # noqa: E402

GRID_POINTS = 400
MAX_FRAMES = 60


def optimizer_colors(labels) -> dict[str, tuple]:
    """A stable colour per optimizer: tab20's strong shades first, then its light ones."""
    palette = plt.get_cmap("tab20").colors
    order = list(palette[0::2]) + list(palette[1::2])
    return {label: order[i % len(order)] for i, label in enumerate(labels)}


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


def _title(surface: Surface, trajectories: pd.DataFrame) -> str:
    steps = int(trajectories["step"].max()) if len(trajectories) else 0
    formula = textwrap.fill(f"f = {surface.formula}", 90)
    return f"{surface.name}, {steps} steps\n{formula}"


def _in_domain(surface: Surface, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    (xmin, xmax), (ymin, ymax) = surface.domain
    return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)


def _legend_label(row) -> str:
    text = f"{row.optimizer} (lr {row.lr:.3g})"
    return text + " — diverged" if row.diverged else text


def _new_figure(surface: Surface):
    (xmin, xmax), (ymin, ymax) = surface.domain
    aspect = (ymax - ymin) / (xmax - xmin)
    fig, ax = plt.subplots(figsize=(10.5, max(4.5, min(8.0, 7.0 * aspect))), layout="constrained")
    _contour(ax, surface)
    return fig, ax


def save_trajectories(surface: Surface, trajectories: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """The contour of `surface` with one path per optimizer, start and end marked."""
    fig, ax = _new_figure(surface)
    palette = optimizer_colors(summary["optimizer"])
    for row in summary.itertuples():
        path_df = trajectories[trajectories["optimizer"] == row.optimizer]
        color = palette[row.optimizer]
        ax.plot(path_df["x"], path_df["y"], color=color, linewidth=1.3, alpha=0.9, label=_legend_label(row), zorder=3)
        xs, ys = path_df["x"].to_numpy(), path_df["y"].to_numpy()
        inside = np.flatnonzero(_in_domain(surface, xs, ys))
        # A diverged path is marked where it was last seen inside the picture.
        last = inside[-1] if row.diverged and inside.size else len(xs) - 1
        ax.plot(xs[last], ys[last], marker="X" if row.diverged else "o", markersize=10 if row.diverged else 7,
                color=color, markeredgecolor="black", linestyle="none", zorder=6, clip_on=True)
    first = trajectories.iloc[0]
    ax.plot(first["x"], first["y"], marker="s", markersize=9, color="white", markeredgecolor="black",
            linestyle="none", zorder=7, label="start")
    ax.set_title(_title(surface, trajectories), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="optimizer (lr); ● end, ✕ diverged", title_fontsize=8)
    return _save(fig, path)


def save_animation(surface: Surface, trajectories: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """The same picture as a GIF, the paths growing step by step."""
    fig, ax = _new_figure(surface)
    palette = optimizer_colors(summary["optimizer"])
    steps = int(trajectories["step"].max())
    frames = np.unique(np.linspace(0, steps, min(MAX_FRAMES, steps + 1)).astype(int))
    paths = {}
    for row in summary.itertuples():
        df = trajectories[trajectories["optimizer"] == row.optimizer]
        (line,) = ax.plot([], [], color=palette[row.optimizer], linewidth=1.6, label=_legend_label(row), zorder=3)
        (head,) = ax.plot([], [], marker="o", color=palette[row.optimizer], markeredgecolor="black", zorder=6)
        paths[row.optimizer] = (df["step"].to_numpy(), df["x"].to_numpy(), df["y"].to_numpy(), line, head)
    first = trajectories.iloc[0]
    ax.plot(first["x"], first["y"], marker="s", markersize=9, color="white", markeredgecolor="black",
            linestyle="none", zorder=7, label="start")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    title = ax.set_title("", fontsize=10)

    def draw(step):
        for steps_of, xs, ys, line, head in paths.values():
            n = np.searchsorted(steps_of, step, side="right")
            line.set_data(xs[:n], ys[:n])
            head.set_data(xs[n - 1 : n], ys[n - 1 : n])
        title.set_text(f"{surface.name}: step {step} of {steps}")
        return [title] + [p[3] for p in paths.values()] + [p[4] for p in paths.values()]

    movie = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    with atomic_path(path) as tmp:
        movie.save(tmp, writer=animation.PillowWriter(fps=12), dpi=60)
    plt.close(fig)
    return Path(path)


def _series_label(optimizer: str, device: str, devices: set) -> str:
    return f"{optimizer} ({device})" if len(devices) > 1 else optimizer


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def save_loss_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Train loss per iteration, smoothed by a running mean, one line per optimizer (and device)."""
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    devices = set(curves["device"])
    palette = optimizer_colors(dict.fromkeys(curves["optimizer"]))
    for (optimizer, device), df in curves.groupby(["optimizer", "device"], sort=False):
        df = df.sort_values("iteration")
        window = max(1, len(df) // 60)
        smooth = df["train_loss"].rolling(window, min_periods=1).mean()
        ax.plot(df["iteration"], smooth, color=palette[optimizer], linestyle="-" if device == "cpu" else "--",
                linewidth=1.4, label=_series_label(optimizer, device, devices))
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("train loss (running mean)")
    ax.set_title("Training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def save_accuracy(epochs: pd.DataFrame, path: Path) -> Path:
    """Test accuracy at each evaluation, one line per optimizer (and device)."""
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    devices = set(epochs["device"])
    palette = optimizer_colors(dict.fromkeys(epochs["optimizer"]))
    groups = list(epochs.groupby(["optimizer", "device"], sort=False))
    # One evaluation per epoch: plot against epochs; with --eval-every, against iterations.
    x = "epoch" if all(df["epoch"].is_unique for _, df in groups) else "iteration"
    for (optimizer, device), df in groups:
        df = df.sort_values("iteration")
        ax.plot(df[x], 100 * df["test_acc"], marker="o", markersize=4,
                color=palette[optimizer], linestyle="-" if device == "cpu" else "--",
                label=_series_label(optimizer, device, devices))
    ax.set_xlabel(x)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def save_epoch_times(summary: pd.DataFrame, path: Path) -> Path:
    """Seconds per epoch of training steps, per optimizer, one bar per device."""
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    optimizers = list(dict.fromkeys(summary["optimizer"]))
    devices = sorted(set(summary["device"]))
    width = 0.8 / len(devices)
    for k, device in enumerate(devices):
        per = summary[summary["device"] == device].set_index("optimizer")["mean_epoch_seconds"]
        values = [per.get(o, np.nan) for o in optimizers]
        ax.bar(np.arange(len(optimizers)) + (k - (len(devices) - 1) / 2) * width, values, width, label=device)
    ax.set_xticks(np.arange(len(optimizers)), optimizers, rotation=30, ha="right")
    ax.set_ylabel("seconds per epoch (training steps only)")
    ax.set_title("Time per epoch")
    if len(devices) > 1:
        ax.set_yscale("log")
    ax.legend(title="device", frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
