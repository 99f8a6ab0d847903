"""Fused CPU kernels for the optimizers the training loop uses most: one pass per update.

The update rules in `optimizers.py` are the definition. Written with NumPy ufuncs they make
10 to 15 passes over the parameters (an Adam update of 670k parameters took 0.8 ms, 3x torch's
fused Adam); the kernels below do the same arithmetic element by element in one pass, and the
tests check that both give bitwise the same numbers, in float32 and float64, for every setting.
That holds because each kernel performs the same IEEE operations in the same order, with every
scalar rounded to the array's dtype first (as NumPy does with a Python float), and Numba does
not contract a*b+c into a fused multiply-add unless asked to (no fastmath here).

Each kernel updates a group of members of a population in one launch, each member with its own
hyperparameters and step scalars (per-member arrays): `updates.MemberUpdates` launches them
over a population's rows, and `Optimizer.update` over one flat buffer as a group of one (1-D
contiguous NumPy parameters with a scalar learning rate, the step already counted and its
scalars, `step_scalars`, computed). Everything else, and everything when Numba is missing, takes
the ufunc path.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import numpy as np


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
    # Each kernel updates some members of a group: the member at position s of the group owns
    # row `rows[s]` of the (K, N) parameter buffer, row s of each stacked state array and entry s
    # of each array of hyperparameters. `active` lists the positions to update this step; the
    # j-th of them takes entry j of each array of step scalars (the last arguments). The element loop is the one-member kernel's: a member's
    # flags are constant inside it, so the compiler hoists their branches out of it.
    # The views are bound one per statement: bound in one tuple assignment, a write to `p` inside
    # the parallel loop was lost (Numba 0.68's parfors; the serial compile got it right).

    @njit(parallel=True, cache=True)
    def _sgd(P, G, rows, active, buf_all, wd, momentum, one_minus_dampening, dampened, nesterov, first, lr):
        for j in range(active.size):
            s = active[j]
            p = P[rows[s]]
            g = G[rows[s]]
            buf = buf_all[s]
            wd_s, mu, omd, damp, nest = wd[s], momentum[s], one_minus_dampening[s], dampened[s], nesterov[s]
            first_s, lr_s = first[j], lr[j]
            for i in prange(p.size):
                gi = g[i]
                if wd_s != 0:
                    gi = p[i] * wd_s + gi
                if mu != 0:
                    if first_s:
                        b = gi
                    else:
                        b = buf[i] * mu
                        b = b + gi * omd if damp else b + gi
                    buf[i] = b
                    gi = b * mu + gi if nest else b
                p[i] = p[i] - gi * lr_s

    @njit(parallel=True, cache=True)
    def _adam(P, G, rows, active, m_all, v_all, vmax_all, decoupled, wd, w, small, one_minus_w, b2, one_minus_b2,
              amsgrad, eps, decay_factor, bc2_sqrt, neg_step_size):
        for j in range(active.size):
            s = active[j]
            p = P[rows[s]]
            g = G[rows[s]]
            m = m_all[s]
            v = v_all[s]
            vmax = vmax_all[s]
            dec, wd_s, w_s, small_s, omw, b2_s, omb2, ams, eps_s = (decoupled[s], wd[s], w[s], small[s], one_minus_w[s],
                                                                     b2[s], one_minus_b2[s], amsgrad[s], eps[s])
            df, bc2, nss = decay_factor[j], bc2_sqrt[j], neg_step_size[j]
            for i in prange(p.size):
                pi = p[i]
                gi = g[i]
                if dec:
                    pi = pi * df
                elif wd_s != 0:
                    gi = pi * wd_s + gi
                d = gi - m[i]
                mi = m[i] + d * w_s if small_s else gi - d * omw
                m[i] = mi
                vi = v[i] * b2_s + (gi * omb2) * gi
                v[i] = vi
                second = vi
                if ams:
                    a = vmax[i]
                    second = a if (a > vi or a != a) else vi  # np.maximum, NaN included
                    vmax[i] = second
                denom = math.sqrt(second) / bc2 + eps_s
                p[i] = pi + (mi * nss) / denom

    @njit(parallel=True, cache=True)
    def _rmsprop(P, G, rows, active, sq_all, ga_all, buf_all, wd, alpha, one_minus_alpha, centered, w, small,
                 one_minus_w, eps, momentum, lr, neg_lr):
        for j in range(active.size):
            s = active[j]
            p = P[rows[s]]
            g = G[rows[s]]
            square_avg = sq_all[s]
            grad_avg = ga_all[s]
            buf = buf_all[s]
            wd_s, a_s, oma, cen, w_s, small_s, omw, eps_s, mu = (wd[s], alpha[s], one_minus_alpha[s], centered[s], w[s],
                                                                  small[s], one_minus_w[s], eps[s], momentum[s])
            lr_s, nlr = lr[j], neg_lr[j]
            for i in prange(p.size):
                gi = g[i]
                if wd_s != 0:
                    gi = p[i] * wd_s + gi
                sa = square_avg[i] * a_s + (gi * oma) * gi
                square_avg[i] = sa
                if cen:
                    d = gi - grad_avg[i]
                    ga = grad_avg[i] + d * w_s if small_s else gi - d * omw
                    grad_avg[i] = ga
                    avg = math.sqrt(sa - ga * ga)
                else:
                    avg = math.sqrt(sa)
                avg = avg + eps_s
                if mu > 0:
                    b = buf[i] * mu + gi / avg
                    buf[i] = b
                    p[i] = p[i] - b * lr_s
                else:
                    p[i] = p[i] + (gi * nlr) / avg

    @njit(parallel=True, cache=True)
    def _lion(P, G, rows, active, m_all, beta1, one_minus_beta1, beta2, one_minus_beta2, decay_factor, neg_lr):
        for j in range(active.size):
            s = active[j]
            p = P[rows[s]]
            g = G[rows[s]]
            m = m_all[s]
            b1, omb1, b2, omb2 = beta1[s], one_minus_beta1[s], beta2[s], one_minus_beta2[s]
            df, nlr = decay_factor[j], neg_lr[j]
            for i in prange(p.size):
                gi = g[i]
                pi = p[i] * df
                u = m[i] * b1 + gi * omb1
                p[i] = pi + np.sign(u) * nlr
                m[i] = m[i] * b2 + gi * omb2

    @njit(parallel=True, cache=True)
    def _schedule_free(P, G, rows, active, z_all, v_all, adam, b2, one_minus_b2, eps, wd, lr, ckp1, small,
                       one_minus_ckp1, y_coef, bc2):
        for j in range(active.size):
            s = active[j]
            p = P[rows[s]]
            g = G[rows[s]]
            z = z_all[s]
            v = v_all[s]
            adam_s, b2_s, omb2, eps_s, wd_s = adam[s], b2[s], one_minus_b2[s], eps[s], wd[s]
            lr_j, c, small_j, omc, yc, bc = lr[j], ckp1[j], small[j], one_minus_ckp1[j], y_coef[j], bc2[j]
            for i in prange(p.size):
                gi = g[i]
                pi = p[i]
                if adam_s:
                    vi = v[i] * b2_s + (gi * omb2) * gi
                    v[i] = vi
                    u = gi / (math.sqrt(vi / bc) + eps_s)
                else:
                    u = gi
                if wd_s != 0:
                    u = u + pi * wd_s
                zi = z[i]
                d = zi - pi
                pi = pi + d * c if small_j else zi - d * omc  # torch's lerp
                p[i] = pi + u * yc
                z[i] = zi - u * lr_j

    @njit(parallel=True, cache=True)
    def _ademamix(P, G, rows, active, m_all, v_all, slow_all, decoupled, wd, w1, small1, one_minus_w1, b2,
                  one_minus_b2, eps, decay_factor, w3, small3, one_minus_w3, alpha, bc1, bc2_sqrt, neg_lr):
        for j in range(active.size):
            s = active[j]
            p = P[rows[s]]
            g = G[rows[s]]
            m = m_all[s]
            v = v_all[s]
            slow = slow_all[s]
            dec, wd_s, w1_s, small1_s, omw1, b2_s, omb2, eps_s = (decoupled[s], wd[s], w1[s], small1[s],
                                                                   one_minus_w1[s], b2[s], one_minus_b2[s], eps[s])
            df, w3_j, small3_j, omw3, alpha_j, bc1_j, bc2_j, nlr = (decay_factor[j], w3[j], small3[j], one_minus_w3[j],
                                                                    alpha[j], bc1[j], bc2_sqrt[j], neg_lr[j])
            for i in prange(p.size):
                pi = p[i]
                gi = g[i]
                if dec:
                    pi = pi * df
                elif wd_s != 0:
                    gi = pi * wd_s + gi
                d = gi - m[i]
                mi = m[i] + d * w1_s if small1_s else gi - d * omw1
                m[i] = mi
                vi = v[i] * b2_s + (gi * omb2) * gi
                v[i] = vi
                d = gi - slow[i]
                si = slow[i] + d * w3_j if small3_j else gi - d * omw3
                slow[i] = si
                denom = math.sqrt(vi) / bc2_j + eps_s
                u = mi / bc1_j
                u = u + si * alpha_j
                u = u * nlr
                p[i] = pi + u / denom

else:
    _sgd = _adam = _rmsprop = _lion = _schedule_free = _ademamix = None  # never launched without Numba


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


class RowsKernel:
    """A rule's kernel over members of a population, as `updates.MemberUpdates` launches it.

    `state_arrays(opt)` names the state arrays it reads and writes: members whose optimizers
    name the same ones, in one dtype, share a launch. `constants(opts, t)` are the per-member
    arrays of hyperparameters (made once per group), `per_step(opts, steps, scalars, t)` those of
    a step's scalars, and `kernel` the compiled loop.
    """

    def __init__(self, name: str, state_arrays, constants, per_step, kernel):
        self.name, self.state_arrays, self.constants, self.per_step = name, state_arrays, constants, per_step
        self.kernel = kernel

    def launch(self, P, G, rows, active, stacked: dict, constants: tuple, steps, scalars) -> None:
        """Update the members at positions `active`, whose steps (already counted) and step
        scalars are `steps` and `scalars`, in that order."""
        arrays = tuple(stacked[name] if name in stacked else _nothing(P, len(rows)) for name in self._all_arrays)
        per_step = self.per_step(steps, scalars, P.dtype.type)
        with _one_thread():
            self.kernel(P, G, rows, active, *arrays, *constants, *per_step)

    def __call__(self, opt, p, g, state, scalars) -> None:
        """One member's update of its flat buffer `p`, as `Optimizer.update` calls it."""
        names = self.state_arrays(opt)
        if "momentum_buffer" in names and state.get("momentum_buffer") is None:
            state["momentum_buffer"] = np.empty_like(p)  # SGD's: filled by its first step
        stacked = {name: state[name][None] for name in names}
        self.launch(p[None], g[None], _ZERO, _ZERO, stacked, self.constants([opt], p.dtype.type), [state["step"]],
                    [scalars])

    @property
    def _all_arrays(self) -> tuple[str, ...]:
        return _STATE_ARRAYS[self.name]


_ZERO = np.zeros(1, dtype=np.intp)

# Every state array a kernel takes, in its argument order (a setting may have fewer).
_STATE_ARRAYS = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "lion": ("exp_avg",),
    "schedule_free": ("z", "exp_avg_sq"),
    "ademamix": ("exp_avg", "exp_avg_sq", "exp_avg_slow"),
}


def _nothing(P, n: int) -> np.ndarray:
    # A state array a setting does not have: a row of nothing per member. Not an alias of another
    # argument: an array passed twice looks aliased, and the compiler then gives up vectorising.
    return np.empty((n, 0), dtype=P.dtype)


def _values(t, values) -> np.ndarray:
    return np.array(list(values), dtype=t)


def _flags(values) -> np.ndarray:
    return np.array(list(values), dtype=np.bool_)


def _sgd_constants(opts, t):
    return (_values(t, (o.weight_decay for o in opts)), _values(t, (o.momentum for o in opts)),
            _values(t, (1 - o.dampening for o in opts)), _flags(bool(o.dampening) for o in opts),
            _flags(o.nesterov for o in opts))


def _adam_constants(opts, t):
    w = [1 - o.beta1 for o in opts]
    return (_flags(o.decoupled_weight_decay and o.weight_decay != 0 for o in opts),
            _values(t, (o.weight_decay for o in opts)), _values(t, w), _flags(abs(x) < 0.5 for x in w),
            _values(t, (1 - x for x in w)), _values(t, (o.beta2 for o in opts)),
            _values(t, (1 - o.beta2 for o in opts)), _flags(o.amsgrad for o in opts), _values(t, (o.eps for o in opts)))


def _rmsprop_constants(opts, t):
    w = [1 - o.alpha for o in opts]
    return (_values(t, (o.weight_decay for o in opts)), _values(t, (o.alpha for o in opts)),
            _values(t, (1 - o.alpha for o in opts)), _flags(o.centered for o in opts), _values(t, w),
            _flags(abs(x) < 0.5 for x in w), _values(t, (1 - x for x in w)), _values(t, (o.eps for o in opts)),
            _values(t, (o.momentum for o in opts)))


# SGD, momentum, Nesterov, dampening, weight decay: `optimizers.SGD`'s rule in one pass.
sgd = RowsKernel(
    "sgd", lambda opt: ("momentum_buffer",) if opt.momentum != 0 else (), _sgd_constants,
    lambda steps, scalars, t: (_flags(step == 1 for step in steps), _values(t, (s.lr for s in scalars))),
    _sgd,
)
# Adam, AMSGrad and AdamW: `optimizers.Adam`'s rule in one pass.
adam = RowsKernel(
    "adam", lambda opt: ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opt.amsgrad else ()), _adam_constants,
    lambda steps, scalars, t: (_values(t, (s.decay_factor for s in scalars)),
                               _values(t, (s.bias_correction2_sqrt for s in scalars)),
                               _values(t, (-s.step_size for s in scalars))),
    _adam,
)
# RMSprop, centered and with momentum: `optimizers.RMSprop`'s rule in one pass.
rmsprop = RowsKernel(
    "rmsprop",
    lambda opt: ("square_avg",) + (("grad_avg",) if opt.centered else ()) + (("momentum_buffer",) if opt.momentum > 0 else ()),
    _rmsprop_constants,
    lambda steps, scalars, t: (_values(t, (s.lr for s in scalars)), _values(t, (-s.lr for s in scalars))),
    _rmsprop,
)
# Lion: `modern.Lion`'s rule in one pass.
lion = RowsKernel(
    "lion", lambda opt: ("exp_avg",),
    lambda opts, t: (_values(t, (o.beta1 for o in opts)), _values(t, (1 - o.beta1 for o in opts)),
                     _values(t, (o.beta2 for o in opts)), _values(t, (1 - o.beta2 for o in opts))),
    lambda steps, scalars, t: (_values(t, (s[0] for s in scalars)), _values(t, (s[1] for s in scalars))),
    _lion,
)


def _schedule_free_constants(opts, t):
    adam = [hasattr(o, "beta2") for o in opts]  # Schedule-Free AdamW; SGD has no second moment
    return (_flags(adam), _values(t, (getattr(o, "beta2", 0.0) for o in opts)),
            _values(t, (1 - getattr(o, "beta2", 0.0) for o in opts)), _values(t, (getattr(o, "eps", 0.0) for o in opts)),
            _values(t, (o.weight_decay for o in opts)))


def _schedule_free_per_step(steps, scalars, t):
    # (lr, c, y coefficient[, 1 - beta2^t]) per member; SGD's has no bias correction.
    return (_values(t, (s[0] for s in scalars)), _values(t, (s[1] for s in scalars)),
            _flags(abs(s[1]) < 0.5 for s in scalars), _values(t, (1 - s[1] for s in scalars)),
            _values(t, (s[2] for s in scalars)), _values(t, (s[3] if len(s) > 3 else 1.0 for s in scalars)))


# Schedule-Free AdamW and SGD: `modern.ScheduleFreeAdamW`'s and `ScheduleFreeSGD`'s rules in one pass.
schedule_free = RowsKernel(
    "schedule_free", lambda opt: ("z", "exp_avg_sq") if hasattr(opt, "beta2") else ("z",),
    _schedule_free_constants, _schedule_free_per_step, _schedule_free,
)


def _ademamix_constants(opts, t):
    w1 = [1 - o.beta1 for o in opts]
    return (_flags(o.weight_decouple and o.weight_decay != 0 for o in opts), _values(t, (o.weight_decay for o in opts)),
            _values(t, w1), _flags(abs(w) < 0.5 for w in w1), _values(t, (1 - w for w in w1)),
            _values(t, (o.beta2 for o in opts)), _values(t, (1 - o.beta2 for o in opts)), _values(t, (o.eps for o in opts)))


# AdEMAMix: `modern.AdEMAMix`'s rule in one pass. Its step scalars carry the (scheduled) lr and
# weight decay factor besides alpha, beta3 and the bias corrections (`AdEMAMix.step_scalars`).
ademamix = RowsKernel(
    "ademamix", lambda opt: ("exp_avg", "exp_avg_sq", "exp_avg_slow"), _ademamix_constants,
    lambda steps, scalars, t: (
        _values(t, (s.decay_factor for s in scalars)), _values(t, (1 - s.beta3 for s in scalars)),
        _flags(abs(1 - s.beta3) < 0.5 for s in scalars), _values(t, (1 - (1 - s.beta3) for s in scalars)),
        _values(t, (s.alpha for s in scalars)), _values(t, (s.bias_correction1 for s in scalars)),
        _values(t, (s.bias_correction2_sqrt for s in scalars)), _values(t, (-s.lr for s in scalars)),
    ),
    _ademamix,
)
