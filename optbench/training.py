"""Training a population of MLPs: seeded mini-batches, per-member updates, evaluation, timing.

Knows nothing of the terminal: progress goes to optional callbacks, results come back as a
`PopulationLog` of arrays (one column per member) for `experiment` to turn into tables.

Every member has its own optimizer and state and updates its own row of the parameter buffer;
members whose rules share a fused kernel are updated in one launch per step (`updates`).
A member whose loss turns non-finite is frozen at once: from that step on its rows no longer
change and its evaluations are recorded as NaN; the others train exactly as if it were not
there (their products and updates never read its rows). A population of one is the single model: `train`.

Timing covers the training steps only (forward, backward, update), not evaluation, logging or
I/O, and starts after a few warm-up steps on a throwaway copy of the state. On a GPU, `sync`
waits for queued work at the ends of each timed interval; the batch orders are uploaded before
it, and the losses are read back once per step (K values: the divergence check).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from optbench.backend import get_array_module, to_numpy
from optbench.errors import OptbenchError
from optbench.graphs import GraphedStep
from optbench.mlp import MLP, Population, parameter_shapes, softmax_cross_entropy
from optbench.schedules import CONSTANT, Schedule, ScheduledLRs
from optbench.updates import MemberUpdates

# Six steps reach every code path of every built-in optimizer (RAdam's rectified branch starts at
# step 6), so no GPU kernel is compiled inside the timed steps.
WARMUP_STEPS = 6
EVAL_BATCH = 2000  # test samples per evaluated batch
EVAL_MEMBERS = 12  # members per evaluated batch: EVAL_BATCH x EVAL_MEMBERS activations at most


def batch_order(n_samples: int, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so every member of one
    seed sees the same batches; without `shuffle`, the data set's own order (a `DataLoader`
    without shuffling)."""
    if not shuffle:
        return np.arange(n_samples)
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


@dataclass
class PopulationLog:
    """What a population's training recorded, one column per member.

    `losses[k, i]` is member k's train loss at iteration i + 1 (NaN where it did not train);
    `diverged_at[k]` the iteration at which member k was frozen (0: never): its loss was
    non-finite there, or its rule raised (then `failures[k]` says what; see `diverged`,
    `status`); `evaluations` one dict per evaluation with per-member arrays (NaN for frozen
    members).
    """

    losses: np.ndarray
    diverged_at: np.ndarray
    evaluations: list[dict] = field(default_factory=list)
    done: int = 0
    interrupted: bool = False
    # member -> what its own update raised; it froze at diverged_at, as a diverged member does
    failures: dict[int, str] = field(default_factory=dict)

    def last_iteration(self, k: int) -> int:
        return int(self.diverged_at[k]) or self.done

    def diverged(self, k: int) -> bool:
        return bool(self.diverged_at[k]) and k not in self.failures

    def status(self, k: int) -> str:
        if k in self.failures:
            return "failed"
        return "diverged" if self.diverged_at[k] else "interrupted" if self.interrupted else "finished"


def shards_of(pop: Population) -> list[slice]:
    """The member ranges that train at once on separate cores: on the CPU one per core (at
    most one per member); a population of one, or one on the GPU, is a single shard."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = min(cores, pop.k) if pop.xp is np else 1
    bounds = np.linspace(0, pop.k, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class Shards:
    """Runs a function on every shard of a population at once, one thread each.

    NumPy and BLAS release the GIL, so the shards' products and elementwise work (which NumPy
    runs on one core) proceed on their own cores, and BLAS is held to one thread per shard while
    they do: the shards already fill the cores, and BLAS's spinning threads would fight them.
    One-thread and two-thread BLAS differ in the last bits, so every population of two or more
    trains alike, bitwise, however it is sharded or chunked; a population of one keeps the
    machine's BLAS threads (its products are faster on two).
    """

    def __init__(self, pop: Population):
        self.slices = shards_of(pop)
        self._pool = ThreadPoolExecutor(len(self.slices)) if len(self.slices) > 1 else None
        self._limits = threadpool_limits(1, "blas") if self._pool else contextlib.nullcontext()

    def __enter__(self) -> "Shards":
        self._limits.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._pool:
            self._pool.shutdown(wait=True)
        self._limits.__exit__(*exc)

    def map(self, fn) -> list:
        """[fn(shard) for each shard], in order."""
        if not self._pool:
            return [fn(self.slices[0])]
        return [f.result() for f in [self._pool.submit(fn, shard) for shard in self.slices]]


def evaluate(pop: Population, x, y, batch_size: int = EVAL_BATCH, shards: Shards | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy of every member in eval mode (no dropout, batch-norm running
    statistics), as host arrays (K,). Members go in chunks and samples in batches of fixed
    sizes, so a member's numbers do not depend on the population around it."""
    xp = get_array_module(x)
    total_loss, correct = np.zeros(pop.k), np.zeros(pop.k, dtype=np.int64)

    def evaluate_shard(shard: slice) -> None:
        with np.errstate(all="ignore"):  # frozen members may hold non-finite weights (per thread)
            evaluate_members(shard)

    def evaluate_members(shard: slice) -> None:
        for first in range(shard.start, shard.stop, EVAL_MEMBERS):
            members = slice(first, min(shard.stop, first + EVAL_MEMBERS))
            for start in range(0, len(x), batch_size):
                logits = pop.logits(x[None, start : start + batch_size], members)
                labels = y[start : start + batch_size]
                stacked = xp.broadcast_to(labels, logits.shape[:2])
                loss, _ = softmax_cross_entropy(logits, stacked)
                total_loss[members] += to_numpy(loss).astype(np.float64) * len(labels)
                correct[members] += to_numpy(xp.count_nonzero(logits.argmax(axis=-1) == labels, axis=1))

    training, pop.training = pop.training, False
    try:
        if shards is None:
            evaluate_shard(slice(0, pop.k))
        else:
            shards.map(evaluate_shard)
    finally:
        pop.training = training
    return total_loss / len(x), correct / len(x)


def train_population(
    pop: Population,
    optimizers: Sequence,
    x_train,
    y_train,
    eval_sets: dict[str, tuple],
    *,
    epochs: int = 1,
    iterations: int | None = None,
    eval_every: int | None = None,
    batch_size: int = 128,
    group_seeds: Sequence[int] | None = None,
    shuffle: bool = True,
    weight_decay: float = 0.0,
    sync: Callable[[], None] = lambda: None,
    on_step: Callable[[int], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
    cuda_graph: bool = False,
    schedule: Schedule = CONSTANT,
) -> PopulationLog:
    """Train every member of `pop` in place with its optimizer (`optimizers[k]` for row k).

    Input group g draws its batches from seed `group_seeds[g]` (default: the seed of its
    members' initial weights, as an experiment pairs them). Evaluates on each of
    `eval_sets` ({"test": (x, y), "val": ...}) at each epoch end, or every `eval_every` steps,
    and after the last step. The last partial batch of an epoch is dropped. Ctrl-C stops the
    run and marks it interrupted; what was logged is kept.
    `cuda_graph` replays each step's gather, forward and backward as one CUDA graph (`graphs`).
    `schedule` scales each member's lr, its peak, step by step over the `total` steps.
    """
    xp = get_array_module(pop.rows)
    if group_seeds is None:
        group_seeds = [pop.seeds[s.start] for s in pop.group_slices]
    if len(optimizers) != pop.k or len(group_seeds) != pop.n_groups:
        raise ValueError("one optimizer per member and one seed per input group")
    per_epoch = len(x_train) // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x_train)})")
    total = iterations if iterations is not None else epochs * per_epoch
    interval = eval_every or per_epoch
    log = PopulationLog(np.full((pop.k, total), np.nan), np.zeros(pop.k, dtype=np.int64))
    lrs = ScheduledLRs(optimizers, schedule, total)

    def orders_of(epoch: int):
        return xp.asarray(np.stack([batch_order(len(x_train), epoch + 1, s, shuffle) for s in group_seeds]))

    graphed = GraphedStep(pop, x_train, y_train, (pop.n_groups, batch_size), weight_decay) if cuda_graph else None
    with Shards(pop) as shards:
        try:
            return _train(pop, optimizers, x_train, y_train, eval_sets, log, shards, graphed, orders_of, total,
                          interval, per_epoch, batch_size, weight_decay, sync, on_step, on_eval, lrs)
        finally:
            lrs.restore()


def _copies(optimizers) -> list:
    try:
        return [copy.deepcopy(opt) for opt in optimizers]
    except Exception:  # something a user's rule holds will not copy: warm up on the rules themselves
        return list(optimizers)


def _train(pop, optimizers, x_train, y_train, eval_sets, log, shards, graphed, orders_of, total, interval, per_epoch,
           batch_size, weight_decay, sync, on_step, on_eval, lrs) -> PopulationLog:
    active = np.ones(pop.k, dtype=bool)
    batches: dict = {}

    def gather(data, index):
        # Into the same array every step: a fresh batch of this size page-faults on each one.
        key = (id(data), index.shape)
        if key not in batches:
            batches[key] = pop.xp.empty((*index.shape, *data.shape[1:]), dtype=data.dtype)
        if pop.xp is np:  # "clip" (the indices are a permutation's): "raise" buffers `out`, a copy again
            return np.take(data, index, axis=0, out=batches[key], mode="clip")
        return pop.xp.take(data, index, axis=0, out=batches[key])

    def step(index, updates: MemberUpdates, check: bool = True) -> np.ndarray:
        """One step of every shard; returns the K losses. A member whose loss is non-finite
        is not updated (`check`): the divergence check comes before any update."""
        if graphed:
            x, y = None, None
            losses = to_numpy(graphed(index)).astype(np.float64)
        else:
            x, y = gather(x_train, index), gather(y_train, index)

        def shard_step(shard: slice) -> np.ndarray:
            # Overflow is how divergence shows (errstate is per thread: set in each shard).
            with np.errstate(all="ignore"):
                values = losses[shard] if graphed else to_numpy(pop.losses_and_grads(x, y, weight_decay, shard)).astype(np.float64)
                updates.step([k for k, value in zip(range(shard.start, shard.stop), values)
                              if active[k] and (math.isfinite(value) or not check)])
            return values

        return np.concatenate(shards.map(shard_step))

    # Warm-up (caches, BLAS threads, GPU kernels) on a throwaway copy of everything it touches.
    saved = pop.snapshot()
    layout = parameter_shapes(pop.sizes, pop.batchnorm)  # for the rules that work per tensor
    lrs.at(1)
    # Copies: a user's rule may keep state of its own on itself (a step counter, say), which the
    # warm-up must not advance. A failure in the warm-up is found again in the run, at its step.
    warm_updates = MemberUpdates(_copies(optimizers), pop.rows, pop.grad_rows, layout)
    warm_order = orders_of(0)
    with np.errstate(all="ignore"):
        for b in range(min(WARMUP_STEPS, per_epoch)):
            step(warm_order[:, b * batch_size : (b + 1) * batch_size], warm_updates, check=False)
    pop.restore(saved)
    pop.grad_rows[...] = 0
    del warm_updates

    updates = MemberUpdates(optimizers, pop.rows, pop.grad_rows, layout)
    members = list(range(pop.k))
    done, orders, seconds, first = 0, {}, 0.0, 0
    try:
        while done < total and members:
            # The orders of the epochs this interval reaches, on the device before the clock
            # starts: no transfer inside the timed loop.
            end = min(total, (done // interval + 1) * interval)
            needed = range(done // per_epoch, (end - 1) // per_epoch + 1)
            orders = {e: orders[e] if e in orders else orders_of(e) for e in needed}
            first, seconds = done, 0.0
            sync()
            started = time.perf_counter()
            # Overflow is how divergence shows; it is found from the losses, not warned about.
            with np.errstate(all="ignore"):
                while True:
                    epoch, b = divmod(done, per_epoch)
                    lrs.at(done + 1)
                    # The K losses come back to the host each step (one sync on a GPU) for the
                    # divergence check; a member with a non-finite loss is frozen as it is.
                    values = step(orders[epoch][:, b * batch_size : (b + 1) * batch_size], updates)
                    done += 1
                    log.losses[members, done - 1] = values[members]
                    bad = [k for k in members if not math.isfinite(values[k]) or k in updates.failures]
                    if bad:
                        log.failures.update({k: updates.failures[k] for k in bad if k in updates.failures})
                        log.diverged_at[bad] = done
                        active[bad] = False
                        members = [k for k in members if active[k]]
                    log.done = done
                    if on_step:
                        on_step(done)
                    if done == total or done % interval == 0 or not members:
                        break
            sync()
            seconds = time.perf_counter() - started
            with updates.answering() as answered:  # evaluated at the weights each rule answers with
                if pop.batchnorm:
                    _refresh_batchnorm(pop, [k for k in answered if active[k]], x_train, batch_size)
                _evaluate_interval(log, pop, eval_sets, active, first, done, per_epoch, batch_size, seconds, on_eval,
                                   shards)
    except KeyboardInterrupt:
        log.interrupted = True
    return log


# Batches of training data that gather a member's batch-norm statistics at the weights it answers
# with, as schedulefree's README does before evaluating (`itertools.islice(train_loader, 50)`).
BATCHNORM_REFRESH_BATCHES = 50


def _refresh_batchnorm(pop, members, x_train, batch_size: int) -> None:
    """The running statistics of the members evaluated at other weights than they train at
    (Schedule-Free's x), gathered anew there from the first training batches, in order: the same
    batches for every member and evaluation, and no draw from anyone's batch order."""
    if not members:
        return
    batches = [x_train[start : start + batch_size]
               for start in range(0, min(len(x_train), BATCHNORM_REFRESH_BATCHES * batch_size), batch_size)]
    with np.errstate(all="ignore"):
        for k in members:
            pop.refresh_batchnorm(batches, k)


def _evaluate_interval(log, pop, eval_sets, active, first, done, per_epoch, batch_size, seconds, on_eval, shards) -> None:
    steps = done - first
    record = {
        "epoch": (done - 1) // per_epoch + 1,
        "iteration": done,
        "members": active.copy(),
        # Each member's mean train loss over the interval, from its contiguous row.
        "train_loss": np.array([log.losses[k, first:done].mean() if active[k] else np.nan for k in range(pop.k)]),
        # Seconds per epoch at the rate of this interval (the interval is an epoch by default);
        # the whole population trained in these seconds.
        "epoch_seconds": seconds * per_epoch / steps,
        "samples_per_s": steps * batch_size / seconds,
    }
    for name, (x, y) in eval_sets.items():
        loss, acc = evaluate(pop, x, y, shards=shards)
        record[f"{name}_loss"] = np.where(active, loss, np.nan)
        record[f"{name}_acc"] = np.where(active, acc, np.nan)
    log.evaluations.append(record)
    if on_eval:
        on_eval(record)


@dataclass
class TrainLog:
    """One member's record: train loss per iteration and test metrics per evaluation."""

    iterations: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    diverged: bool = False
    interrupted: bool = False


def member_log(log: PopulationLog, k: int, per_epoch: int) -> TrainLog:
    """Member k's part of a population's log, in the single model's form."""
    last = log.last_iteration(k)
    iterations = [
        {"epoch": i // per_epoch + 1, "iteration": i + 1, "train_loss": float(log.losses[k, i])} for i in range(last)
    ]
    evaluations = []
    for record in log.evaluations:
        if not record["members"][k]:
            continue
        entry = {"epoch": record["epoch"], "iteration": record["iteration"], "train_loss": float(record["train_loss"][k])}
        for key, value in record.items():
            if key.endswith(("_loss", "_acc")) and key != "train_loss":
                entry[key] = float(value[k])
        entry["epoch_seconds"], entry["samples_per_s"] = record["epoch_seconds"], record["samples_per_s"]
        evaluations.append(entry)
    if k in log.failures:  # a model trained alone has no others to go on: say what stopped it
        raise OptbenchError(f"its update raised {log.failures[k]} at step {int(log.diverged_at[k])}")
    stopped = bool(log.diverged_at[k])
    return TrainLog(iterations, evaluations, log.diverged(k), log.interrupted and not stopped)


def train(net: MLP, optimizer, x_train, y_train, x_test, y_test, *, seed: int = 0, shuffle: bool = True,
          on_step=None, on_eval=None, **options) -> TrainLog:
    """Train the single model `net` in place: a population of one (`train_population`)."""
    log = train_population(net, [optimizer], x_train, y_train, {"test": (x_test, y_test)}, group_seeds=[seed],
                           shuffle=shuffle, on_step=on_step, on_eval=on_eval, **options)
    return member_log(log, 0, len(x_train) // options.get("batch_size", 128))
