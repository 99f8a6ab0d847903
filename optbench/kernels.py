"""Fused CPU kernels for the optimizers the training loop uses most: one parallel pass per update.

The update rules in `optimizers.py` are the definition. Written with NumPy ufuncs they make
10 to 15 passes over the parameters (an Adam update of 670k parameters took 0.8 ms, 3x torch's
fused Adam); the kernels below do the same arithmetic element by element in one pass, and the
tests check that both give bitwise the same numbers, in float32 and float64, for every setting.
That holds because each kernel performs the same IEEE operations in the same order, with every
scalar rounded to the array's dtype first (as NumPy does with a Python float), and Numba does
not contract a*b+c into a fused multiply-add unless asked to (no fastmath here).

`Optimizer.update` calls them, for 1-D contiguous NumPy parameters with a scalar learning rate
(the MLP's flat buffer), with the step already counted and its scalars (`step_scalars`) computed;
everything else, and everything when Numba is missing, takes the ufunc path.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import numpy as np

from optbench.step_scalars import AdamScalars, StepSize

try:
    import numba
    from numba import njit, prange
except ImportError:  # the ufunc path serves alone
    njit = None


def flat_buffers(p, g, lr) -> bool:
    """Whether an update is of one flat float buffer with a scalar lr: what a fused kernel
    (here or in `gpu_kernels`) replaces. The array module is the caller's to check."""
    return (
        type(g) is type(p)
        and p.ndim == 1
        and p.dtype == g.dtype
        and p.dtype in (np.float32, np.float64)
        and p.flags.c_contiguous
        and g.flags.c_contiguous
        and np.isscalar(lr)
    )


def usable(p, g, lr) -> bool:
    """Whether the fused kernel may replace the ufunc path for this update."""
    return njit is not None and type(p) is np.ndarray and flat_buffers(p, g, lr)

if njit is not None:

    @njit(parallel=True, cache=True)
    def _sgd(p, g, buf, wd, momentum, one_minus_dampening, dampened, nesterov, first, lr):
        for i in prange(p.size):
            gi = g[i]
            if wd != 0:
                gi = p[i] * wd + gi
            if momentum != 0:
                if first:
                    b = gi
                else:
                    b = buf[i] * momentum
                    b = b + gi * one_minus_dampening if dampened else b + gi
                buf[i] = b
                gi = b * momentum + gi if nesterov else b
            p[i] = p[i] - gi * lr

    @njit(parallel=True, cache=True)
    def _adam(p, g, m, v, vmax, decay_factor, decoupled, wd, w, small, one_minus_w, b2, one_minus_b2, amsgrad,
              bc2_sqrt, eps, neg_step_size):
        for i in prange(p.size):
            pi = p[i]
            gi = g[i]
            if decoupled:
                pi = pi * decay_factor
            elif wd != 0:
                gi = pi * wd + gi
            d = gi - m[i]
            mi = m[i] + d * w if small else gi - d * one_minus_w
            m[i] = mi
            vi = v[i] * b2 + (gi * one_minus_b2) * gi
            v[i] = vi
            second = vi
            if amsgrad:
                a = vmax[i]
                second = a if (a > vi or a != a) else vi  # np.maximum, NaN included
                vmax[i] = second
            denom = math.sqrt(second) / bc2_sqrt + eps
            p[i] = pi + (mi * neg_step_size) / denom

    @njit(parallel=True, cache=True)
    def _rmsprop(p, g, square_avg, grad_avg, buf, wd, alpha, one_minus_alpha, centered, w, small, one_minus_w,
                 eps, momentum, lr, neg_lr):
        for i in prange(p.size):
            gi = g[i]
            if wd != 0:
                gi = p[i] * wd + gi
            sa = square_avg[i] * alpha + (gi * one_minus_alpha) * gi
            square_avg[i] = sa
            if centered:
                d = gi - grad_avg[i]
                ga = grad_avg[i] + d * w if small else gi - d * one_minus_w
                grad_avg[i] = ga
                avg = math.sqrt(sa - ga * ga)
            else:
                avg = math.sqrt(sa)
            avg = avg + eps
            if momentum > 0:
                b = buf[i] * momentum + gi / avg
                buf[i] = b
                p[i] = p[i] - b * lr
            else:
                p[i] = p[i] + (gi * neg_lr) / avg


def _unused(p) -> np.ndarray:
    # Stands in for a state array a setting does not have. It must not be `p` itself: an array
    # passed twice looks aliased, and the compiler then gives up vectorising the loop.
    return np.empty(0, dtype=p.dtype)


_LAUNCH_LOCK = threading.Lock()


@contextmanager
def _one_thread():
    """Run a kernel on the calling thread alone; launches from several threads at once (the
    shards of a population) only where Numba's threading layer allows it: omp and tbb do,
    workqueue does not, and before the first launch the layer is not chosen yet."""
    # `parallel=True` is what lets the loop vectorise (prange promises independent iterations);
    # running it on more than the calling thread only fights BLAS's threads, which spin between
    # matrix products: a training step became 8 ms instead of 0.5 with two threads.
    numba.set_num_threads(1)
    try:
        concurrent = numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        concurrent = False
    if concurrent:
        yield
    else:
        with _LAUNCH_LOCK:
            yield


def sgd(opt, p, g, state, scalars: StepSize) -> None:
    """SGD, momentum, Nesterov, dampening, weight decay: `optimizers.SGD`'s rule in one pass."""
    t = p.dtype.type
    first = state["momentum_buffer"] is None
    if opt.momentum != 0 and first:
        state["momentum_buffer"] = np.empty_like(p)
    buf = state["momentum_buffer"] if opt.momentum != 0 else _unused(p)
    with _one_thread():
        _sgd(p, g, buf, t(opt.weight_decay), t(opt.momentum), t(1 - opt.dampening), bool(opt.dampening), opt.nesterov,
             first, t(scalars.lr))


def adam(opt, p, g, state, scalars: AdamScalars) -> None:
    """Adam, AMSGrad and AdamW: `optimizers.Adam`'s rule in one pass."""
    t = p.dtype.type
    w = 1 - opt.beta1
    vmax = state["max_exp_avg_sq"] if opt.amsgrad else _unused(p)
    with _one_thread():
        _adam(p, g, state["exp_avg"], state["exp_avg_sq"], vmax, t(scalars.decay_factor),
              opt.decoupled_weight_decay and opt.weight_decay != 0, t(opt.weight_decay), t(w), abs(w) < 0.5, t(1 - w),
              t(opt.beta2), t(1 - opt.beta2), opt.amsgrad, t(scalars.bias_correction2_sqrt), t(opt.eps),
              t(-scalars.step_size))


def rmsprop(opt, p, g, state, scalars: StepSize) -> None:
    """RMSprop, centered and with momentum: `optimizers.RMSprop`'s rule in one pass."""
    t = p.dtype.type
    w = 1 - opt.alpha
    with _one_thread():
        _rmsprop(p, g, state["square_avg"], state.get("grad_avg", _unused(p)), state.get("momentum_buffer", _unused(p)),
                 t(opt.weight_decay), t(opt.alpha), t(1 - opt.alpha), opt.centered, t(w), abs(w) < 0.5, t(1 - w),
                 t(opt.eps), t(opt.momentum), t(scalars.lr), t(-scalars.lr))
