"""A multilayer perceptron written by hand in `xp` (NumPy or CuPy): forward, backward, loss.

All weights and biases are views into one contiguous float32 buffer, and so are their
gradients, so an optimizer updates the whole network as a single array (`net.params`,
`net.grads`) with one `init`/`update`, exactly as it updates a point on a 2-D surface.

Layers: Linear -> [BatchNorm] -> activation -> [Dropout], repeated, then a final Linear whose
logits go into a numerically stable softmax cross-entropy.
"""

from __future__ import annotations

import math

import numpy as np

from optbench.backend import get_array_module
from optbench.errors import OptbenchError

ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("he", "xavier", "std")


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer `labels` under softmax(`logits`), and d loss / d logits."""
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)  # exp never overflows
    exp = xp.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(len(labels))
    loss = (xp.log(total[:, 0]) - shifted[rows, labels]).mean()
    grad = exp / total
    # Subtracting the one-hot labels rather than scattering into grad[rows, labels]: the same
    # numbers (x - 0 is x), and a plain elementwise kernel on the GPU, safe to record in a graph.
    grad -= xp.arange(logits.shape[1]) == labels[:, None]
    grad /= len(labels)
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


class MLP:
    """`sizes` = (784, 100, ..., 10). Parameters live in `params`; `grads` mirrors it."""

    def __init__(self, sizes, *, activation="relu", init="he", dropout=0.0, batchnorm=False, seed=0, xp=np, dtype=np.float32):
        check_options(activation, init, dropout)
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise OptbenchError(f"invalid layer sizes {sizes}")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation, self.init, self.dropout, self.batchnorm = activation, init, dropout, batchnorm
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.training = True
        self.bn_momentum, self.bn_eps = 0.1, 1e-5  # torch.nn.BatchNorm1d's defaults

        shapes = []
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            shapes.append((f"W{i}", (fan_in, fan_out)))
            shapes.append((f"b{i}", (fan_out,)))
            if batchnorm and i < len(self.sizes) - 2:
                shapes.append((f"gamma{i}", (fan_out,)))
                shapes.append((f"beta{i}", (fan_out,)))
        total = sum(math.prod(shape) for _, shape in shapes)
        self.params = xp.zeros(total, dtype=self.dtype)
        self.grads = xp.zeros(total, dtype=self.dtype)
        self.p, self.g = {}, {}
        offset = 0
        for name, shape in shapes:
            size = math.prod(shape)
            self.p[name] = self.params[offset : offset + size].reshape(shape)
            self.g[name] = self.grads[offset : offset + size].reshape(shape)
            offset += size
        self.running = {}
        self._init_weights(seed)

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def _init_weights(self, seed: int) -> None:
        # Drawn on the host with NumPy so that CPU and GPU start from identical weights.
        rng = np.random.default_rng(seed)
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            if self.init == "he":
                scale = math.sqrt(2.0 / fan_in)
            elif self.init == "xavier":
                # The 1/sqrt(fan_in) form used by deep-learning-from-scratch (LeCun's scaling),
                # not Glorot's sqrt(2 / (fan_in + fan_out)).
                scale = math.sqrt(1.0 / fan_in)
            else:
                scale = 0.01
            self.p[f"W{i}"][...] = self.xp.asarray(rng.standard_normal((fan_in, fan_out)) * scale, dtype=self.dtype)
            if f"gamma{i}" in self.p:
                self.p[f"gamma{i}"][...] = 1
                self.running[f"mean{i}"] = self.xp.zeros(fan_out, dtype=self.dtype)
                self.running[f"var{i}"] = self.xp.ones(fan_out, dtype=self.dtype)
        self._dropout_seed = seed + 1
        self._dropout_rng = self._new_dropout_rng()

    def _new_dropout_rng(self):
        # Masks are drawn where the activations live: a host draw would copy to the GPU, and
        # wait for it, on every step. CPU and GPU masks therefore differ (their weights do not).
        if self.xp is np:
            return np.random.default_rng(self._dropout_seed)
        rng = self.xp.random.RandomState(self._dropout_seed)
        rng.random_sample(1, dtype=self.dtype)  # cuRAND sets its state up on the first draw: not in a timed step
        return rng

    def forward(self, x):
        """Logits for a batch `x` (n, sizes[0]); caches what backward needs."""
        xp = self.xp
        self._cache = []
        h = x
        for i in range(self.n_layers):
            z = h @ self.p[f"W{i}"] + self.p[f"b{i}"]
            layer = {"input": h}
            if i == self.n_layers - 1:
                self._cache.append(layer)
                return z
            if self.batchnorm:
                z = self._batchnorm_forward(i, z, layer)
            if self.activation == "relu":
                a = xp.maximum(z, 0)
            elif self.activation == "sigmoid":
                a = 1 / (1 + xp.exp(-z))
            else:
                a = xp.tanh(z)
            layer["z"], layer["a"] = z, a
            if self.training and self.dropout > 0:
                keep = self._draw_uniform(a.shape) >= self.dropout
                mask = keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)
                layer["mask"] = mask
                a = a * mask
            self._cache.append(layer)
            h = a
        raise AssertionError("unreachable")

    def _draw_uniform(self, shape):
        if isinstance(self._dropout_rng, np.random.Generator):
            return self._dropout_rng.random(shape, dtype=np.float32)
        return self._dropout_rng.random_sample(shape, dtype=self.dtype)

    def _batchnorm_forward(self, i, z, layer):
        xp = self.xp
        if self.training:
            mean = z.mean(axis=0)
            var = z.var(axis=0)
            n = z.shape[0]
            m = self.bn_momentum
            self.running[f"mean{i}"] = (1 - m) * self.running[f"mean{i}"] + m * mean
            # torch keeps the unbiased variance in its running estimate.
            self.running[f"var{i}"] = (1 - m) * self.running[f"var{i}"] + m * var * (n / max(n - 1, 1))
        else:
            mean, var = self.running[f"mean{i}"], self.running[f"var{i}"]
        inv_std = 1 / xp.sqrt(var + self.dtype.type(self.bn_eps))
        z_hat = (z - mean) * inv_std
        layer["z_hat"], layer["inv_std"] = z_hat, inv_std
        return z_hat * self.p[f"gamma{i}"] + self.p[f"beta{i}"]

    def backward(self, dlogits) -> None:
        """Fill `grads` from d loss / d logits of the last forward pass."""
        xp = self.xp
        delta = dlogits
        for i in reversed(range(self.n_layers)):
            layer = self._cache[i]
            if i < self.n_layers - 1:
                if "mask" in layer:
                    delta = delta * layer["mask"]
                if self.activation == "relu":
                    delta = delta * (layer["z"] > 0)
                elif self.activation == "sigmoid":
                    delta = delta * layer["a"] * (1 - layer["a"])
                else:
                    delta = delta * (1 - layer["a"] * layer["a"])
                if self.batchnorm:
                    delta = self._batchnorm_backward(i, delta, layer)
            # Straight into the gradient buffer: no temporary, no copy.
            xp.matmul(layer["input"].T, delta, out=self.g[f"W{i}"])
            delta.sum(axis=0, out=self.g[f"b{i}"])
            if i > 0:
                delta = delta @ self.p[f"W{i}"].T

    def _batchnorm_backward(self, i, delta, layer):
        z_hat, inv_std = layer["z_hat"], layer["inv_std"]
        self.g[f"gamma{i}"][...] = (delta * z_hat).sum(axis=0)
        self.g[f"beta{i}"][...] = delta.sum(axis=0)
        dz_hat = delta * self.p[f"gamma{i}"]
        # d/dz of (z - mean) / std over the batch, in closed form.
        return inv_std * (dz_hat - dz_hat.mean(axis=0) - z_hat * (dz_hat * z_hat).mean(axis=0))

    def loss_and_grads(self, x, labels, weight_decay: float = 0.0):
        """Forward, loss (plus 0.5 * wd * |W|^2 over the weights), backward; returns the loss."""
        loss, dlogits = softmax_cross_entropy(self.forward(x), labels)
        self.backward(dlogits)
        if weight_decay:
            for i in range(self.n_layers):
                W = self.p[f"W{i}"]
                loss = loss + 0.5 * weight_decay * (W * W).sum()
                self.g[f"W{i}"][...] += weight_decay * W
        return loss

    def snapshot(self):
        """Everything training changes besides the optimizer state: weights, running
        statistics, the dropout generator. `restore` puts it back (used after the warm-up steps
        that precede training; on CuPy the generator goes back to its seeded start)."""
        running = {k: v.copy() for k, v in self.running.items()}
        # CuPy's generator cannot hand out its state: None means "back to its seeded start".
        rng_state = self._dropout_rng.bit_generator.state if self.xp is np else None
        return self.params.copy(), running, rng_state

    def restore(self, snapshot) -> None:
        params, running, rng_state = snapshot
        self.params[...] = params
        self.running = {k: v.copy() for k, v in running.items()}
        if rng_state is None:
            self._dropout_rng = self._new_dropout_rng()
        else:
            self._dropout_rng.bit_generator.state = rng_state

    def predict(self, x):
        training, self.training = self.training, False
        try:
            return self.forward(x).argmax(axis=1)
        finally:
            self.training = training
