"""What one update of each modern optimizer costs on the default net's flat buffer (109,810
float32 parameters), beside Adam's fused kernel, in interleaved rounds on one thread.

    .venv/bin/python benchmarks/modern_updates.py

Prints the median microseconds per update over the rounds and the ratio to Adam measured in the
same rounds. The kind column says whether the rule has a fused CPU kernel.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from optbench.mlp import parameter_count, parameter_shapes
from optbench.optimizers import OPTIMIZERS, fused_paths, init_state, make_optimizer

SIZES = (784, 100, 100, 100, 100, 10)
NAMES = ("adam", "lion", "sf_adamw", "sf_sgd", "ademamix", "prodigy", "lamb", "adafactor", "muon")
ROUNDS, UPDATES = 15, 20


def main() -> None:
    layout, n = parameter_shapes(SIZES, False), parameter_count(SIZES)
    rng = np.random.default_rng(0)
    setups = {}
    for name in NAMES:
        p = (rng.standard_normal(n) * 0.05).astype(np.float32)
        opt = make_optimizer(name)
        setups[name] = (opt, p, init_state(opt, p, layout))
    times = {name: [] for name in NAMES}
    with threadpool_limits(1), np.errstate(all="ignore"):
        for _ in range(ROUNDS):
            for name, (opt, p, state) in setups.items():
                # A fresh small gradient each round: the rules see changing input, not a constant one.
                g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
                started = time.perf_counter()
                for _ in range(UPDATES):
                    opt.update(p, g, state)
                times[name].append((time.perf_counter() - started) / UPDATES)
    adam = np.array(times["adam"])
    print(f"{'optimizer':10s} {'kind':12s} {'fused':6s} {'us/update':>10s} {'x adam':>7s}")
    for name in NAMES:
        t = np.array(times[name])
        fused = "yes" if fused_paths(OPTIMIZERS[name]).numba is not None else "no"
        print(f"{name:10s} {OPTIMIZERS[name].kind:12s} {fused:6s} {np.median(t) * 1e6:10.0f} {np.median(t / adam):7.1f}")


if __name__ == "__main__":
    main()
