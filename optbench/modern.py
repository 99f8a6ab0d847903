"""The optimizers researchers compare against today, each with the rule and defaults of a named
reference implementation (`reference`), written once against `xp` like the classic ones.

Two kinds of rule live here. Elementwise rules (Lion, Schedule-Free, AdEMAMix) run on any array:
a surface's point cloud, a flat buffer, a population's row. The others reduce over tensors:
LAMB's trust ratio and Adafactor's factored moments are per tensor, Muon orthogonalises each
weight matrix, Prodigy's step-size estimate sums over all of a model's parameters. They see the
structure through a layout (`init(p, layout)`: the (name, shape) of each tensor in a member's
flat buffer, `mlp.parameter_shapes`); without one, each row of `p` is one member's vector (a
point on a surface), reduced on its own.

A reference's arithmetic is followed operation by operation where it is elementwise; reductions
(norms, dot products) sum in NumPy's order, not torch's, so those rules agree with their
references to float64 rounding of a sum rather than to the last ulp.
"""

from __future__ import annotations

import math
import sys
from typing import Any, ClassVar, NamedTuple

import numpy as np

from optbench.backend import get_array_module
from optbench.errors import OptbenchError
from optbench.optimizers import Optimizer, _lerp_, _scratch, _square_avg_, _weight_decay_, register_modern


def tensors(p, layout):
    """The tensors of `p`, each with a leading member axis: with a layout, views into one
    member's flat buffer shaped (1, *shape); without, `p` itself as one vector per row."""
    if layout is None:
        return [p if p.ndim >= 2 else p[None]]
    total = sum(math.prod(shape) for _, shape in layout)
    if p.ndim != 1 or total != p.shape[0]:
        raise OptbenchError(f"a layout of {total} parameters does not fit a buffer of shape {p.shape}")
    views, offset = [], 0
    for _, shape in layout:
        size = math.prod(shape)
        views.append(p[offset : offset + size].reshape((1, *shape)))
        offset += size
    return views


def _per_member(x, reduce):
    """`reduce` ('sum' or 'max') of x over all but its leading axis, shaped to broadcast against x."""
    flat = x.reshape(x.shape[0], -1)
    value = flat.sum(axis=1) if reduce == "sum" else flat.max(axis=1)
    return value.reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def _norm(x):
    return get_array_module(x).sqrt(_per_member(x * x, "sum"))


class _Layered(Optimizer):
    """A rule that needs the tensors of what it updates: `init(p, layout)` keeps the layout."""

    elementwise: ClassVar[bool] = False
    kind: ClassVar[str] = "per tensor"

    def init(self, p, layout=None) -> dict:
        tensors(p, layout)  # refuse a layout that does not fit now, not at the first step
        return {"step": 0, "layout": layout, **self._init_state(p, layout)}

    def _init_state(self, p, layout) -> dict:
        return {}


class Lion(Optimizer):
    """Lion (EvoLved Sign Momentum), as `lion_pytorch.Lion`:

        p <- p * (1 - lr * wd)       (wd / lr0 instead of wd with decoupled_weight_decay)
        p <- p - lr * sign(beta1 * m + (1 - beta1) * g)
        m <- beta2 * m + (1 - beta2) * g
    """

    name = "lion"
    paper = "Chen et al. 2023"
    reference = "lion-pytorch 0.2 Lion"
    defaults = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0, "decoupled_weight_decay": False}

    def init(self, p) -> dict:
        return {"step": 0, "exp_avg": get_array_module(p).zeros_like(p)}

    def step_scalars(self, state: dict):
        # The reference divides by the lr it was built with, not by a scheduled one.
        wd = self.weight_decay / self.hparams["lr"] if self.decoupled_weight_decay else self.weight_decay
        return (1 - self.lr * wd, -self.lr)

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        xp = get_array_module(p)
        decay_factor, neg_lr = scalars
        (update,) = _scratch(state, p, 1)
        p *= decay_factor
        exp_avg = state["exp_avg"]
        xp.multiply(exp_avg, self.beta1, out=update)
        update += g * (1 - self.beta1)
        xp.sign(update, out=update)
        update *= neg_lr
        p += update
        exp_avg *= self.beta2
        exp_avg += g * (1 - self.beta2)


def _schedule_free_scalars(opt, state: dict, beta: float):
    """Step k's (k = step - 1) lr under the warmup, and the averaging weight c_{k+1}, as the
    reference computes them, advancing its running lr_max and weight sum."""
    k = state["step"] - 1
    sched = (k + 1) / opt.warmup_steps if k < opt.warmup_steps else 1.0
    lr = opt.lr * sched
    lr_max = state["lr_max"] = np.maximum(lr, state["lr_max"]) if not np.isscalar(lr) else max(lr, state["lr_max"])
    weight = ((k + 1) ** opt.r) * (lr_max**opt.weight_lr_power)
    weight_sum = state["weight_sum"] = state["weight_sum"] + weight
    ckp1 = weight / weight_sum if np.all(weight_sum != 0) else 0 * weight
    return lr, ckp1, lr * (beta * (1 - ckp1) - 1)


def _lerp_any_(start, end, weight, work) -> None:
    """`_lerp_` for a weight that may be an array (one per row): torch's two forms, chosen per row."""
    if np.isscalar(weight):
        _lerp_(start, end, float(weight), work)
        return
    xp = get_array_module(start)
    weight = xp.asarray(weight)
    xp.subtract(end, start, out=work)
    small = xp.abs(weight) < 0.5
    near_start = start + work * weight
    near_end = end - work * (1 - weight)
    start[...] = xp.where(small, near_start, near_end)


def _schedule_free_step_(y, z, u, weight_decay: float, ckp1, y_coef, lr, work) -> None:
    """Both Schedule-Free rules' step from their direction u (the gradient, or Adam's scaled one):
    u += wd * y;  y <- lerp(y, z, c);  y <- y + lr (beta (1 - c) - 1) u;  z <- z - lr u."""
    if weight_decay != 0:
        u += y * weight_decay
    _lerp_any_(y, z, ckp1, work)
    y += u * y_coef
    z -= u * lr


class _ScheduleFree(Optimizer):
    """Schedule-Free (Defazio et al. 2024). The parameters are the gradient point y; the
    averaged weights x = lerp(y, z, 1 - 1/beta), which the reference's `eval()` switches to, are
    what is evaluated and reported (`evaluation_weights`)."""

    # The reference takes a whole number of steps: a fraction would lift the warmup past the peak.
    ranges = {"warmup_steps": (lambda v: np.isfinite(v) and v >= 0 and v == np.floor(v), "a whole number >= 0")}

    def evaluation_weights(self, p, state: dict):
        """x, the averaged weights, from y (= p) and z; p itself before the first step."""
        if state["step"] == 0:
            return p
        x = p.copy()
        _lerp_any_(x, state["z"], 1 - 1 / self._beta, get_array_module(p).empty_like(p))
        return x


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW, as `schedulefree.AdamWScheduleFree` (train mode):

        v <- beta2 v + (1 - beta2) g^2;  u <- g / (sqrt(v / (1 - beta2^t)) + eps) + wd * y
        y <- lerp(y, z, c);  y <- y + lr (beta1 (1 - c) - 1) u;  z <- z - lr u
    with c = w_t / sum w (w_t = t^r lr_max^weight_lr_power) and lr warmed up over warmup_steps.
    """

    name = "sf_adamw"
    paper = "Defazio et al. 2024"
    reference = "schedulefree 1.4 AdamWScheduleFree"
    defaults = {"lr": 0.0025, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0.0,
                "r": 0.0, "weight_lr_power": 2.0}

    def check(self) -> None:
        super().check()
        if not 0 < self.beta1 < 1:  # the average x = lerp(y, z, 1 - 1/beta1) divides by it
            raise OptbenchError(f"{self.name}: invalid beta1 {self.beta1!r} (must be in (0, 1))")

    @property
    def _beta(self) -> float:
        return self.beta1

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "z": p.copy(), "exp_avg_sq": xp.zeros_like(p), "lr_max": -1.0, "weight_sum": 0.0}

    def step_scalars(self, state: dict):
        lr, ckp1, y_coef = _schedule_free_scalars(self, state, self.beta1)
        return lr, ckp1, y_coef, 1 - self.beta2 ** state["step"]

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        xp = get_array_module(p)
        lr, ckp1, y_coef, bias_correction2 = scalars
        u, work = _scratch(state, p, 2)
        exp_avg_sq, z = state["exp_avg_sq"], state["z"]
        _square_avg_(exp_avg_sq, g, self.beta2, work)
        xp.divide(exp_avg_sq, bias_correction2, out=work)
        xp.sqrt(work, out=work)
        work += self.eps
        xp.divide(g, work, out=u)
        _schedule_free_step_(p, z, u, self.weight_decay, ckp1, y_coef, lr, work)


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD, as `schedulefree.SGDScheduleFree` (train mode):

        u <- g + wd * y;  y <- lerp(y, z, c);  y <- y + lr (momentum (1 - c) - 1) u;  z <- z - lr u
    """

    name = "sf_sgd"
    paper = "Defazio et al. 2024"
    reference = "schedulefree 1.4 SGDScheduleFree"
    defaults = {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 0.0, "r": 0.0,
                "weight_lr_power": 2.0}

    def check(self) -> None:
        super().check()
        if not 0 < self.momentum < 1:
            raise OptbenchError(f"{self.name}: invalid momentum {self.momentum!r} (must be in (0, 1))")

    @property
    def _beta(self) -> float:
        return self.momentum

    def init(self, p) -> dict:
        return {"step": 0, "z": p.copy(), "lr_max": -1.0, "weight_sum": 0.0}

    def step_scalars(self, state: dict):
        return _schedule_free_scalars(self, state, self.momentum)

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        lr, ckp1, y_coef = scalars
        u, work = _scratch(state, p, 2)
        z = state["z"]
        u[...] = g
        _schedule_free_step_(p, z, u, self.weight_decay, ckp1, y_coef, lr, work)


class Prodigy(Optimizer):
    """Prodigy, as `prodigyopt.Prodigy` (one parameter group): Adam whose step is scaled by an
    estimate d of the distance to the solution, grown from d0,

        d_hat = d_coef * sum_t (d_t / d0) dlr_t <g_t, x0 - x_t> / |s|_1,  s <- beta3 s + (d / d0) dlr g
    with dlr = d * lr (times Adam's bias correction with use_bias_correction), the moments
    weighted by d and d^2, and the denominator sqrt(v) + d * eps. The sums run over all of a
    member's parameters: a whole flat buffer, or one point of a surface (one row).
    """

    name = "prodigy"
    paper = "Mishchenko & Defazio 2024"
    reference = "prodigyopt 1.1 Prodigy"
    kind = "per model"  # its sums run over a member's whole buffer, whatever its tensors: no layout
    defaults = {"lr": 1.0, "beta1": 0.9, "beta2": 0.999, "beta3": None, "eps": 1e-8, "weight_decay": 0.0,
                "decouple": True, "use_bias_correction": False, "safeguard_warmup": False, "d0": 1e-6, "d_coef": 1.0,
                "growth_rate": math.inf}

    def check(self) -> None:
        super().check()
        if self.d0 <= 0 or not self.eps > 0:
            raise OptbenchError(f"{self.name}: d0 and eps must be > 0")
        if self.beta3 is not None and not 0 <= self.beta3 <= 1:
            raise OptbenchError(f"{self.name}: invalid beta3 {self.beta3!r} (must be in [0, 1])")

    def init(self, p) -> dict:
        xp = get_array_module(p)
        rows = p if p.ndim >= 2 else p[None]
        # d and its kin are float64 whatever p is, as the reference's Python floats are; each
        # product rounds them to p's dtype first, as torch rounds a Python scalar.
        ones = xp.ones((rows.shape[0],) + (1,) * (rows.ndim - 1), dtype=np.float64)
        # k counts each member's steps that moved it (the reference skips a step whose |s|_1 is 0).
        state = {"step": 0, "k": ones * 0, "s": xp.zeros_like(p), "p0": p.copy(), "exp_avg_sq": xp.zeros_like(p),
                 "d": ones * self.d0, "d_max": ones * self.d0, "d_numerator": ones * 0}
        if self.beta1 > 0:
            state["exp_avg"] = xp.zeros_like(p)
        return state

    def step_scalars(self, state: dict):
        return None  # d and its kin live in the state: they are per member, and change within the step

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        xp = get_array_module(p)
        t = p.dtype
        beta1, beta2 = self.beta1, self.beta2
        beta3 = self.beta3 if self.beta3 is not None else math.sqrt(beta2)
        rows = (lambda a: a) if p.ndim >= 2 else (lambda a: a[None])
        k, d, d_max = state["k"], state["d"], state["d_max"]
        lr = self.lr if np.isscalar(self.lr) else rows(xp.asarray(self.lr, dtype=np.float64))
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if self.use_bias_correction else 1
        dlr = d * lr * bias_correction
        d_numerator = state["d_numerator"] * beta3
        if self.weight_decay != 0 and not self.decouple:
            g = g + p * self.weight_decay
        gr, pr = rows(g), rows(p)
        dot = _per_member(gr * (rows(state["p0"]) - pr), "sum").astype(np.float64)
        delta_numerator = (d / self.d0) * dlr * dot
        if beta1 > 0:
            exp_avg = rows(state["exp_avg"])
            exp_avg *= beta1
            exp_avg += gr * (d * (1 - beta1)).astype(t)
        exp_avg_sq = rows(state["exp_avg_sq"])
        exp_avg_sq *= beta2
        exp_avg_sq += (d * d * (1 - beta2)).astype(t) * gr * gr
        s = rows(state["s"])
        s *= beta3
        s += gr * ((d / self.d0) * (d if self.safeguard_warmup else dlr)).astype(t)
        d_denom = _per_member(xp.abs(s), "sum").astype(np.float64)
        moving = d_denom != 0  # the reference returns before the step where the sum is 0
        numerator = d_numerator + delta_numerator
        d_hat = self.d_coef * numerator / xp.where(moving, d_denom, 1)
        new_d = xp.where(d == self.d0, xp.maximum(d, d_hat), d)
        new_d_max = xp.maximum(d_max, d_hat)
        new_d = xp.minimum(new_d_max, new_d * self.growth_rate)
        state["d"] = xp.where(moving, new_d, d)
        state["d_max"] = xp.where(moving, new_d_max, d_max)
        state["d_numerator"] = xp.where(moving, numerator, state["d_numerator"])
        d = state["d"]
        denom = xp.sqrt(exp_avg_sq) + (d * self.eps).astype(t)
        if self.weight_decay != 0 and self.decouple:
            pr += xp.where(moving, pr * (-self.weight_decay * dlr).astype(t), 0)
        if beta1 > 0:
            pr += xp.where(moving, (exp_avg / denom) * (-dlr).astype(t), 0)
        else:
            pr += xp.where(moving, (gr / denom) * (-dlr * d).astype(t), 0)
        state["k"] = k + moving


class AdEMAMix(Optimizer):
    """AdEMAMix, as `pytorch_optimizer.AdEMAMix`: Adam plus a slow EMA of the gradients,

        m <- lerp(m, g, 1 - beta1);  v <- beta2 v + (1 - beta2) g^2;  s <- lerp(s, g, 1 - beta3_t)
        p <- p - lr (m / (1 - beta1^t) + alpha_t s) / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    with alpha_t and beta3_t warmed up over t_alpha_beta3 steps when it is set (constant when not).
    """

    name = "ademamix"
    paper = "Pagliardini, Ablin & Grangier 2024"
    reference = "pytorch-optimizer 4.1 AdEMAMix"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "beta3": 0.9999, "alpha": 5.0, "t_alpha_beta3": None,
                "eps": 1e-8, "weight_decay": 0.0, "weight_decouple": False}
    ranges = {"alpha": (lambda v: v >= 0, ">= 0"), "beta3": (lambda v: 0 <= v < 1, "in [0, 1)"),
              "t_alpha_beta3": (lambda v: v > 0, "> 0")}

    def check(self) -> None:
        super().check()
        if self.t_alpha_beta3 is not None and not (self.beta1 > 0 and self.beta3 > 0):
            # beta3's warmup interpolates log(beta1) and log(beta3).
            raise OptbenchError(f"{self.name}: t_alpha_beta3 needs beta1 > 0 and beta3 > 0")

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p),
                "exp_avg_slow": xp.zeros_like(p)}

    def step_scalars(self, state: dict) -> "AdEMAMixScalars":
        t, T = state["step"], self.t_alpha_beta3
        if T is None:
            alpha, beta3 = self.alpha, self.beta3
        else:
            alpha = min(t * self.alpha / T, self.alpha)
            log1, log3 = math.log(self.beta1), math.log(self.beta3)
            beta3 = min(math.exp(log1 * log3 / ((1.0 - t / T) * log3 + (t / T) * log1)), self.beta3)
        return AdEMAMixScalars(alpha, beta3, 1 - self.beta1**t, (1 - self.beta2**t) ** 0.5, self.lr,
                               1 - self.weight_decay * self.lr)

    def _update_ufunc(self, p, g, state: dict, scalars: "AdEMAMixScalars") -> None:
        xp = get_array_module(p)
        alpha, beta3, bias_correction1, bias_correction2_sqrt = scalars[:4]
        decayed, work, update = _scratch(state, p, 3)
        g = _weight_decay_(p, g, self.weight_decay, self.weight_decouple, scalars.decay_factor, decayed)
        exp_avg, exp_avg_sq, slow = state["exp_avg"], state["exp_avg_sq"], state["exp_avg_slow"]
        _lerp_(exp_avg, g, 1 - self.beta1, work)
        _square_avg_(exp_avg_sq, g, self.beta2, work)
        _lerp_(slow, g, 1 - beta3, work)
        xp.sqrt(exp_avg_sq, out=work)
        work /= bias_correction2_sqrt
        work += self.eps
        xp.divide(exp_avg, bias_correction1, out=update)
        update += slow * alpha
        update *= -scalars.lr
        update /= work
        p += update


class AdEMAMixScalars(NamedTuple):
    alpha: Any  # alpha_t: the slow average's weight, warmed up over t_alpha_beta3
    beta3: float  # beta3_t
    bias_correction1: float  # 1 - beta1^t
    bias_correction2_sqrt: float  # sqrt(1 - beta2^t)
    lr: Any
    decay_factor: Any  # 1 - wd * lr: the decoupled weight decay's shrink of p


class LAMB(_Layered):
    """LAMB, as `pytorch_optimizer.Lamb`: Adam's direction, rescaled per tensor by a trust ratio,

        m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;  u = m / (sqrt(v) + eps)
        r = min(|p|, clamp) / (|u| + eps)   (1 where either norm is 0)
        p <- p * (1 - lr wd);  p <- p - lr / (1 - beta1^t) * r u
    over each tensor of a layout (each weight matrix and bias of a net), or each point of a surface.
    `weight_decouple=False` is the paper's form: no shrinking of p, u <- u + wd p before the
    trust ratio.
    """

    name = "lamb"
    paper = "You et al. 2020"
    reference = "pytorch-optimizer 4.1 Lamb"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.0, "clamp": 10.0,
                "weight_decouple": True}
    ranges = {"clamp": (lambda v: v > 0, "> 0")}

    def _init_state(self, p, layout) -> dict:
        xp = get_array_module(p)
        return {"exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p)}

    def step_scalars(self, state: dict):
        return self.lr / (1 - self.beta1 ** state["step"])

    def _update_ufunc(self, p, g, state: dict, step_size) -> None:
        xp = get_array_module(p)
        if self.weight_decay != 0 and self.weight_decouple:
            p *= 1 - self.weight_decay * self.lr
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        (work,) = _scratch(state, p, 1)
        exp_avg *= self.beta1
        exp_avg += g * (1 - self.beta1)
        _square_avg_(exp_avg_sq, g, self.beta2, work)
        update = 1 / (xp.sqrt(exp_avg_sq) + self.eps) * exp_avg
        if self.weight_decay != 0 and not self.weight_decouple:
            update += self.weight_decay * p
        layout = state["layout"]
        for weights, direction in zip(tensors(p, layout), tensors(update, layout)):
            weight_norm = xp.minimum(_norm(weights), self.clamp)
            update_norm = _norm(direction)
            trust = xp.where((weight_norm != 0) & (update_norm != 0), weight_norm / (update_norm + self.eps), 1.0)
            weights += (direction * trust.astype(p.dtype)) * -step_size


class Adafactor(_Layered):
    """Adafactor, as `torch.optim.Adafactor`: a second moment factored into row and column means
    for each matrix, kept whole for vectors, with a relative step size and update clipping,

        rho = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(p)) * rho;  p <- p * (1 - lr * wd)
        R <- lerp(R, mean_cols(g^2), t^beta2_decay);  C <- lerp(C, mean_rows(g^2), t^beta2_decay)
        V = R C / max(mean(R), eps1)   (a vector: V <- lerp(V, g^2, t^beta2_decay))
        U = g / sqrt(max(V, eps1^2));  p <- p - alpha / max(1, RMS(U) / d) * U
    eps1 None is the parameters' machine epsilon. Each matrix of a layout is factored; without a
    layout each point of a surface is one vector (unfactored).
    """

    name = "adafactor"
    paper = "Shazeer & Stern 2018"
    reference = "torch.optim.Adafactor"
    defaults = {"lr": 1e-2, "beta2_decay": -0.8, "eps1": None, "eps2": 1e-3, "d": 1.0, "weight_decay": 0.0}
    ranges = {"beta2_decay": (lambda v: v <= 0, "<= 0"), "eps1": (lambda v: v >= 0, ">= 0"),
              "eps2": (lambda v: v >= 0, ">= 0"), "d": (lambda v: v >= 1, ">= 1 (as torch requires)")}

    def _init_state(self, p, layout) -> dict:
        xp = get_array_module(p)
        moments = []
        for tensor in tensors(p, layout):
            if tensor.ndim > 2:  # a matrix, after its member axis
                moments.append((xp.zeros(tensor.shape[:-1] + (1,), dtype=p.dtype),
                                xp.zeros(tensor.shape[:-2] + (1,) + tensor.shape[-1:], dtype=p.dtype)))
            else:
                moments.append(xp.zeros_like(tensor))
        return {"moments": moments}

    def step_scalars(self, state: dict):
        t = state["step"]
        lr = self.lr
        rho = np.minimum(lr, 1 / t**0.5) if not np.isscalar(lr) else min(lr, 1 / t**0.5)
        return t**self.beta2_decay, rho

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        xp = get_array_module(p)
        weight, rho = scalars
        layout = state["layout"]
        eps1 = self.eps1 if self.eps1 is not None else float(np.finfo(p.dtype).eps)
        for w, grad, moment in zip(tensors(p, layout), tensors(g, layout), state["moments"]):
            size = math.prod(w.shape[1:])
            alpha = xp.maximum(self.eps2, _norm(w) / size**0.5) * rho  # the parameters before decay
            if self.weight_decay != 0:
                w *= 1 - self.lr * self.weight_decay
            if grad.ndim > 2:
                row_var, col_var = moment
                rows, cols = grad.shape[-2:]
                row_mean = xp.sqrt((grad * grad).sum(axis=-1, keepdims=True)) ** 2 / cols
                _lerp_any_(row_var, row_mean, weight, xp.empty_like(row_var))
                col_mean = xp.sqrt((grad * grad).sum(axis=-2, keepdims=True)) ** 2 / rows
                _lerp_any_(col_var, col_mean, weight, xp.empty_like(col_var))
                estimate = xp.matmul(row_var, col_var) / xp.maximum(row_var.mean(axis=-2, keepdims=True), eps1)
            else:
                _lerp_any_(moment, grad * grad, weight, xp.empty_like(moment))
                estimate = moment
            update = 1 / xp.sqrt(xp.maximum(estimate, eps1 * eps1)) * grad
            denom = xp.maximum(1.0, _norm(update) / (size**0.5 * self.d))
            w += update * (-alpha / denom).astype(p.dtype)


class Muon(_Layered):
    """Muon, as `torch.optim.Muon`, for each weight matrix of a network, paired with AdamW for its
    other parameters (biases, batch-norm scales), as torch's documentation pairs them:

        B <- lerp(B, g, 1 - momentum);  U = lerp(g, B, momentum) (Nesterov) or B
        O = NewtonSchulz_5(U)  (X <- a X + (b A + c A^2) X with A = X X^T, from U / max(|U|_F, eps))
        p <- p * (1 - lr * wd);  p <- p - lr * sqrt(max(1, out / in)) * O
    (`match_rms_adamw`: 0.2 * sqrt(max(out, in)) instead). A layout's matrices are (fan_in,
    fan_out), the transpose of torch's `Linear.weight`; the lr adjustment uses torch's
    (out, in). The Newton-Schulz products run in the parameters' dtype, where torch runs them in
    bfloat16 (on a GPU a speed-up; the same iteration). The other parameters take torch's AdamW
    with `adamw_lr`, `adamw_beta1`, `adamw_beta2`, `adamw_eps`, `adamw_weight_decay` (torch's
    AdamW defaults). A surface's point is a vector, not a matrix: Muon refuses it.
    """

    name = "muon"
    paper = "Jordan et al. 2024"
    reference = "torch.optim.Muon (with torch.optim.AdamW for non-matrix parameters)"
    kind = "per matrix"
    needs_matrices = True
    defaults = {"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True, "ns_steps": 5.0, "eps": 1e-7,
                "ns_a": 3.4445, "ns_b": -4.775, "ns_c": 2.0315, "match_rms_adamw": False,
                "adamw_lr": 1e-3, "adamw_beta1": 0.9, "adamw_beta2": 0.999, "adamw_eps": 1e-8,
                "adamw_weight_decay": 1e-2}
    ranges = {"ns_steps": (lambda v: 1 <= v < 100 and v == int(v), "a whole number in [1, 100)"),
              "ns_a": (lambda v: True, "any"), "ns_b": (lambda v: True, "any"), "ns_c": (lambda v: True, "any"),
              "adamw_lr": (lambda v: v > 0, "> 0"), "adamw_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
              "adamw_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"), "adamw_eps": (lambda v: v >= 0, ">= 0"),
              "adamw_weight_decay": (lambda v: v >= 0, ">= 0")}

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        from optbench.optimizers import AdamW

        self._pairing = AdamW(lr=self.adamw_lr, beta1=self.adamw_beta1, beta2=self.adamw_beta2, eps=self.adamw_eps,
                              weight_decay=self.adamw_weight_decay)

    def _adamw(self):
        """The AdamW of the non-matrix parameters, its lr scheduled as Muon's is (set, not
        checked: a decaying schedule ends at lr 0, which no optimizer is built with)."""
        self._pairing.lr = self.adamw_lr * (self.lr / self.hparams["lr"])
        return self._pairing

    def _init_state(self, p, layout) -> dict:
        if layout is None:
            raise OptbenchError(
                "muon orthogonalises weight matrices: a point on a surface is a vector (run it on mnist)"
            )
        xp = get_array_module(p)
        state = {"momentum_buffers": [], "adamw": []}
        adamw = self._adamw()
        for tensor in tensors(p, layout):
            if tensor.ndim == 3:  # a matrix, after its member axis
                state["momentum_buffers"].append(xp.zeros_like(tensor))
            else:
                state["adamw"].append(adamw.init(tensor))
        return state

    def step_scalars(self, state: dict):
        return None

    def _orthogonalised(self, update):
        xp = get_array_module(update)
        a, b, c = self.ns_a, self.ns_b, self.ns_c
        x = update[0]
        transposed = x.shape[0] > x.shape[1]
        if transposed:
            x = x.T
        x = x / xp.maximum(xp.sqrt((x * x).sum()), self.eps)  # on the device: no sync on CuPy
        for _ in range(int(self.ns_steps)):
            gram = x @ x.T
            x = a * x + (b * gram + c * (gram @ gram)) @ x
        return (x.T if transposed else x)[None]

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        if not np.isscalar(self.lr):
            raise OptbenchError("muon takes one lr per network, not an array")
        adamw = self._adamw()
        buffers, adamw_states = iter(state["momentum_buffers"]), iter(state["adamw"])
        for w, grad in zip(tensors(p, state["layout"]), tensors(g, state["layout"])):
            if w.ndim != 3:
                adamw.update(w, grad, next(adamw_states))
                continue
            buf = next(buffers)
            work = get_array_module(w).empty_like(w)
            _lerp_(buf, grad, 1 - self.momentum, work)
            if self.nesterov:
                update = grad.copy()
                _lerp_(update, buf, self.momentum, work)
            else:
                update = buf
            orthogonal = self._orthogonalised(update)
            fan_in, fan_out = w.shape[1:]
            ratio = 0.2 * math.sqrt(max(fan_out, fan_in)) if self.match_rms_adamw else math.sqrt(max(1, fan_out / fan_in))
            w *= 1 - self.lr * self.weight_decay
            w += orthogonal * (-(self.lr * ratio))


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (Lion, ScheduleFreeAdamW, ScheduleFreeSGD, Prodigy, AdEMAMix, LAMB, Adafactor, Muon)
}

register_modern(sys.modules[__name__])  # see the end of `optimizers`
