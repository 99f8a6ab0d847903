"""Training an MLP with one optimizer: seeded mini-batches, evaluation, and timing of the steps.

Knows nothing of the terminal: progress goes to an optional callback, results come back as
plain records for `results` to turn into tables and files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from optbench.backend import get_array_module, to_numpy
from optbench.mlp import MLP, softmax_cross_entropy


@dataclass
class TrainLog:
    """Train loss per iteration and test metrics per epoch, plus the seconds of training steps."""

    iterations: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    diverged: bool = False


def batch_order(n_samples: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled sample order of one epoch: a function of (seed, epoch) only, so every
    optimizer in a comparison sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


def evaluate(net: MLP, x, y, batch_size: int = 2000) -> tuple[float, float]:
    """Mean test loss and accuracy in eval mode (no dropout, batch-norm running statistics)."""
    xp = get_array_module(x)
    training, net.training = net.training, False
    try:
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            logits = net.forward(x[start : start + batch_size])
            labels = y[start : start + batch_size]
            loss, _ = softmax_cross_entropy(logits, labels)
            total_loss += float(loss) * len(labels)
            correct += int(xp.count_nonzero(logits.argmax(axis=1) == labels))
    finally:
        net.training = training
    return total_loss / len(x), correct / len(x)


def train(
    net: MLP,
    optimizer,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    weight_decay: float = 0.0,
    sync: Callable[[], None] = lambda: None,
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> TrainLog:
    """Train `net` in place; the last partial batch of an epoch is dropped.

    Only the training steps are timed (`sync` makes the timer wait for a GPU). A non-finite
    loss stops the run and marks it diverged; what was logged until then is kept.
    """
    log = TrainLog()
    state = optimizer.init(net.params)
    n_batches = len(x_train) // batch_size
    iteration = 0
    for epoch in range(1, epochs + 1):
        order = batch_order(len(x_train), epoch, seed)
        losses = []
        sync()
        started = time.perf_counter()
        # Overflow is how divergence shows; it is detected from the losses below, not warned.
        with np.errstate(all="ignore"):
            for b in range(n_batches):
                index = order[b * batch_size : (b + 1) * batch_size]
                loss = net.loss_and_grads(x_train[index], y_train[index], weight_decay)
                optimizer.update(net.params, net.grads, state)
                losses.append(loss)
                iteration += 1
        sync()
        seconds = time.perf_counter() - started
        # The losses are read back once per epoch, not once per step.
        losses = [float(v) for v in to_numpy(get_array_module(net.params).stack(losses))]
        for b, value in enumerate(losses):
            log.iterations.append({"epoch": epoch, "iteration": iteration - n_batches + b + 1, "train_loss": value})
            if on_iteration:
                on_iteration(epoch, iteration - n_batches + b + 1, value)
        if not all(math.isfinite(v) for v in losses):
            log.diverged = True
            break
        test_loss, test_acc = evaluate(net, x_test, y_test)
        log.epochs.append({
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_seconds": seconds,
            "samples_per_s": n_batches * batch_size / seconds,
        })
    return log
