"""Timing one training step of optbench's MLP beside PyTorch and beside the machine's GEMM peak.

    optbench bench            (make bench; --quick in CI)

For each net, batch and optimizer: the median ms per step (forward, backward, update) over
repeats, with its quartiles, for optbench and, where torch is importable, for torch in its
fastest form (fused=True and foreach=True both tried where torch offers both; the quicker kept).
Ours and torch's are interleaved repeat by repeat, each block after a pause, so a neighbour's
load hits both alike. The update alone is timed too (µs per step for the whole parameter set),
beside the bytes it reads and writes at the memory bandwidth of arrays far larger than the
caches ("at DRAM bandwidth": a reference, not a bound; a cache-resident update beats it).

Populations (`POPULATIONS`): K members of one net training together, all in one input group
(one seed: they read one shared batch), the step `training.train_population` runs: the batch
gathered by index, `Population.losses_and_grads`, then each member's optimizer updating its own
row. Beside it, PyTorch training the same K nets stacked (weights (K, in, out), `baddbmm` with the
shared batch broadcast, ReLU, cross-entropy summed over members, one backward, the optimizer over
the stacked tensors in its fastest form), and optbench's single model, interleaved the same way.
Samples/s count members × batch per step. Neither side reads its losses back inside the step
(a host copy on the CPU; on a GPU training's per-step divergence check would add one sync).

"of GEMM peak" (`of_bound`), decided after a 2-core Xeon reported 110–114 % of the old bound
(the step's products timed alone at their own shapes, plus the update's bytes at DRAM bandwidth:
both parts could be beaten, the second by a cache-resident update). It is now a lower bound on
the step's time by construction: the step's matrix-product FLOPs at the best GEMM rate this run
saw, where "best" is the maximum over (a) every product shape of the timed steps and one large
square product, at each BLAS thread count from 1 up to the configured one, best of repeats, and
(b) the FLOPs over the fastest repeat of every timed step (optbench's and torch's), since a step
that does those FLOPs in t proves the machine can run them at FLOPs / t. So no row can pass 100 %;
(b) setting the peak is recorded (`gemm_peak_source`) because it means (a) undershot. The
update, elementwise work and overhead are outside the bound: 100 % would mean nothing but the
products, at peak. The products timed alone at the step's shapes (`gemm_ms`) are kept as a
figure, not a bound.

On a GPU (`--device gpu`) the rows add optbench's step replayed as a CUDA graph (`graphs`);
torch runs eager with its fused optimizers, as a user would run it. There the GEMM peak is
compute throughput (a 4096² product), so launch-bound small nets show a few per cent.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np

from optbench.backend import Device
from optbench.errors import OptbenchError
from optbench.graphs import GraphedStep
from optbench.mlp import MLP, Population
from optbench.optimizers import make_optimizer
from optbench.training import train_population

NETS = (
    ("default", (784, 100, 100, 100, 100, 10), 128),
    ("wide", (784, 512, 512, 10), 64),
    ("wide", (784, 512, 512, 10), 256),
)
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
# (name, sizes, batch, members): K members in one input group (they share one batch).
POPULATIONS = (("default", (784, 100, 100, 100, 100, 10), 128, 12),)
POPULATION_OPTIMIZERS = ("adam", "sgd")
# Arrays each optimizer reads and writes per parameter in its update (p and g included).
UPDATE_ARRAYS = {"sgd": 3, "momentum": 5, "adam": 7, "rmsprop": 5}
BENCH_LR = {"sgd": 0.01, "momentum": 0.01}
# The large square product beside the steps' own shapes when measuring the GEMM peak.
PEAK_SQUARE = {"cpu": 1024, "gpu": 4096}

# OpenBLAS's idle threads busy-wait about 0.1 s after its last call (2^28 cycles), and torch's
# OpenMP threads spin too: in one process they steal the cores from whatever is timed next
# (measured: torch's first 50 steps after ours took 1.6 ms/step instead of 0.68). Each timed
# block therefore starts after a pause long enough for them to go to sleep.
PAUSE_S = 0.25

POPULATION_LABEL = "optbench (population)"
SINGLE_LABEL = "optbench (single)"


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
    def best(self) -> float:
        return float(np.min(self.seconds))

    @property
    def quartiles(self) -> tuple[float, float]:
        return float(np.percentile(self.seconds, 25)), float(np.percentile(self.seconds, 75))


def gemm_shapes(sizes, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one step: forward, weight gradient, and input
    gradient (none for the input layer)."""
    shapes = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes.append((batch, a, b))  # forward: (batch, a) @ (a, b)
        shapes.append((a, batch, b))  # weight gradient: (a, batch) @ (batch, b)
        if i > 0:
            shapes.append((batch, b, a))  # input gradient: (batch, b) @ (b, a)
    return shapes


def flops_per_step(sizes, batch: int) -> float:
    """Forward, weight-gradient and input-gradient products (none for the input layer)."""
    return float(sum(2 * m * k * n for m, k, n in gemm_shapes(sizes, batch)))


def _synthetic(xp, sizes, batch, groups: int | None = None):
    """A training set of 4 batches, its labels, and one batch's indices ((groups, batch) when
    `groups` is given, as `train_population` indexes)."""
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.random((4 * batch, sizes[0]), dtype=np.float32))
    y = xp.asarray(rng.integers(0, sizes[-1], 4 * batch))
    index = rng.permutation(4 * batch)[:batch]
    return x, y, xp.asarray(index if groups is None else np.tile(index, (groups, 1)))


def _optimizer(opt: str):
    return make_optimizer(opt, **({"lr": BENCH_LR[opt]} if opt in BENCH_LR else {}))


class OursStep:
    """optbench's training step on synthetic data (the timing does not depend on the values).

    The step is `training.train`'s: the batch gathered from the training set by index, forward,
    backward, update; with `cuda_graph`, the gather, forward and backward replayed as one graph."""

    members = 1

    def __init__(self, sizes, batch, opt, device: Device, cuda_graph: bool = False):
        self.x, self.y, self.index = _synthetic(device.xp, sizes, batch)
        self.net = MLP(sizes, seed=0, xp=device.xp)
        self.optimizer = _optimizer(opt)
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


class PopulationStep:
    """`members` nets in one input group, trained by `training.train_population` itself (its
    shards on the cores, the divergence check, the grouped fused updates): seconds per step
    from its timed intervals, warm-up excluded."""

    def __init__(self, sizes, batch, members, opt, device: Device):
        self.x, self.y, _ = _synthetic(device.xp, sizes, batch, groups=1)
        self.pop = Population(sizes, [0] * members, xp=device.xp)  # one seed: one input group
        self.members, self.batch, self.opt = members, batch, opt
        self.sync = device.sync

    def __call__(self, steps: int) -> float:
        optimizers = [_optimizer(self.opt) for _ in range(self.members)]
        log = train_population(self.pop, optimizers, self.x, self.y, {}, iterations=steps, eval_every=steps,
                               batch_size=self.batch, sync=self.sync)
        return self.batch / log.evaluations[-1]["samples_per_s"]


def _torch_optimizer(torch, opt: str, params, form: dict):
    lr = BENCH_LR.get(opt)
    make = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr, **form),
        "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, **form),
        "adam": lambda: torch.optim.Adam(params, **form),
        "rmsprop": lambda: torch.optim.RMSprop(params, **form),
    }
    return make[opt]()


def _torch_data(torch, device: str, sizes, batch):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4 * batch, sizes[0], generator=generator).to(device)
    y = torch.randint(0, sizes[-1], (4 * batch,), generator=generator).to(device)
    index = torch.randperm(4 * batch, generator=generator)[:batch].to(device)
    return x, y, index


class TorchStep:
    """The same net, batch and optimizer in PyTorch, in its fastest optimizer form."""

    members = 1

    def __init__(self, sizes, batch, opt, device: Device, form: dict):
        import torch

        self.torch = torch
        self.device = "cuda" if device.name == "gpu" else "cpu"
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1]).to(self.device)
        params = list(self.net.parameters())
        self.optimizer = _torch_optimizer(torch, opt, params, form)
        self.form = next(iter(form))
        self.x, self.y, self.index = _torch_data(torch, self.device, sizes, batch)
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


class TorchStackedStep(TorchStep):
    """`members` copies of the net in PyTorch, stacked: each weight one (K, in, out) tensor and
    each bias (K, 1, out); layer 1 is `baddbmm` of the shared batch broadcast to (K, n, d) (a
    stride-0 view, no copy), ReLU between layers, the members' mean cross-entropies summed (so
    each member's gradient is its own), one backward, and the optimizer over the stacked tensors."""

    def __init__(self, sizes, batch, members, opt, device: Device, form: dict):
        import torch

        self.torch = torch
        self.device = "cuda" if device.name == "gpu" else "cpu"
        self.members, self.batch = members, batch
        generator = torch.Generator().manual_seed(1)
        self.weights, self.biases = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):  # nn.Linear's initialisation, per member
            bound = 1 / math.sqrt(a)
            W = (torch.rand(members, a, b, generator=generator) * 2 - 1) * bound
            bias = (torch.rand(members, 1, b, generator=generator) * 2 - 1) * bound
            self.weights.append(W.to(self.device).requires_grad_())
            self.biases.append(bias.to(self.device).requires_grad_())
        params = self.weights + self.biases
        self.optimizer = _torch_optimizer(torch, opt, params, form)
        self.form = next(iter(form))
        self.x, self.y, self.index = _torch_data(torch, self.device, sizes, batch)
        for p in params:
            p.grad = torch.zeros_like(p)

    def _loss(self):
        torch = self.torch
        x, y = self.x[self.index], self.y[self.index]
        h = x.expand(self.members, *x.shape)
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, W)
            if i < last:
                h = torch.relu(h)
        targets = y.expand(self.members, -1).reshape(-1)
        # Sum over members of each member's mean over its batch.
        return torch.nn.functional.cross_entropy(h.reshape(-1, h.shape[-1]), targets, reduction="sum") / self.batch

    def __call__(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=False)
            self._loss().backward()
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


def _fastest(build, opt: str, steps: int, pause: float):
    """`build(form)` in each form torch offers for `opt`, the quicker kept (fused is not always
    the faster on a CPU); None when no form runs here."""
    best, best_time = None, math.inf
    for form in torch_forms(opt):
        try:
            candidate = build(form)
            candidate(max(3, steps // 5))
        except (RuntimeError, TypeError, ValueError):  # this form is not offered for this device
            continue
        seconds = min(_after_pause(candidate, steps, pause) for _ in range(3))
        if seconds < best_time:
            best, best_time = candidate, seconds
    return best


def fastest_torch(sizes, batch, opt, device: Device, steps: int, pause: float = PAUSE_S) -> "TorchStep":
    """torch in its fastest form here: each form offered is tried and the quicker one kept."""
    return _fastest(lambda form: TorchStep(sizes, batch, opt, device, form), opt, steps, pause)


def fastest_torch_stacked(sizes, batch, members, opt, device: Device, steps: int,
                          pause: float = PAUSE_S) -> "TorchStackedStep":
    return _fastest(lambda form: TorchStackedStep(sizes, batch, members, opt, device, form), opt, steps, pause)


def gemm_seconds(sizes, batch: int, device: Device, repeats: int, steps: int) -> float:
    """Median time of the step's matrix products alone, same shapes, same array module (a
    figure, not a bound: in the step the same products may run faster or slower)."""
    operands = [_operands(device.xp, shape) for shape in gemm_shapes(sizes, batch)]
    times = []
    for _ in range(repeats):
        device.sync()
        start = time.perf_counter()
        for _ in range(steps):
            for a, b, out in operands:
                device.xp.matmul(a, b, out=out)
        device.sync()
        times.append((time.perf_counter() - start) / steps)
    return float(np.median(times))


def _operands(xp, shape):
    m, k, n = shape
    rng = np.random.default_rng(0)
    return (xp.asarray(rng.random((m, k), dtype=np.float32)), xp.asarray(rng.random((k, n), dtype=np.float32)),
            xp.empty((m, n), dtype=np.float32))


def thread_counts(device: Device) -> list[int | None]:
    """BLAS thread counts the peak is measured at: 1, 2, 4, ... up to the configured count
    (CPU); [None], no limit set, on a GPU or without threadpoolctl."""
    configured = device.facts.get("blas_threads")
    if device.name != "cpu" or not configured:
        return [None]
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return [None]
    counts, t = [], 1
    while t < configured:
        counts.append(t)
        t *= 2
    return counts + [int(configured)]


def _blas_threads(threads: int | None):
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def gemm_peak(device: Device, shapes, repeats: int, min_seconds: float = 2e-3) -> tuple[float, str]:
    """The best float32 GEMM rate measured here (FLOP/s) and where: over `shapes` and one
    large square product, at each of `thread_counts`, the fastest of `repeats` timings of
    enough calls to last `min_seconds`."""
    xp = device.xp
    square = PEAK_SQUARE.get(device.name, 1024)
    candidates = sorted(set(map(tuple, shapes))) + [(square, square, square)]
    operands = {shape: _operands(xp, shape) for shape in candidates}
    best, where = 0.0, ""
    for threads in thread_counts(device):
        with _blas_threads(threads):
            for shape, (a, b, out) in operands.items():
                xp.matmul(a, b, out=out)  # warm: first-call costs, threads woken
                device.sync()
                start = time.perf_counter()
                xp.matmul(a, b, out=out)
                device.sync()
                calls = max(1, min(1000, int(min_seconds / max(time.perf_counter() - start, 1e-7))))
                for _ in range(repeats):
                    device.sync()
                    start = time.perf_counter()
                    for _ in range(calls):
                        xp.matmul(a, b, out=out)
                    device.sync()
                    rate = 2 * math.prod(shape) * calls / (time.perf_counter() - start)
                    if rate > best:
                        threads_text = "" if threads is None else f", {threads} thread{'s' if threads > 1 else ''}"
                        best, where = rate, "x".join(map(str, shape)) + threads_text
    return best, where


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


def _interleaved(impls: dict, repeats: int, steps: int, pause: float) -> dict[str, Timing]:
    """Seconds per step of every impl, repeat by repeat in turn, each block after the pause
    (so a neighbour's load, and the spinning threads of the one before, hit every one alike)."""
    for impl in impls.values():  # warm-up
        impl(max(3, steps // 5))
    times = {label: [] for label in impls}
    for _ in range(repeats):
        for label, impl in impls.items():
            times[label].append(_after_pause(impl, steps, pause))
    return {label: Timing(t) for label, t in times.items()}


def run_bench(device: Device, *, repeats: int = 7, steps: int = 50, nets=NETS, optimizers=OPTIMIZERS,
              populations=POPULATIONS, population_optimizers=POPULATION_OPTIMIZERS, progress=None,
              pause: float = PAUSE_S):
    """Records for the step table (population rows among them, `kind` "population") and the
    update table, and facts about the run."""
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
            update_dram = UPDATE_ARRAYS[opt] * 4 * n_params / bandwidth
            timings = _interleaved(impls, repeats, steps, pause)
            update_times = {}
            if (net_name, opt) not in timed_updates:  # the same parameters at another batch size
                timed_updates.add((net_name, opt))
                update_impls = {label: impl for label, impl in impls.items() if "graph" not in label}
                update_times = {label: [] for label in update_impls}
                for _ in range(repeats):
                    for label, impl in update_impls.items():
                        update_times[label].append(_after_pause(impl.update_only, steps, pause))
            torch_label = _torch_label(impls)
            for label, t in timings.items():
                step_rows.append({
                    **_timing_fields(t, batch), "kind": "step", "device": device.name, "net": net_name,
                    "layers": "-".join(map(str, sizes)), "batch": batch, "members": 1, "optimizer": opt, "impl": label,
                    "vs_torch": timings[torch_label].median / t.median if torch_label else math.nan,
                    "vs_single": math.nan, "flops": flops, "gemm_ms": 1e3 * gemm,
                    "gemm_gflops": flops / gemm / 1e9, "update_dram_us": 1e6 * update_dram,
                })
            for label, times in update_times.items():
                update_rows.append({
                    "device": device.name, "net": net_name, "params": n_params, "optimizer": opt, "impl": label,
                    "us_per_update": 1e6 * Timing(times).median, "dram_us": 1e6 * update_dram,
                    "gb_per_s": UPDATE_ARRAYS[opt] * 4 * n_params / Timing(times).median / 1e9,
                })
            if progress:
                progress()
    for net_name, sizes, batch, members in populations:
        flops = members * flops_per_step(sizes, batch)
        for opt in population_optimizers:
            impls = {POPULATION_LABEL: PopulationStep(sizes, batch, members, opt, device)}
            theirs = fastest_torch_stacked(sizes, batch, members, opt, device, steps, pause) if with_torch else None
            if theirs:
                impls[f"torch (stacked, {theirs.form})"] = theirs
            impls[SINGLE_LABEL] = OursStep(sizes, batch, opt, device)
            timings = _interleaved(impls, repeats, steps, pause)
            rate = {label: impl.members * batch / timings[label].median for label, impl in impls.items()}
            torch_label = _torch_label(impls)
            for label, t in timings.items():
                k = impls[label].members
                step_rows.append({
                    **_timing_fields(t, k * batch), "kind": "population", "device": device.name, "net": net_name,
                    "layers": "-".join(map(str, sizes)), "batch": batch, "members": k, "optimizer": opt,
                    "impl": label, "vs_torch": rate[label] / rate[torch_label] if torch_label else math.nan,
                    "vs_single": rate[label] / rate[SINGLE_LABEL], "flops": k * flops / members,
                })
            if progress:
                progress()
    facts = {"bandwidth_gb_per_s": bandwidth / 1e9, "torch": with_torch, "pause_s": pause}
    facts.update(_apply_gemm_peak(step_rows, device, nets, populations, repeats))
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


def _timing_fields(t: Timing, samples_per_step: int) -> dict:
    q1, q3 = t.quartiles
    return {"ms_per_step": 1e3 * t.median, "ms_q1": 1e3 * q1, "ms_q3": 1e3 * q3, "ms_best": 1e3 * t.best,
            "samples_per_s": samples_per_step / t.median}


def _apply_gemm_peak(rows: list[dict], device: Device, nets, populations, repeats: int) -> dict:
    """Set every row's bound (its FLOPs at the GEMM peak) once all steps are timed, the peak
    raised to any step's own FLOPs / fastest repeat, so that no row can pass 100 %."""
    shapes = [s for _, sizes, batch in nets for s in gemm_shapes(sizes, batch)]
    shapes += [s for _, sizes, batch, _ in populations for s in gemm_shapes(sizes, batch)]
    measured, where = gemm_peak(device, shapes, repeats)
    peak, source = measured, f"GEMM {where}"
    for row in rows:
        shown = row["flops"] / (1e-3 * row["ms_best"])
        if shown > peak:
            peak = shown
            source = (f"step {row['net']}/{row['batch']}/{row['optimizer']} {row['impl']} "
                      f"(the GEMMs measured {measured / 1e9:.1f} GFLOP/s)")
    for row in rows:
        row["bound_ms"] = 1e3 * row["flops"] / peak
        row["of_bound"] = row["bound_ms"] / row["ms_per_step"]
        row["gemm_peak_gflops"] = peak / 1e9
    return {"gemm_peak_gflops": peak / 1e9, "gemm_peak_measured_gflops": measured / 1e9, "gemm_peak_source": source}


def _torch_label(impls: dict) -> str | None:
    return next((label for label in impls if label.startswith("torch")), None)
