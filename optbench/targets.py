"""Time to target: the first step, and the training seconds, at which a member reaches a target.

On MNIST the targets are a test accuracy (`--target`, default 97 % on MNIST and 85 % on
Fashion-MNIST) and, when given, a train loss (`--target-loss`). They are checked at each
evaluation, so `--eval-every` sets the resolution: the step reported is the evaluation's step,
at or after the one where the target was first met. The seconds are the population's training
seconds up to that evaluation (its members share every step, so the steps are what separates
optimizers within one run; the seconds compare runs and devices).

On a surface the target is a gap below `--tol` (`trajectories.steps_to_tol`), checked every step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_ACCURACY = {"mnist": 0.97, "fashion": 0.85}


def default_accuracy(dataset: str) -> float:
    return DEFAULT_ACCURACY.get(dataset, 0.97)


def first_reached(iterations, values, seconds, target: float | None, *, above: bool) -> tuple[float, float]:
    """(step, seconds) of the first evaluation whose value is >= target (`above`) or <= target,
    or (NaN, NaN) when none is, or when there is no target."""
    if target is None:
        return np.nan, np.nan
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        met = values >= target if above else values <= target
    met &= np.isfinite(values)
    if not met.any():
        return np.nan, np.nan
    first = int(np.argmax(met))
    return float(np.asarray(iterations)[first]), float(np.asarray(seconds)[first])


def cumulative_seconds(iterations, samples_per_s, batch_size: int) -> np.ndarray:
    """Training seconds up to each evaluation, from the steps between evaluations and their rate."""
    steps = np.diff(np.concatenate([[0], np.asarray(iterations, dtype=float)]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.cumsum(steps * batch_size / np.asarray(samples_per_s, dtype=float))


def member_targets(frame: pd.DataFrame, batch_size: int, accuracy: float | None, loss: float | None) -> dict:
    """The summary's time-to-target columns for one member, from its evaluations (`epochs.csv` rows)."""
    seconds = cumulative_seconds(frame["iteration"], frame["samples_per_s"], batch_size)
    steps_acc, seconds_acc = first_reached(frame["iteration"], frame["test_acc"], seconds, accuracy, above=True)
    steps_loss, seconds_loss = first_reached(frame["iteration"], frame["train_loss"], seconds, loss, above=False)
    return {"target_acc": accuracy if accuracy is not None else np.nan, "steps_to_target": steps_acc,
            "seconds_to_target": seconds_acc, "target_loss": loss if loss is not None else np.nan,
            "steps_to_loss": steps_loss, "seconds_to_loss": seconds_loss}


TARGET_COLUMNS = ["target_acc", "steps_to_target", "seconds_to_target", "target_loss", "steps_to_loss", "seconds_to_loss"]
