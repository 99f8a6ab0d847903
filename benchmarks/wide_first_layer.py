"""The first layer of 12 members of the default net (784 -> 100, batch 128), forward product and
weight gradient, three ways, interleaved, medians of 30 repeats per round:

    .venv/bin/python benchmarks/wide_first_layer.py

- sharded: what a population does now, two shards of six on two threads, one BLAS thread each;
- wide + copies: one (128 x 784) . (784 x 1200) product on two BLAS threads, with the gather of
  the members' W0 side by side and the scatter of its gradient back into their rows (the
  one-row-per-member layout keeps them apart);
- wide: the two wide products alone, without the copies (a bound no layout gives for free).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

K, N, D, H = 12, 128, 784, 100
P = 109_810  # one member's parameters (784-100x4-10): W0 comes first in its row


def main() -> None:
    rng = np.random.default_rng(0)
    params = rng.standard_normal((K, P)).astype(np.float32)
    grads = np.zeros_like(params)
    W0 = params[:, : D * H].reshape(K, D, H)
    G0 = grads[:, : D * H].reshape(K, D, H)
    x = rng.standard_normal((N, D)).astype(np.float32)
    z = np.empty((K, N, H), np.float32)
    delta = rng.standard_normal((K, N, H)).astype(np.float32)
    wide_w = np.empty((D, K, H), np.float32)
    wide_z = np.empty((N, K * H), np.float32)
    wide_delta = np.empty((N, K, H), np.float32)
    wide_g = np.empty((D, K * H), np.float32)
    pool = ThreadPoolExecutor(2)

    def shard(members: slice) -> None:
        for k in range(members.start, members.stop):
            np.matmul(x, W0[k], out=z[k])
        for k in range(members.start, members.stop):
            np.matmul(x.T, delta[k], out=G0[k])

    def sharded() -> None:
        with threadpool_limits(1, "blas"):
            list(pool.map(shard, [slice(0, K // 2), slice(K // 2, K)]))

    def wide_products() -> None:
        np.matmul(x, wide_w.reshape(D, K * H), out=wide_z)
        np.matmul(x.T, wide_delta.reshape(N, K * H), out=wide_g)

    def wide_with_copies() -> None:
        np.copyto(wide_w, W0.transpose(1, 0, 2))
        np.copyto(wide_delta, delta.transpose(1, 0, 2))
        wide_products()
        np.copyto(G0, wide_g.reshape(D, K, H).transpose(1, 0, 2))

    def median_ms(fn, repeats: int = 30) -> float:
        fn()
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e3

    for round_ in range(3):
        figures = {name: median_ms(fn) for name, fn in
                   [("sharded", sharded), ("wide + copies", wide_with_copies), ("wide", wide_products)]}
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in figures.items()))
        time.sleep(0.3)  # BLAS's spinning threads go to sleep between rounds


if __name__ == "__main__":
    main()
