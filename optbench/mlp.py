"""Multilayer perceptrons written by hand in `xp` (NumPy or CuPy), trained as a population.

A `Population` holds K members of one architecture. Their parameters live in one buffer
`params` of shape (K, P): row k is member k's flat buffer, and every weight and bias is a view
into it (`p["W0"]` is the (K, fan_in, fan_out) stack of every member's first weight), so an
optimizer updates a member as one array, exactly as it updates a point on a 2-D surface.
Forward and backward are batched matrix products over members. Members are split into input
groups (one per seed: the members of a group see the same batch), and a group's members read
its one input batch instead of K copies of it.

Each member's products are the 2-D matrix products it would compute alone (NumPy's stacked
`matmul` calls the same GEMM per member), so a member trains as it would in a population of
one; `MLP` is that population of one, with 1-D `params`.

Layers: Linear -> [BatchNorm] -> activation -> [Dropout], repeated, then a final Linear whose
logits go into a numerically stable softmax cross-entropy.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from optbench.backend import get_array_module
from optbench.errors import OptbenchError

ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("he", "xavier", "std", "torch")


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer `labels` under softmax(`logits`), and d loss / d logits.

    `logits` is (n, C) with `labels` (n,), or a stack (K, n, C) with labels (K, n): then the
    loss is one value per member, (K,).
    """
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)  # exp never overflows
    exp = xp.exp(shifted)
    total = exp.sum(axis=-1, keepdims=True)
    picked = xp.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
    loss = (xp.log(total[..., 0]) - picked).mean(axis=-1)
    grad = exp / total
    # Subtracting the one-hot labels rather than scattering into grad[rows, labels]: the same
    # numbers (x - 0 is x), and a plain elementwise kernel on the GPU, safe to record in a graph.
    grad -= xp.arange(logits.shape[-1]) == labels[..., None]
    grad /= labels.shape[-1]
    return loss, grad


def check_options(activation: str, init: str, dropout: float, prefix: str = "") -> None:
    """Refuse network options the MLP does not have, naming the choices (`prefix` "--" names
    them as command-line options)."""
    if activation not in ACTIVATIONS:
        raise OptbenchError(f"unknown {prefix}activation {activation!r} (choose from {', '.join(ACTIVATIONS)})")
    if init not in INITS:
        raise OptbenchError(f"unknown {prefix}init {init!r} (choose from {', '.join(INITS)})")
    if not 0 <= dropout < 1:
        raise OptbenchError(f"invalid {prefix}dropout {dropout} (must be in [0, 1))")


def parameter_shapes(sizes: Sequence[int], batchnorm: bool) -> list[tuple[str, tuple[int, ...]]]:
    """The named parameter arrays of one member, in their order in its flat buffer."""
    shapes = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes.append((f"W{i}", (fan_in, fan_out)))
        shapes.append((f"b{i}", (fan_out,)))
        if batchnorm and i < len(sizes) - 2:
            shapes.append((f"gamma{i}", (fan_out,)))
            shapes.append((f"beta{i}", (fan_out,)))
    return shapes


def _views(buffer, shapes):
    """(name, view) of each parameter in a (K, P) buffer: (K, *shape) stacks."""
    offset = 0
    for name, shape in shapes:
        size = math.prod(shape)
        yield name, buffer[:, offset : offset + size].reshape((buffer.shape[0], *shape))
        offset += size


def parameter_count(sizes: Sequence[int], batchnorm: bool = False) -> int:
    return sum(math.prod(shape) for _, shape in parameter_shapes(sizes, batchnorm))


def initial_weights(sizes: Sequence[int], init: str, seed: int, batchnorm: bool = False, dtype=np.float32) -> np.ndarray:
    """One member's flat parameter buffer at the start, drawn on the host with NumPy so that
    CPU and GPU start from identical weights.

    `he`: N(0, 2/fan_in); `xavier`: N(0, 1/fan_in), the 1/sqrt(fan_in) form of
    deep-learning-from-scratch (LeCun's scaling), not Glorot's; `std`: N(0, 0.01²); biases 0.
    `torch`: `nn.Linear`'s default, weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a = sqrt(5)), drawn from NumPy's generator, not torch's.
    """
    rng = np.random.default_rng(seed)
    flat = np.zeros(parameter_count(sizes, batchnorm), dtype=dtype)
    views = dict(_views(flat[None], parameter_shapes(sizes, batchnorm)))
    for i, fan_in in enumerate(sizes[:-1]):
        W, b = views[f"W{i}"][0], views[f"b{i}"][0]
        if init == "torch":
            bound = 1 / math.sqrt(fan_in)
            W[...] = rng.uniform(-bound, bound, W.shape)
            b[...] = rng.uniform(-bound, bound, b.shape)
        else:
            scale = {"he": math.sqrt(2.0 / fan_in), "xavier": math.sqrt(1.0 / fan_in)}.get(init, 0.01)
            W[...] = rng.standard_normal(W.shape) * scale
        if f"gamma{i}" in views:
            views[f"gamma{i}"][...] = 1
    return flat


class Population:
    """K members of the MLP `sizes` = (784, 100, ..., 10), one row of `params` each.

    `seeds[k]` sets member k's initial weights (and its dropout masks); `groups[k]` is the index
    of the input batch member k reads (members of one group must be contiguous; default: one
    group per distinct seed, in order). `grads` mirrors `params`.
    """

    def __init__(self, sizes, seeds: Sequence[int] = (0,), *, groups: Sequence[int] | None = None, activation="relu",
                 init="he", dropout=0.0, batchnorm=False, xp=np, dtype=np.float32):
        check_options(activation, init, dropout)
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise OptbenchError(f"invalid layer sizes {sizes}")
        if len(seeds) < 1:
            raise OptbenchError("a population needs at least one member")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation, self.init, self.dropout, self.batchnorm = activation, init, dropout, batchnorm
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.seeds = [int(s) for s in seeds]
        self.k = len(self.seeds)
        self.group_slices = _group_slices(groups if groups is not None else _seed_groups(self.seeds))
        self.training = True
        self.bn_momentum, self.bn_eps = 0.1, 1e-5  # torch.nn.BatchNorm1d's defaults

        shapes = parameter_shapes(self.sizes, batchnorm)
        self.params = xp.asarray(np.stack([initial_weights(self.sizes, init, seed, batchnorm, self.dtype) for seed in self.seeds]))
        self.grads = xp.zeros_like(self.params)
        # The stacks the maths works on; `p` and `g` are the same views for a population.
        self._p, self._g = dict(_views(self.params, shapes)), dict(_views(self.grads, shapes))
        self.p, self.g = self._p, self._g
        # Row k is member k's flat buffer, whatever shape a subclass gives `params`.
        self.rows, self.grad_rows = self.params, self.grads
        self.running = {}
        self._workspaces: dict[tuple[int, int, int], dict] = {}
        for i in range(self.n_layers - 1):
            if batchnorm:
                self.running[f"mean{i}"] = xp.zeros((self.k, self.sizes[i + 1]), dtype=self.dtype)
                self.running[f"var{i}"] = xp.ones((self.k, self.sizes[i + 1]), dtype=self.dtype)
        self._dropout_rngs = [self._new_dropout_rng(seed) for seed in self.seeds]
        # Each member's input group, on the device once: no transfer inside a step (or a CUDA graph).
        self._group_index = xp.asarray(np.concatenate([np.full(s.stop - s.start, g) for g, s in enumerate(self.group_slices)]))

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_groups(self) -> int:
        return len(self.group_slices)

    def _new_dropout_rng(self, seed: int):
        # Masks are drawn where the activations live: a host draw would copy to the GPU, and
        # wait for it, on every step. CPU and GPU masks therefore differ (their weights do not).
        # A stream of its own: default_rng(seed + 1) would be the next seed's initial weights.
        stream = np.random.SeedSequence([seed, 1])
        if self.xp is np:
            return np.random.default_rng(stream)
        rng = self.xp.random.RandomState(int(stream.generate_state(1)[0]))
        rng.random_sample(1, dtype=self.dtype)  # cuRAND sets its state up on the first draw: not in a timed step
        return rng

    def _draw_uniform(self, k: int, shape):
        rng = self._dropout_rngs[k]
        if isinstance(rng, np.random.Generator):
            return rng.random(shape, dtype=np.float32)
        return rng.random_sample(shape, dtype=self.dtype)

    def forward_stack(self, x, members: slice = slice(None)):
        """Logits (k, n, C) of the members in `members` (a contiguous range, all by default).

        `x` is (G, n, d): the input batch of each group. With G = 1 every member reads x[0]
        (evaluation). Keeps what `backward_stack` needs when training.
        """
        logits, self._cache = self._forward(x, members)
        return logits

    def logits(self, x, members: slice = slice(None)):
        """`forward_stack` without keeping anything for backward: safe on several threads."""
        return self._forward(x, members)[0]

    def _input_rows(self, x, start: int, stop: int) -> list[tuple[int, slice]]:
        """(input group, member rows relative to `start`) for the members start..stop."""
        if x.shape[0] == 1:
            return [(0, slice(0, stop - start))]
        rows = []
        for g, s in enumerate(self.group_slices):
            first, last = max(s.start, start), min(s.stop, stop)
            if first < last:
                rows.append((g, slice(first - start, last - start)))
        return rows

    def _workspace(self, start: int, stop: int, n: int) -> dict:
        """Arrays a training step of members start..stop on batches of n writes into: the same
        ones every step. Fresh temporaries of this size are returned to the OS when freed and
        page-fault anew on the next step (a third of a shard's forward pass went to that)."""
        key = (start, stop, n)
        work = self._workspaces.get(key)
        if work is None:
            xp, k = self.xp, stop - start
            work = {}
            for i, width in enumerate(self.sizes[1:]):
                for name in ("z", "a", "delta", "mask") if i < self.n_layers - 1 else ("z",):
                    dtype = bool if name == "mask" else self.dtype
                    work[f"{name}{i}"] = xp.empty((k, n, width), dtype=dtype)
                if i > 0:
                    work[f"back{i}"] = xp.empty((k, n, self.sizes[i]), dtype=self.dtype)
            self._workspaces[key] = work  # separate ranges (shards on threads) get separate arrays
        return work

    def _forward(self, x, members: slice, work: dict | None = None):
        """Logits of a range of members and the cache of its backward pass (local, so that
        separate ranges may run at once on separate threads). With `work` (`_workspace`) the
        activations are written there rather than into new arrays."""
        xp = self.xp
        start, stop, _ = members.indices(self.k)
        p = {name: view[start:stop] for name, view in self._p.items()}
        cache = {"layers": [], "members": (start, stop), "rows": self._input_rows(x, start, stop), "work": work}
        out = work.get if work is not None else (lambda name: None)
        h = out("z0")
        if h is None:
            h = xp.empty((stop - start, x.shape[1], self.sizes[1]), dtype=self.dtype)
        for g, rows in cache["rows"]:
            xp.matmul(x[g], p["W0"][rows], out=h[rows])  # one shared input per group, no copies
        for i in range(self.n_layers):
            if i == 0:
                z = h
            else:
                z = xp.matmul(h, p[f"W{i}"], out=out(f"z{i}"))
            z += p[f"b{i}"][:, None, :]
            layer = {"input": x if i == 0 else h}
            cache["layers"].append(layer)
            if i == self.n_layers - 1:
                return z, cache
            if self.batchnorm:
                z = self._batchnorm_forward(i, z, layer, start, stop)
            a = out(f"a{i}")
            if self.activation == "relu":
                a = xp.maximum(z, 0, out=a)
            elif self.activation == "sigmoid":
                a = xp.negative(z, out=a)
                xp.exp(a, out=a)
                a += 1
                xp.divide(1, a, out=a)
            else:
                a = xp.tanh(z, out=a)
            layer["z"], layer["a"] = z, a
            if self.training and self.dropout > 0:
                keep = xp.stack([self._draw_uniform(k, a.shape[1:]) for k in range(start, stop)]) >= self.dropout
                mask = keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)
                layer["mask"] = mask
                a = a * mask
            h = a
        raise AssertionError("unreachable")

    def _batchnorm_forward(self, i, z, layer, start, stop):
        xp = self.xp
        if self.training:
            mean = z.mean(axis=1)
            var = z.var(axis=1)
            n = z.shape[1]
            m = self.bn_momentum
            rows = slice(start, stop)
            self.running[f"mean{i}"][rows] = (1 - m) * self.running[f"mean{i}"][rows] + m * mean
            # torch keeps the unbiased variance in its running estimate.
            self.running[f"var{i}"][rows] = (1 - m) * self.running[f"var{i}"][rows] + m * var * (n / max(n - 1, 1))
        else:
            mean, var = self.running[f"mean{i}"][start:stop], self.running[f"var{i}"][start:stop]
        inv_std = 1 / xp.sqrt(var[:, None, :] + self.dtype.type(self.bn_eps))
        z_hat = (z - mean[:, None, :]) * inv_std
        layer["z_hat"], layer["inv_std"] = z_hat, inv_std
        return z_hat * self._p[f"gamma{i}"][start:stop, None, :] + self._p[f"beta{i}"][start:stop, None, :]

    def backward_stack(self, dlogits, cache=None) -> None:
        """Fill `grads` from d loss / d logits (k, n, C) of a forward pass: the last
        `forward_stack`'s by default, else that of `cache` (from `_forward`)."""
        xp = self.xp
        cache = cache or self._cache
        start, stop = cache["members"]
        p = {name: view[start:stop] for name, view in self._p.items()}
        g = {name: view[start:stop] for name, view in self._g.items()}
        work = cache.get("work")
        out = work.get if work is not None else (lambda name: None)
        delta = dlogits
        for i in reversed(range(self.n_layers)):
            layer = cache["layers"][i]
            if i < self.n_layers - 1:
                if "mask" in layer:
                    delta = delta * layer["mask"]
                into = out(f"delta{i}")
                if self.activation == "relu":
                    positive = xp.greater(layer["z"], 0, out=out(f"mask{i}"))
                    delta = xp.multiply(delta, positive, out=into)
                elif self.activation == "sigmoid":
                    delta = xp.multiply(delta, layer["a"], out=into)
                    delta *= 1 - layer["a"]
                else:
                    delta = xp.multiply(delta, 1 - layer["a"] * layer["a"], out=into)
                if self.batchnorm:
                    delta = self._batchnorm_backward(i, delta, layer, p, g)
            # Straight into the gradient buffer: no temporary, no copy.
            if i == 0:
                x = layer["input"]
                for group, rows in cache["rows"]:
                    xp.matmul(x[group].T, delta[rows], out=g["W0"][rows])
            else:
                xp.matmul(layer["input"].transpose(0, 2, 1), delta, out=g[f"W{i}"])
            delta.sum(axis=1, out=g[f"b{i}"])
            if i > 0:
                delta = xp.matmul(delta, p[f"W{i}"].transpose(0, 2, 1), out=out(f"back{i}"))

    def refresh_batchnorm(self, batches, member: int) -> None:
        """Member `member`'s running batch-norm statistics gathered anew at its current weights:
        forward passes over `batches` (each (n, d)) in training mode, the others' rows untouched.

        Schedule-Free evaluates its average x but trains, and gathers these statistics, at y; its
        reference asks for this before evaluating (schedulefree's README: 50 training batches in
        train mode). Without dropout here: its masks would advance the member's stream."""
        training, dropout = self.training, self.dropout
        self.training, self.dropout = True, 0.0
        try:
            for x in batches:
                self._forward(x[None], slice(member, member + 1))
        finally:
            self.training, self.dropout = training, dropout

    def _batchnorm_backward(self, i, delta, layer, p, g):
        z_hat, inv_std = layer["z_hat"], layer["inv_std"]
        g[f"gamma{i}"][...] = (delta * z_hat).sum(axis=1)
        g[f"beta{i}"][...] = delta.sum(axis=1)
        dz_hat = delta * p[f"gamma{i}"][:, None, :]
        # d/dz of (z - mean) / std over the batch, in closed form.
        return inv_std * (dz_hat - dz_hat.mean(axis=1, keepdims=True) - z_hat * (dz_hat * z_hat).mean(axis=1, keepdims=True))

    def losses_and_grads(self, x, labels, weight_decay: float = 0.0, members: slice = slice(None)):
        """Forward, loss (plus 0.5 * wd * |W|^2 over the weights), backward, for the members in
        `members` (all by default; separate ranges may run on separate threads at once).

        `x` (G, n, d) and `labels` (G, n) per input group; returns the losses, (k,).
        """
        start, stop, _ = members.indices(self.k)
        if labels.shape[0] == self.k:
            member_labels = labels[start:stop]
        elif labels.shape[0] == 1:
            member_labels = self.xp.broadcast_to(labels, (stop - start, labels.shape[1]))
        else:
            member_labels = labels[self._group_index[start:stop]]
        logits, cache = self._forward(x, slice(start, stop), self._workspace(start, stop, x.shape[1]))
        loss, dlogits = softmax_cross_entropy(logits, member_labels)
        self.backward_stack(dlogits, cache)
        if weight_decay:
            for i in range(self.n_layers):
                W = self._p[f"W{i}"][start:stop]
                flat = W.reshape(stop - start, -1)  # each member's sum in one pass, as a flat array sums
                loss = loss + 0.5 * weight_decay * (flat * flat).sum(axis=1)
                self._g[f"W{i}"][start:stop] += weight_decay * W
        return loss

    # A population's own shapes are the stacked ones; `MLP` gives the single model's.
    forward, backward, loss_and_grads = forward_stack, backward_stack, losses_and_grads

    def snapshot(self):
        """Everything training changes besides the optimizer state: weights, running
        statistics, the dropout generators. `restore` puts it back (used after the warm-up steps
        that precede training; on CuPy a generator goes back to its seeded start)."""
        running = {k: v.copy() for k, v in self.running.items()}
        # CuPy's generator cannot hand out its state: None means "back to its seeded start".
        rng_states = [rng.bit_generator.state if self.xp is np else None for rng in self._dropout_rngs]
        return self.rows.copy(), running, rng_states

    def restore(self, snapshot) -> None:
        params, running, rng_states = snapshot
        self.rows[...] = params
        self.running = {k: v.copy() for k, v in running.items()}
        for k, state in enumerate(rng_states):
            if state is None:
                self._dropout_rngs[k] = self._new_dropout_rng(self.seeds[k])
            else:
                self._dropout_rngs[k].bit_generator.state = state


def _seed_groups(seeds: Sequence[int]) -> list[int]:
    order: dict[int, int] = {}
    return [order.setdefault(seed, len(order)) for seed in seeds]


def _group_slices(groups: Sequence[int]) -> list[slice]:
    """Contiguous member ranges per group index 0, 1, ...; refuses interleaved groups."""
    slices, start = [], 0
    groups = list(groups)
    for k in range(1, len(groups) + 1):
        if k == len(groups) or groups[k] != groups[start]:
            if groups[start] != len(slices):
                raise OptbenchError("members of one input group must be contiguous, groups numbered in order")
            slices.append(slice(start, k))
            start = k
    return slices


class MLP(Population):
    """A population of one, with the single model's shapes: `params` and `grads` are 1-D, `p`
    and `g` hold 2-D weights, `forward` takes (n, d) and returns (n, C), the loss is a scalar."""

    def __init__(self, sizes, *, activation="relu", init="he", dropout=0.0, batchnorm=False, seed=0, xp=np,
                 dtype=np.float32):
        super().__init__(sizes, (seed,), activation=activation, init=init, dropout=dropout, batchnorm=batchnorm,
                         xp=xp, dtype=dtype)
        self.params, self.grads = self.params[0], self.grads[0]
        self.p = {name: view[0] for name, view in self._p.items()}
        self.g = {name: view[0] for name, view in self._g.items()}

    @property
    def _dropout_rng(self):
        return self._dropout_rngs[0]

    @_dropout_rng.setter
    def _dropout_rng(self, rng) -> None:
        self._dropout_rngs[0] = rng

    def forward(self, x, members: slice = slice(None)):
        return self.forward_stack(x[None], members)[0]

    def backward(self, dlogits) -> None:
        self.backward_stack(dlogits[None])

    def loss_and_grads(self, x, labels, weight_decay: float = 0.0):
        return self.losses_and_grads(x[None], labels[None], weight_decay)[0]
