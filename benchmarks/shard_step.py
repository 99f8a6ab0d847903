"""One shard's training step (6 Adam members of the default net, batch 128, one BLAS thread):
what its activation workspace saves, and what running two shards at once on the two cores costs.

    .venv/bin/python benchmarks/shard_step.py

1. The step with its workspace (`Population._workspace`: the same activation arrays every step)
   and with fresh arrays each step (the workspace switched off), interleaved round by round:
   milliseconds and minor page faults per step.
2. Two shards on two threads against one alone, and the same for the first layer's product alone
   (a plain GEMM): how far two cores of this machine are from twice one.
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from optbench.mlp import Population
from optbench.optimizers import make_optimizer
from optbench.updates import MemberUpdates

SIZES, BATCH, SHARD, ROUNDS = (784, 100, 100, 100, 100, 10), 128, 6, 30


def _steps(fn, n: int) -> tuple[float, float]:
    """Median ms per call of fn over n calls, and minor page faults per call."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n


def main() -> None:
    pop = Population(SIZES, [0] * 2 * SHARD)
    rng = np.random.default_rng(0)
    x = rng.random((1, BATCH, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], (1, BATCH))
    updates = MemberUpdates([make_optimizer("adam") for _ in range(pop.k)], pop.rows, pop.grad_rows)

    def shard(members: slice) -> None:
        pop.losses_and_grads(x, y, 0.0, members)
        updates.step(range(members.start, members.stop))

    first = slice(0, SHARD)
    with threadpool_limits(1):
        workspace = pop._workspace
        kept, fresh = [], []
        for _ in range(ROUNDS):
            pop._workspace = workspace
            kept.append(_steps(lambda: shard(first), 20))
            pop._workspace = lambda *args: None  # `_forward` then allocates every activation
            fresh.append(_steps(lambda: shard(first), 20))
        pop._workspace = workspace
        (kept_ms, kept_faults), (fresh_ms, fresh_faults) = np.median(kept, axis=0), np.median(fresh, axis=0)
        ratio = np.median([f[0] / k[0] for k, f in zip(kept, fresh)])
        print(f"shard step, workspace:    {kept_ms:.2f} ms, {kept_faults:.0f} page faults per step")
        print(f"shard step, fresh arrays: {fresh_ms:.2f} ms, {fresh_faults:.0f} page faults per step "
              f"({ratio:.2f}x the time, median of {ROUNDS} interleaved rounds)")

        weights = [np.random.default_rng(i).random((SHARD, SIZES[0], SIZES[1]), dtype=np.float32) for i in range(2)]
        outs = [np.empty((SHARD, BATCH, SIZES[1]), dtype=np.float32) for _ in range(2)]

        def gemm(i: int) -> None:
            np.matmul(x[0], weights[i], out=outs[i])

        with ThreadPoolExecutor(2) as pool:
            for name, work in (("shard step", lambda i: shard(slice(i * SHARD, (i + 1) * SHARD))),
                               ("first-layer product", gemm)):
                alone = _steps(lambda: work(0), 60)[0]
                both = _steps(lambda: list(pool.map(work, [0, 1])), 60)[0]
                print(f"{name}: one alone {alone:.2f} ms, two at once {both:.2f} ms "
                      f"({2 * alone / both:.2f}x one core's throughput)")


if __name__ == "__main__":
    main()
