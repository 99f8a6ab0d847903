"""Training an MLP with one optimizer: seeded mini-batches, evaluation, and timing of the steps.

Knows nothing of the terminal: progress goes to optional callbacks, results come back as plain
records for `mnist_bench` to turn into tables and files.

Timing covers the training steps only (forward, backward, update), not evaluation, logging or
I/O, and starts after a few warm-up steps on a throwaway copy of the state. On a GPU, `sync`
waits for queued work at the ends of each timed interval; inside it nothing crosses between
host and device: the batch orders are uploaded before it, the losses read back after it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from optbench.backend import get_array_module, to_numpy
from optbench.graphs import GraphedStep
from optbench.mlp import MLP, softmax_cross_entropy

# Six steps reach every code path of every built-in optimizer (RAdam's rectified branch starts at
# step 6), so no GPU kernel is compiled inside the timed steps.
WARMUP_STEPS = 6


@dataclass
class TrainLog:
    """Train loss per iteration and test metrics per evaluation; how the run ended."""

    iterations: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    diverged: bool = False
    interrupted: bool = False


def batch_order(n_samples: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled sample order of one epoch: a function of (seed, epoch) only, so every
    optimizer in a comparison sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


def evaluate(net: MLP, x, y, batch_size: int = 2000) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode (no dropout, batch-norm running statistics)."""
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
    iterations: int | None = None,
    eval_every: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    weight_decay: float = 0.0,
    sync: Callable[[], None] = lambda: None,
    on_step: Callable[[int], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
    cuda_graph: bool = False,
) -> TrainLog:
    """Train `net` in place for `epochs` (or exactly `iterations` steps).

    Evaluates at each epoch end, or every `eval_every` steps, and after the last step. The last
    partial batch of an epoch is dropped. A non-finite loss stops the run and marks it
    diverged; Ctrl-C stops it and marks it interrupted; either way what was logged is kept.
    `cuda_graph` replays each step's forward and backward as one CUDA graph (`graphs`).
    """
    xp = get_array_module(net.params)
    log = TrainLog()
    per_epoch = len(x_train) // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x_train)})")
    total = iterations if iterations is not None else epochs * per_epoch
    interval = eval_every or per_epoch

    graphed = GraphedStep(net, x_train, y_train, batch_size, weight_decay) if cuda_graph else None

    def step(index, state):
        if graphed:
            loss = graphed(index)
        else:
            loss = net.loss_and_grads(x_train[index], y_train[index], weight_decay)
        optimizer.update(net.params, net.grads, state)
        return loss

    # Warm-up (caches, BLAS threads, GPU kernels) on a throwaway copy of everything it touches.
    saved = net.snapshot()
    warm_state = optimizer.init(net.params)
    with np.errstate(all="ignore"):
        for b in range(min(WARMUP_STEPS, per_epoch)):
            step(xp.asarray(batch_order(len(x_train), 1, seed)[b * batch_size : (b + 1) * batch_size]), warm_state)
    net.restore(saved)
    net.grads[...] = 0

    state = optimizer.init(net.params)
    done, orders, pending, seconds = 0, {}, [], 0.0
    try:
        while done < total:
            # The shuffled orders of the epochs this interval reaches, on the device before the
            # clock starts: no transfer inside the timed loop.
            end = min(total, (done // interval + 1) * interval)
            needed = range(done // per_epoch, (end - 1) // per_epoch + 1)
            orders = {e: orders[e] if e in orders else xp.asarray(batch_order(len(x_train), e + 1, seed)) for e in needed}
            sync()
            started = time.perf_counter()
            # Overflow is how divergence shows; it is found from the losses, not warned about.
            with np.errstate(all="ignore"):
                while True:
                    epoch, b = divmod(done, per_epoch)
                    pending.append(step(orders[epoch][b * batch_size : (b + 1) * batch_size], state))
                    done += 1
                    if on_step:
                        on_step(done)
                    if done == total or done % interval == 0:
                        break
            sync()
            seconds += time.perf_counter() - started
            _close_interval(log, net, pending, done, per_epoch, batch_size, seconds, x_test, y_test, on_eval)
            pending, seconds = [], 0.0
            if log.diverged:
                break
    except KeyboardInterrupt:
        log.interrupted = True
        if pending:
            _record_losses(log, pending, done, per_epoch)
    return log


def _record_losses(log: TrainLog, pending: list, done: int, per_epoch: int) -> list[float]:
    # One read-back per interval: the losses stayed on the device until now.
    xp = get_array_module(pending[0])
    values = [float(v) for v in to_numpy(xp.stack(pending))]
    first = done - len(values) + 1
    for k, value in enumerate(values):
        iteration = first + k
        log.iterations.append({"epoch": (iteration - 1) // per_epoch + 1, "iteration": iteration, "train_loss": value})
    return values


def _close_interval(log, net, pending, done, per_epoch, batch_size, seconds, x_test, y_test, on_eval) -> None:
    values = _record_losses(log, pending, done, per_epoch)
    if not all(math.isfinite(v) for v in values):
        log.diverged = True
        return
    test_loss, test_acc = evaluate(net, x_test, y_test)
    record = {
        "epoch": (done - 1) // per_epoch + 1,
        "iteration": done,
        "train_loss": float(np.mean(values)),
        "test_loss": test_loss,
        "test_acc": test_acc,
        # Seconds per epoch at the rate of this interval (the interval is an epoch by default).
        "epoch_seconds": seconds * per_epoch / len(values),
        "samples_per_s": len(values) * batch_size / seconds,
    }
    log.evaluations.append(record)
    if on_eval:
        on_eval(record)
