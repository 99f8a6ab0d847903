"""Timing one training step of optbench's MLP beside PyTorch and beside the machine's bounds.

    optbench bench            (make bench; --quick in CI)

For each net, batch and optimizer: the median ms per step (forward, backward, update) over
repeats, with its quartiles, for optbench and, where torch is importable, for torch in its
fastest form (fused=True and foreach=True both tried where torch offers both; the quicker kept). Ours and torch's are interleaved
repeat by repeat, so a neighbour's load hits both alike. Two bounds set by the machine:
- GEMM: the step's matrix products timed alone with the same shapes (the FLOPs at the
  measured GEMM rate of those shapes);
- update: the bytes the optimizer must read and write, at the measured memory bandwidth (of
  arrays far larger than the caches, so a cache-resident update can beat it).
The update alone is timed too (µs per step for the whole parameter set).

On a GPU (`--device gpu`) the rows add optbench's step replayed as a CUDA graph (`graphs`);
torch runs eager with its fused optimizers, as a user would run it. The GEMM bound there is the
eager launches of the same products, mostly launch latency on small nets, so a graph replay can
pass 100 % of it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from optbench.backend import Device
from optbench.errors import OptbenchError
from optbench.graphs import GraphedStep
from optbench.mlp import MLP
from optbench.optimizers import make_optimizer

NETS = (
    ("default", (784, 100, 100, 100, 100, 10), 128),
    ("wide", (784, 512, 512, 10), 64),
    ("wide", (784, 512, 512, 10), 256),
)
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
# Arrays each optimizer reads and writes per parameter in its update (p and g included).
UPDATE_ARRAYS = {"sgd": 3, "momentum": 5, "adam": 7, "rmsprop": 5}
BENCH_LR = {"sgd": 0.01, "momentum": 0.01}

# OpenBLAS's idle threads busy-wait about 0.1 s after its last call (2^28 cycles), and torch's
# OpenMP threads spin too: in one process they steal the cores from whatever is timed next
# (measured: torch's first 50 steps after ours took 1.6 ms/step instead of 0.68). Each timed
# block therefore starts after a pause long enough for them to go to sleep.
PAUSE_S = 0.25


def _after_pause(timed, steps: int, pause: float | None = None) -> float:
    time.sleep(PAUSE_S if pause is None else pause)
    return timed(steps)


@dataclass
class Timing:
    seconds: list[float]  # seconds per step, one value per repeat

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def quartiles(self) -> tuple[float, float]:
        return float(np.percentile(self.seconds, 25)), float(np.percentile(self.seconds, 75))


def flops_per_step(sizes, batch: int) -> float:
    """Forward, weight-gradient and input-gradient products (none for the input layer)."""
    total = 0.0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += 2 * batch * a * b * (3 if i > 0 else 2)
    return total


class OursStep:
    """optbench's training step on synthetic data (the timing does not depend on the values).

    The step is `training.train`'s: the batch gathered from the training set by index, forward,
    backward, update; with `cuda_graph`, the gather, forward and backward replayed as one graph."""

    def __init__(self, sizes, batch, opt, device: Device, cuda_graph: bool = False):
        xp = device.xp
        rng = np.random.default_rng(0)
        self.x = xp.asarray(rng.random((4 * batch, sizes[0]), dtype=np.float32))
        self.y = xp.asarray(rng.integers(0, sizes[-1], 4 * batch))
        self.index = xp.asarray(rng.permutation(4 * batch)[:batch])
        self.net = MLP(sizes, seed=0, xp=xp)
        self.optimizer = make_optimizer(opt, **({"lr": BENCH_LR[opt]} if opt in BENCH_LR else {}))
        self.state = self.optimizer.init(self.net.params)
        self.sync = device.sync
        self.graphed = GraphedStep(self.net, self.x, self.y, (1, batch)) if cuda_graph else None

    def __call__(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            if self.graphed:
                self.graphed(self.index[None])
            else:
                self.net.loss_and_grads(self.x[self.index], self.y[self.index])
            self.optimizer.update(self.net.params, self.net.grads, self.state)
        self.sync()
        return (time.perf_counter() - start) / steps

    def update_only(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.update(self.net.params, self.net.grads, self.state)
        self.sync()
        return (time.perf_counter() - start) / steps


class TorchStep:
    """The same net, batch and optimizer in PyTorch, in its fastest optimizer form."""

    def __init__(self, sizes, batch, opt, device: Device, form: dict):
        import torch

        self.torch = torch
        self.device = "cuda" if device.name == "gpu" else "cpu"
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1]).to(self.device)
        params = list(self.net.parameters())
        fast = form
        lr = BENCH_LR.get(opt)
        make = {
            "sgd": lambda: torch.optim.SGD(params, lr=lr, **fast),
            "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, **fast),
            "adam": lambda: torch.optim.Adam(params, **fast),
            "rmsprop": lambda: torch.optim.RMSprop(params, **fast),
        }
        self.optimizer = make[opt]()
        self.form = next(iter(fast))
        generator = torch.Generator().manual_seed(0)
        self.x = torch.rand(4 * batch, sizes[0], generator=generator).to(self.device)
        self.y = torch.randint(0, sizes[-1], (4 * batch,), generator=generator).to(self.device)
        self.index = torch.randperm(4 * batch, generator=generator)[:batch].to(self.device)
        self.loss = torch.nn.CrossEntropyLoss()
        for p in params:  # gradients exist from the start, as in a running loop
            p.grad = torch.zeros_like(p)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=False)
            self.loss(self.net(self.x[self.index]), self.y[self.index]).backward()
            self.optimizer.step()
        self.sync()
        return (time.perf_counter() - start) / steps

    def update_only(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.step()
        self.sync()
        return (time.perf_counter() - start) / steps


def torch_forms(opt: str) -> list[dict]:
    """The fast forms this torch offers for `opt`: fused where it exists, and foreach."""
    import inspect

    import torch

    cls = getattr(torch.optim, {"sgd": "SGD", "momentum": "SGD", "adam": "Adam", "rmsprop": "RMSprop"}[opt])
    forms = [{"foreach": True}]
    if "fused" in inspect.signature(cls.__init__).parameters:
        forms.insert(0, {"fused": True})
    return forms


def fastest_torch(sizes, batch, opt, device: Device, steps: int, pause: float = PAUSE_S) -> "TorchStep":
    """torch in its fastest form here: each form offered is tried and the quicker one kept
    (fused is not always the faster on a CPU)."""
    best, best_time = None, math.inf
    for form in torch_forms(opt):
        try:
            candidate = TorchStep(sizes, batch, opt, device, form)
            candidate(max(3, steps // 5))
        except (RuntimeError, TypeError, ValueError):  # this form is not offered for this device
            continue
        seconds = min(_after_pause(candidate, steps, pause) for _ in range(3))
        if seconds < best_time:
            best, best_time = candidate, seconds
    return best


def gemm_seconds(sizes, batch: int, device: Device, repeats: int, steps: int) -> float:
    """Median time of the step's matrix products alone, same shapes, same array module."""
    xp = device.xp
    rng = np.random.default_rng(0)
    shapes = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes.append(((batch, a), (a, b)))  # forward
        shapes.append(((a, batch), (batch, b)))  # weight gradient
        if i > 0:
            shapes.append(((batch, b), (b, a)))  # input gradient
    operands = [(xp.asarray(rng.random(s1, dtype=np.float32)), xp.asarray(rng.random(s2, dtype=np.float32)),
                 xp.empty((s1[0], s2[1]), dtype=np.float32)) for s1, s2 in shapes]
    times = []
    for _ in range(repeats):
        device.sync()
        start = time.perf_counter()
        for _ in range(steps):
            for a, b, out in operands:
                xp.matmul(a, b, out=out)
        device.sync()
        times.append((time.perf_counter() - start) / steps)
    return float(np.median(times))


def bandwidth_bytes_per_s(device: Device, repeats: int = 5, adds: int = 10) -> float:
    """Memory bandwidth from a triad-like `c = a + b` on arrays far larger than the caches
    (several adds per timing, so a GPU's launch and synchronisation do not count)."""
    xp = device.xp
    n = 16 * 2**20  # 64 MiB per float32 array
    a, b, c = (xp.ones(n, dtype=np.float32) for _ in range(3))
    xp.add(a, b, out=c)
    times = []
    for _ in range(repeats):
        device.sync()
        start = time.perf_counter()
        for _ in range(adds):
            xp.add(a, b, out=c)
        device.sync()
        times.append((time.perf_counter() - start) / adds)
    return 3 * 4 * n / float(np.median(times))


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_bench(device: Device, *, repeats: int = 7, steps: int = 50, nets=NETS, optimizers=OPTIMIZERS, progress=None,
              pause: float = PAUSE_S):
    """Records for the step table and the update table, and facts about the run."""
    with_torch = torch_available()
    if with_torch:
        import torch

        if device.name == "cpu":
            torch.set_num_threads(int(device.facts.get("blas_threads") or torch.get_num_threads()))
    bandwidth = bandwidth_bytes_per_s(device)
    step_rows, update_rows, timed_updates = [], [], set()
    graph_failures: dict[str, str] = {}
    for net_name, sizes, batch in nets:
        gemm = gemm_seconds(sizes, batch, device, repeats, max(5, steps // 2))
        flops = flops_per_step(sizes, batch)
        for opt in optimizers:
            impls = {"optbench": OursStep(sizes, batch, opt, device)}
            if device.name == "gpu":
                try:
                    impls["optbench (CUDA graph)"] = OursStep(sizes, batch, opt, device, cuda_graph=True)
                except OptbenchError as exc:  # recorded, and the eager rows still come
                    graph_failures[f"{net_name}/{batch}/{opt}"] = str(exc)
            theirs = fastest_torch(sizes, batch, opt, device, steps, pause) if with_torch else None
            if theirs:
                impls[f"torch ({theirs.form})"] = theirs
            n_params = impls["optbench"].net.params.size
            update_bound = UPDATE_ARRAYS[opt] * 4 * n_params / bandwidth
            for impl in impls.values():  # warm-up
                impl(max(3, steps // 5))
            step_times = {label: [] for label in impls}
            for _ in range(repeats):  # interleaved, so a neighbour's load hits every one alike
                for label, impl in impls.items():
                    step_times[label].append(_after_pause(impl, steps, pause))
            update_times = {}
            if (net_name, opt) not in timed_updates:  # the same parameters at another batch size
                timed_updates.add((net_name, opt))
                update_impls = {label: impl for label, impl in impls.items() if "graph" not in label}
                update_times = {label: [] for label in update_impls}
                for _ in range(repeats):
                    for label, impl in update_impls.items():
                        update_times[label].append(_after_pause(impl.update_only, steps, pause))
            bound = gemm + update_bound
            torch_label = _torch_label(impls)
            torch_median = Timing(step_times[torch_label]).median if torch_label else math.nan
            for label, times in step_times.items():
                t = Timing(times)
                q1, q3 = t.quartiles
                step_rows.append({
                    "device": device.name, "net": net_name, "layers": "-".join(map(str, sizes)), "batch": batch,
                    "optimizer": opt, "impl": label, "ms_per_step": 1e3 * t.median, "ms_q1": 1e3 * q1, "ms_q3": 1e3 * q3,
                    "samples_per_s": batch / t.median, "vs_torch": torch_median / t.median,
                    "of_bound": bound / t.median, "bound_ms": 1e3 * bound, "gemm_ms": 1e3 * gemm,
                    "gemm_gflops": flops / gemm / 1e9, "update_bound_us": 1e6 * update_bound,
                })
            for label, times in update_times.items():
                update_rows.append({
                    "device": device.name, "net": net_name, "params": n_params, "optimizer": opt, "impl": label,
                    "us_per_update": 1e6 * Timing(times).median, "bound_us": 1e6 * update_bound,
                    "gb_per_s": UPDATE_ARRAYS[opt] * 4 * n_params / Timing(times).median / 1e9,
                })
            if progress:
                progress()
    facts = {"bandwidth_gb_per_s": bandwidth / 1e9, "torch": with_torch, "pause_s": pause}
    if graph_failures:
        facts["cuda_graph_failures"] = graph_failures
    if with_torch:
        facts.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads())
        if device.name == "gpu":
            facts["torch_cuda"] = torch.version.cuda
    try:
        import numba

        facts["numba"] = numba.__version__
    except ImportError:
        facts["numba"] = None
    return step_rows, update_rows, facts


def _torch_label(impls: dict) -> str | None:
    return next((label for label in impls if label.startswith("torch")), None)
