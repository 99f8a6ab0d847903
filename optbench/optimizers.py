"""The optimizers: one definition each, with the update rule and defaults of `torch.optim`.

An optimizer is a small object holding its hyperparameters. It never holds state: `init(p)`
returns the state for one parameter array and `update(p, g, state)` changes `p` (and the state)
in place. `p` may be a batch of 2-D points, a layer of an MLP or a flat buffer of all of them,
on NumPy or CuPy: every rule here is elementwise and takes `xp` from its data.

The arithmetic follows torch's single-tensor code path operation by operation (`lerp` where
torch uses `lerp_`, `addcdiv` as `(value * a) / b`), so float64 trajectories agree with
`torch.optim` to the last few ulps rather than merely to a tolerance.

The state is a dict. Its entries are the state proper, under torch's names (`step`,
`exp_avg`, `momentum_buffer`, ...): what one step leaves for the next. `state["scratch"]`, made
on the first update of a ufunc rule, holds work arrays shaped like `p` that carry nothing between
steps. The classic rules write every operation into an existing array (`out=`, in-place
operators, scratch), so that their update allocates nothing: fresh temporaries of a large
parameter set page-fault on every step. The modern rules' ufunc paths (Lion's sign,
Schedule-Free's interpolation, LAMB's and AdEMAMix's steps) still make a few temporaries per step;
on the CPU's flat buffers Lion and Schedule-Free run fused kernels instead.
The scalars stay Python floats, so float32 arrays stay float32.

`Optimizer.update` is the one dispatcher. It counts the step, computes the step's scalars once
(`step_scalars`), and chooses the path: on a flat 1-D buffer with a scalar lr (the MLP's
parameters) the same arithmetic runs as one fused pass, `kernels` (Numba) on the CPU and
`gpu_kernels` (CUDA) on the GPU, where the table `FUSED` lists a kernel; everything else runs
the ufunc rule written here, which is the definition. The kernels are tested bitwise against it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from optbench import gpu_kernels, kernels, step_scalars
from optbench.backend import get_array_module
from optbench.errors import OptbenchError

# Allowed ranges shared by every optimizer that has the hyperparameter: (test, description).
_RANGES = {
    "lr": (lambda v: v > 0, "> 0"),
    "eps": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: v >= 0, ">= 0"),
    "dampening": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "rho": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lr_decay": (lambda v: v >= 0, ">= 0"),
    "initial_accumulator_value": (lambda v: v >= 0, ">= 0"),
    "momentum_decay": (lambda v: v >= 0, ">= 0"),
}


def _lerp_(start, end, weight: float, work) -> None:
    """start += weight * (end - start), in place, rounded as torch's CPU `lerp_` rounds it."""
    xp = get_array_module(start)
    xp.subtract(end, start, out=work)
    if abs(weight) < 0.5:
        work *= weight
        start += work
    else:
        work *= 1 - weight
        xp.subtract(end, work, out=start)


def _scratch(state: dict, p, n: int) -> list:
    """`n` work arrays shaped like `p`, made on the first update and kept in `state["scratch"]`."""
    scratch = state.get("scratch")
    if scratch is None or len(scratch) < n:
        xp = get_array_module(p)
        scratch = state["scratch"] = [xp.empty_like(p) for _ in range(n)]
    return scratch


def _decayed(g, p, weight_decay: float, out):
    """g + weight_decay * p, written to `out` (the caller's gradient is left alone)."""
    get_array_module(p).multiply(p, weight_decay, out=out)
    out += g
    return out


def _weight_decay_(p, g, weight_decay: float, decoupled: bool, decay_factor: float, work):
    """The Adam family's weight decay; the gradient to use from here on. Decoupled (AdamW's):
    p <- p * decay_factor (1 - lr * weight_decay), in place; coupled: g + weight_decay * p, into
    `work`."""
    if weight_decay == 0:
        return g
    if decoupled:
        p *= decay_factor
        return g
    return _decayed(g, p, weight_decay, work)


def _square_avg_(avg, g, decay: float, work) -> None:
    """avg <- decay * avg + (1 - decay) * g * g, in place."""
    avg *= decay
    get_array_module(avg).multiply(g, 1 - decay, out=work)
    work *= g
    avg += work


class Optimizer:
    """Base class: hyperparameters from `defaults`, checked on construction.

    Subclasses set `name`, `paper`, `defaults` and implement `init` and `update`; the built-ins
    implement `step_scalars` and `_update_ufunc` instead and leave `update` to dispatch. The
    learning rate may be a float or, on NumPy, an array that broadcasts against `p` (one lr per
    row of a point cloud, as `--tune` uses).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the implementation whose rule and defaults this one follows
    defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3}
    # Elementwise rules run on any array; the others reduce over tensors and take a layout
    # (`init(p, layout)`, see `modern`).
    elementwise: ClassVar[bool] = True
    kind: ClassVar[str] = "elementwise"  # or what the rule reduces over: "per tensor", "per model", ...
    needs_matrices: ClassVar[bool] = False  # updates weight matrices only (Muon): no surfaces
    # A rule's own allowed range for a name that means something else elsewhere (AdEMAMix's alpha).
    ranges: ClassVar[dict] = {}

    def __init__(self, **hparams: Any) -> None:
        label = self.name or type(self).__name__
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise OptbenchError(
                f"{label}: unknown hyperparameter {unknown[0]!r} "
                f"(choose from {', '.join(self.defaults)})"
            )
        self.hparams: dict[str, Any] = {}
        for key, default in self.defaults.items():
            value = hparams.get(key, default)
            if isinstance(default, bool):
                value = bool(value)
            elif default is None and value is None:  # "derived from the others", e.g. Prodigy's beta3
                pass
            elif not (key == "lr" and not np.isscalar(value)):
                value = float(value)
            self.hparams[key] = value
            setattr(self, key, value)
        self.check()

    def check(self) -> None:
        """Refuse hyperparameters outside their documented ranges."""
        label = self.name or type(self).__name__
        ranges = {**_RANGES, **self.ranges}
        for key, value in self.hparams.items():
            if isinstance(value, bool) or value is None:
                continue
            values = np.asarray(value)
            if key not in ranges:
                # No range of its own, but never NaN, and infinite only where the default is
                # (Prodigy's growth_rate): a NaN setting would pass as a run that diverged.
                default = self.defaults.get(key)
                infinite_default = isinstance(default, float) and math.isinf(default)
                if np.isnan(values).any() or not np.all(np.isfinite(values) | (infinite_default & (values == default))):
                    raise OptbenchError(f"{label}: invalid {key} {value!r} (must be a finite number)")
                continue
            ok, allowed = ranges[key]
            if not np.all(ok(values)) or not np.all(np.isfinite(values)):
                shown = f"{value!r}" if values.ndim == 0 else f"values from {values.min():g} to {values.max():g}"
                raise OptbenchError(f"{label}: invalid {key} {shown} (must be {allowed})")

    def init(self, p) -> dict:
        raise NotImplementedError

    def update(self, p, g, state: dict) -> None:
        """One step, in place: count it, compute its scalars, run the path these arrays take."""
        state["step"] += 1
        scalars = self.step_scalars(state)
        fused = fused_paths(type(self))
        if fused.numba is not None and kernels.usable(p, g, self.lr):
            fused.numba(self, p, g, state, scalars)
        elif fused.cuda is not None and gpu_kernels.usable(p, g, self.lr):
            fused.cuda(self, p, g, state, scalars)
        else:
            self._update_ufunc(p, g, state, scalars)

    def evaluation_weights(self, p, state: dict):
        """The weights to evaluate and report for parameters `p`: `p` itself, except for rules
        that train one point and answer with another (Schedule-Free's average)."""
        return p

    def step_scalars(self, state: dict):
        """The scalars of step `state["step"]` that every path of the rule takes (`step_scalars`)."""
        raise NotImplementedError

    def _update_ufunc(self, p, g, state: dict, scalars) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum.

        g <- g + wd * p
        b <- g at the first step, else mu * b + (1 - dampening) * g
        g <- g + mu * b  (nesterov)  or  b
        p <- p - lr * g
    """

    name = "sgd"
    paper = "Robbins & Monro 1951; Sutskever et al. 2013 (momentum, Nesterov)"
    defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def check(self) -> None:
        super().check()
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise OptbenchError(f"{self.name}: nesterov momentum requires momentum > 0 and dampening = 0")

    def init(self, p) -> dict:
        return {"step": 0, "momentum_buffer": None}

    def step_scalars(self, state: dict) -> step_scalars.StepSize:
        return step_scalars.StepSize(self.lr)

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.StepSize) -> None:
        xp = get_array_module(p)
        decayed, work = _scratch(state, p, 2)
        if self.weight_decay != 0:
            g = _decayed(g, p, self.weight_decay, decayed)
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                if self.dampening:
                    xp.multiply(g, 1 - self.dampening, out=work)
                    buf += work
                else:
                    buf += g  # (1 - 0) * g is g exactly
            if self.nesterov:
                xp.multiply(buf, self.momentum, out=work)
                work += g
                g = work
            else:
                g = buf
        xp.multiply(g, scalars.lr, out=work)
        p -= work


class Momentum(SGD):
    """SGD with heavy-ball momentum 0.9: torch.optim.SGD(momentum=0.9)."""

    name = "momentum"
    paper = "Polyak 1964"
    defaults = {**SGD.defaults, "momentum": 0.9}


class Nesterov(SGD):
    """SGD with Nesterov momentum 0.9: torch.optim.SGD(momentum=0.9, nesterov=True)."""

    name = "nesterov"
    paper = "Nesterov 1983; Sutskever et al. 2013"
    defaults = {**SGD.defaults, "momentum": 0.9, "nesterov": True}


class Adagrad(Optimizer):
    """Adagrad: per-coordinate steps scaled by the root of the summed squared gradients.

        clr <- lr / (1 + (t - 1) * lr_decay)
        s <- s + g^2          (s starts at initial_accumulator_value)
        p <- p - clr * g / (sqrt(s) + eps)
    """

    name = "adagrad"
    paper = "Duchi, Hazan & Singer 2011"
    defaults = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10}

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "sum": xp.full_like(p, self.initial_accumulator_value)}

    def step_scalars(self, state: dict) -> step_scalars.AdagradScalars:
        return step_scalars.adagrad(self, state["step"])

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.AdagradScalars) -> None:
        xp = get_array_module(p)
        decayed, std = _scratch(state, p, 2)
        if self.weight_decay != 0:
            g = _decayed(g, p, self.weight_decay, decayed)
        xp.multiply(g, g, out=std)
        state["sum"] += std
        xp.sqrt(state["sum"], out=std)
        std += self.eps
        xp.multiply(g, -scalars.clr, out=decayed)
        decayed /= std
        p += decayed


class RMSprop(Optimizer):
    """RMSprop: steps scaled by a running root-mean-square of the gradients.

        v <- alpha * v + (1 - alpha) * g^2
        m <- lerp(m, g, 1 - alpha);  d <- sqrt(v - m^2) + eps      (centered)
                                     d <- sqrt(v) + eps            (otherwise)
        b <- momentum * b + g / d;   p <- p - lr * b               (momentum > 0; b starts at 0)
        p <- p - lr * g / d                                        (otherwise)
    """

    name = "rmsprop"
    paper = "Hinton, Srivastava & Swersky 2012 (lecture 6e); Graves 2013 (centered)"
    defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False}

    def init(self, p) -> dict:
        xp = get_array_module(p)
        state = {"step": 0, "square_avg": xp.zeros_like(p)}
        if self.momentum > 0:
            state["momentum_buffer"] = xp.zeros_like(p)
        if self.centered:
            state["grad_avg"] = xp.zeros_like(p)
        return state

    def step_scalars(self, state: dict) -> step_scalars.StepSize:
        return step_scalars.StepSize(self.lr)

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.StepSize) -> None:
        xp = get_array_module(p)
        decayed, avg = _scratch(state, p, 2)
        if self.weight_decay != 0:
            g = _decayed(g, p, self.weight_decay, decayed)
        square_avg = state["square_avg"]
        _square_avg_(square_avg, g, self.alpha, avg)
        if self.centered:
            grad_avg = state["grad_avg"]
            _lerp_(grad_avg, g, 1 - self.alpha, avg)
            xp.multiply(grad_avg, grad_avg, out=avg)
            xp.subtract(square_avg, avg, out=avg)
            xp.sqrt(avg, out=avg)
        else:
            xp.sqrt(square_avg, out=avg)
        avg += self.eps
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            xp.divide(g, avg, out=decayed)
            buf += decayed
            xp.multiply(buf, scalars.lr, out=decayed)
            p -= decayed
        else:
            xp.multiply(g, -scalars.lr, out=decayed)
            decayed /= avg
            p += decayed


class Adadelta(Optimizer):
    """Adadelta: steps in units of the running RMS of past steps, so lr = 1 works.

        v <- rho * v + (1 - rho) * g^2
        d <- sqrt(u + eps) / sqrt(v + eps) * g
        u <- rho * u + (1 - rho) * d^2
        p <- p - lr * d
    """

    name = "adadelta"
    paper = "Zeiler 2012"
    defaults = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "square_avg": xp.zeros_like(p), "acc_delta": xp.zeros_like(p)}

    def step_scalars(self, state: dict) -> step_scalars.StepSize:
        return step_scalars.StepSize(self.lr)

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.StepSize) -> None:
        xp = get_array_module(p)
        decayed, std, delta = _scratch(state, p, 3)
        if self.weight_decay != 0:
            g = _decayed(g, p, self.weight_decay, decayed)
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        _square_avg_(square_avg, g, self.rho, std)
        xp.add(square_avg, self.eps, out=std)
        xp.sqrt(std, out=std)
        xp.add(acc_delta, self.eps, out=delta)
        xp.sqrt(delta, out=delta)
        delta /= std
        delta *= g
        _square_avg_(acc_delta, delta, self.rho, std)
        xp.multiply(delta, scalars.lr, out=std)
        p -= std


class Adam(Optimizer):
    """Adam, with optional AMSGrad.

        g <- g + wd * p   (decoupled_weight_decay: p <- p * (1 - lr * wd) instead, AdamW's)
        m <- lerp(m, g, 1 - beta1);  v <- beta2 * v + (1 - beta2) * g^2
        vmax <- max(vmax, v)   (amsgrad, on the raw second moment; used in place of v)
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    name = "adam"
    paper = "Kingma & Ba 2015; Reddi, Kale & Kumar 2018 (AMSGrad)"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                "decoupled_weight_decay": False}

    def init(self, p) -> dict:
        xp = get_array_module(p)
        state = {"step": 0, "exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = xp.zeros_like(p)
        return state

    def step_scalars(self, state: dict) -> step_scalars.AdamScalars:
        return step_scalars.adam(self, state["step"])

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.AdamScalars) -> None:
        xp = get_array_module(p)
        decayed, denom = _scratch(state, p, 2)
        g = _weight_decay_(p, g, self.weight_decay, self.decoupled_weight_decay, scalars.decay_factor, decayed)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, g, 1 - self.beta1, denom)
        _square_avg_(exp_avg_sq, g, self.beta2, denom)
        if self.amsgrad:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        else:
            second = exp_avg_sq
        xp.sqrt(second, out=denom)
        denom /= scalars.bias_correction2_sqrt
        denom += self.eps
        xp.multiply(exp_avg, -scalars.step_size, out=decayed)
        decayed /= denom
        p += decayed


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, p <- p * (1 - lr * wd) before the Adam step."""

    name = "adamw"
    paper = "Loshchilov & Hutter 2019"
    # torch.optim.AdamW is Adam(decoupled_weight_decay=True), and has no option to undo it.
    defaults = {**{k: v for k, v in Adam.defaults.items() if k != "decoupled_weight_decay"}, "weight_decay": 1e-2}
    decoupled_weight_decay = True


class AMSGrad(Adam):
    """Adam(amsgrad=True): the denominator uses the running maximum of the raw second moment."""

    name = "amsgrad"
    paper = "Reddi, Kale & Kumar 2018"
    defaults = {**Adam.defaults, "amsgrad": True}


class NAdam(Optimizer):
    """NAdam: Adam with Nesterov momentum and Dozat's momentum schedule.

        mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));  P_t = mu_1 * ... * mu_t
        m, v as in Adam;  d = sqrt(v / (1 - beta2^t)) + eps
        p <- p - lr * (1 - mu_t) / (1 - P_t) * g / d - lr * mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d
    """

    name = "nadam"
    paper = "Dozat 2016"
    defaults = {
        "lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
        "momentum_decay": 4e-3, "decoupled_weight_decay": False,
    }

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "mu_product": 1.0, "exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p)}

    def step_scalars(self, state: dict) -> step_scalars.NAdamScalars:
        scalars = step_scalars.nadam(self, state["step"], state["mu_product"])
        state["mu_product"] = scalars.mu_product  # called once per step, so the product advances once
        return scalars

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.NAdamScalars) -> None:
        xp = get_array_module(p)
        decayed, denom = _scratch(state, p, 2)
        g = _weight_decay_(p, g, self.weight_decay, self.decoupled_weight_decay, scalars.decay_factor, decayed)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, g, 1 - self.beta1, denom)
        _square_avg_(exp_avg_sq, g, self.beta2, denom)
        xp.divide(exp_avg_sq, scalars.bias_correction2, out=denom)
        xp.sqrt(denom, out=denom)
        denom += self.eps
        xp.multiply(g, scalars.grad_coef, out=decayed)
        decayed /= denom
        p += decayed
        xp.multiply(exp_avg, scalars.avg_coef, out=decayed)
        decayed /= denom
        p += decayed


class RAdam(Optimizer):
    """RAdam: Adam whose adaptive step is switched on, and rectified, once its variance is finite.

        rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
        m_hat = m / (1 - beta1^t)
        rho_t > 5:  p <- p - lr * m_hat * r_t * sqrt(1 - beta2^t) / (sqrt(v) + eps)
                    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        otherwise:  p <- p - lr * m_hat   (SGD with momentum)
    """

    name = "radam"
    paper = "Liu et al. 2020"
    defaults = {
        "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
        "decoupled_weight_decay": False,
    }

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p)}

    def step_scalars(self, state: dict) -> step_scalars.RAdamScalars:
        return step_scalars.radam(self, state["step"])

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.RAdamScalars) -> None:
        xp = get_array_module(p)
        decayed, step = _scratch(state, p, 2)
        g = _weight_decay_(p, g, self.weight_decay, self.decoupled_weight_decay, scalars.decay_factor, decayed)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, g, 1 - self.beta1, step)
        _square_avg_(exp_avg_sq, g, self.beta2, step)
        xp.divide(exp_avg, scalars.bias_correction1, out=step)  # the bias-corrected first moment
        step *= scalars.lr
        if scalars.rectified:
            adaptive_lr = decayed
            xp.sqrt(exp_avg_sq, out=adaptive_lr)
            adaptive_lr += self.eps
            xp.divide(scalars.bias_correction2_sqrt, adaptive_lr, out=adaptive_lr)
            step *= adaptive_lr
            step *= scalars.rect
        p -= step


class Adamax(Optimizer):
    """Adamax: Adam with the infinity norm in place of the second moment.

        m <- lerp(m, g, 1 - beta1);  u <- max(beta2 * u, |g| + eps)
        p <- p - lr / (1 - beta1^t) * m / u
    """

    name = "adamax"
    paper = "Kingma & Ba 2015 (section 7)"
    defaults = {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

    def init(self, p) -> dict:
        xp = get_array_module(p)
        return {"step": 0, "exp_avg": xp.zeros_like(p), "exp_inf": xp.zeros_like(p)}

    def step_scalars(self, state: dict) -> step_scalars.AdamaxScalars:
        return step_scalars.adamax(self, state["step"])

    def _update_ufunc(self, p, g, state: dict, scalars: step_scalars.AdamaxScalars) -> None:
        xp = get_array_module(p)
        decayed, work = _scratch(state, p, 2)
        if self.weight_decay != 0:
            g = _decayed(g, p, self.weight_decay, decayed)
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        _lerp_(exp_avg, g, 1 - self.beta1, work)
        exp_inf *= self.beta2
        xp.abs(g, out=work)
        work += self.eps
        xp.maximum(exp_inf, work, out=exp_inf)
        xp.multiply(exp_avg, -scalars.clr, out=work)
        work /= exp_inf
        p += work


# The twelve rules of `torch.optim` (here); `OPTIMIZERS` adds the modern ones (`modern`) below.
TORCH_OPTIM: dict[str, type[Optimizer]] = {
    cls.name: cls
    for cls in (SGD, Momentum, Nesterov, Adagrad, RMSprop, Adadelta, Adam, AdamW, AMSGrad, NAdam, RAdam, Adamax)
}
for _cls in TORCH_OPTIM.values():
    _cls.reference = "torch.optim." + {"momentum": "SGD", "nesterov": "SGD", "amsgrad": "Adam"}.get(
        _cls.name, _cls.__name__
    )
OPTIMIZERS: dict[str, type[Optimizer]] = dict(TORCH_OPTIM)


class FusedPaths(NamedTuple):
    """A family's one-pass kernels for a flat float buffer with a scalar lr; None: the ufunc rule."""

    numba: Callable | None  # NumPy, on the CPU (`kernels`)
    cuda: Callable | None  # CuPy, on the GPU (`gpu_kernels`)


# Which optimizer has which path, the table `Optimizer.update` chooses from; a subclass takes its
# family's row. On the CPU only the families the training loop uses most have a kernel: for the
# others the ufunc passes are not the slow part of a step.
FUSED: dict[type[Optimizer], FusedPaths] = {
    SGD: FusedPaths(kernels.sgd, gpu_kernels.sgd),  # and Momentum, Nesterov
    Adagrad: FusedPaths(None, gpu_kernels.adagrad),
    RMSprop: FusedPaths(kernels.rmsprop, gpu_kernels.rmsprop),
    Adadelta: FusedPaths(None, gpu_kernels.adadelta),
    Adam: FusedPaths(kernels.adam, gpu_kernels.adam),  # and AdamW, AMSGrad
    NAdam: FusedPaths(None, gpu_kernels.nadam),
    RAdam: FusedPaths(None, gpu_kernels.radam),
    Adamax: FusedPaths(None, gpu_kernels.adamax),
}
_UFUNC_ONLY = FusedPaths(None, None)


def fused_paths(cls: type) -> FusedPaths:
    """The fused kernels of an optimizer class: its family's row of `FUSED`, or none."""
    return next((FUSED[family] for family in cls.__mro__ if family in FUSED), _UFUNC_ONLY)


def init_state(opt, p, layout=None) -> dict:
    """`opt.init(p)`, with the layout of `p`'s tensors for a rule that is not elementwise."""
    if getattr(opt, "elementwise", True):
        return opt.init(p)
    return opt.init(p, layout)


def optimizer_class(spec: str) -> type:
    """The class for a built-in name or a user's `module:Class` (module name or path to a .py file)."""
    if spec in OPTIMIZERS:
        return OPTIMIZERS[spec]
    if ":" not in spec:
        raise OptbenchError(
            f"unknown optimizer {spec!r} (choose from {', '.join(OPTIMIZERS)}, all, or module:Class)"
        )
    module_name, _, class_name = spec.rpartition(":")
    module = _import_user_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise OptbenchError(f"optimizer {spec!r}: module {module_name!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and callable(getattr(cls, "init", None)) and callable(getattr(cls, "update", None))):
        raise OptbenchError(f"optimizer {spec!r} is not an optimizer class with init(p) and update(p, g, state)")
    return cls


# Modules loaded from a path, by their real path and version: a file runs once, so naming it
# twice (or a sweep's cells looking it up again) gives the same class, as `import` does for a
# module name; a file edited since (in a notebook, say) runs again.
_FILE_MODULES: dict[tuple, Any] = {}


def _import_user_module(module_name: str):
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            if not module_name.endswith(".py"):
                raise OptbenchError(f"cannot import optimizer module {module_name!r}: a path names a .py file")
            if not os.path.isfile(module_name):
                raise OptbenchError(f"cannot import optimizer module {module_name!r}: no such file")
            path = os.path.realpath(module_name)
            version = os.stat(path)
            key = (path, version.st_mtime_ns, version.st_size)
            if key not in _FILE_MODULES:
                spec = importlib.util.spec_from_file_location(os.path.basename(module_name)[:-3], path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                _FILE_MODULES[key] = module
            return _FILE_MODULES[key]
        # Like `python -m`, look in the working directory first.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(module_name)
    except OptbenchError:
        raise
    except Exception as exc:  # the user's module can fail in any way; report it in one line
        raise OptbenchError(f"cannot import optimizer module {module_name!r}: {exc}") from exc


def defaults_of(cls: type) -> dict[str, Any]:
    """An optimizer class's hyperparameters and defaults: its `defaults`, or for a plain class
    without one, the keyword arguments of its constructor that have a default."""
    defaults = getattr(cls, "defaults", None)
    if isinstance(defaults, dict):
        return defaults
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty and p.name != "self"}


def optimizer_label(cls: type) -> str:
    """The name that appears in tables, CSVs and legends."""
    return getattr(cls, "name", "") or cls.__name__


def table_lr(table: dict[str, float], label: str, cls: type) -> float:
    """A built-in optimizer's entry in a table of lrs (a surface's, MNIST's), else the class's
    own default lr (a user's class, or one the table leaves out)."""
    if cls is OPTIMIZERS.get(label) and label in table:
        return table[label]
    return float(defaults_of(cls).get("lr", 1e-3))


def make_optimizer(spec: str, **hparams: Any):
    """Build an optimizer from a name or `module:Class`, checking its hyperparameters."""
    return instantiate(optimizer_class(spec), **hparams)


def parse_value(text: str, default: Any):
    """A hyperparameter value from the command line, typed like its default."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if default is None and text.strip().lower() == "none":  # back to "derived from the others"
        return None
    return float(text)


def parse_hparams(pairs: list[str], labels: list[str]) -> dict[str, dict[str, str]]:
    """Split `name=value` and `optimizer.name=value` strings by optimizer label.

    A bare `name=value` goes to every selected optimizer (`labels`); values stay strings here
    and are typed against each optimizer's defaults by `hparams_for`.
    """
    per_label: dict[str, dict[str, str]] = {label: {} for label in labels}
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise OptbenchError(f"--hp {pair!r}: expected name=value, e.g. --hp momentum=0.95")
        if key in given and given[key] != value:  # which one would win is nobody's guess
            raise OptbenchError(f"--hp {key} is given twice ({given[key]} and {value}): give it once")
        given[key] = value
        target, dot, name = key.rpartition(".")
        if dot:
            if target not in per_label:
                raise OptbenchError(f"--hp {pair!r}: {target!r} is not among the selected optimizers ({', '.join(labels)})")
            per_label[target][name] = value
        else:
            for label in labels:
                per_label[label][name] = value
    return per_label


def hparams_for(cls: type, raw: dict[str, str], *, strict: bool) -> dict[str, Any]:
    """Type the raw `--hp` strings for `cls`; with `strict=False`, skip names it does not have."""
    defaults = defaults_of(cls)
    typed: dict[str, Any] = {}
    for name, text in raw.items():
        if name not in defaults:
            if strict:
                raise OptbenchError(
                    f"{optimizer_label(cls)}: unknown hyperparameter {name!r} (choose from {', '.join(defaults)})"
                )
            continue
        try:
            typed[name] = parse_value(text, defaults[name])
        except ValueError as exc:
            raise OptbenchError(f"{optimizer_label(cls)}: bad value for {name}: {exc}") from exc
    return typed


def instantiate(cls: type, **hparams: Any):
    """`cls(**hparams)`, with a user class's own TypeError or ValueError turned into one line."""
    try:
        return cls(**hparams)
    except OptbenchError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptbenchError(f"{optimizer_label(cls)}: {exc}") from exc


def resolve_hparams(selected: list[tuple[str, type]], pairs: list[str]) -> dict[str, dict[str, Any]]:
    """Typed hyperparameters per selected optimizer from `--hp` strings.

    `name=value` applies to every selected optimizer that has `name` (and is an error when none
    has it); `label.name=value` applies to that one, must be one of its hyperparameters, and wins
    over a bare `name=value` whatever their order.
    """
    labels = [label for label, _ in selected]
    bare = parse_hparams([p for p in pairs if "." not in p.partition("=")[0]], labels)
    targeted = parse_hparams([p for p in pairs if "." in p.partition("=")[0]], labels)
    names = {pair.partition("=")[0].strip() for pair in pairs if "." not in pair.partition("=")[0]}
    for name in sorted(names):
        if not any(name in defaults_of(cls) for _, cls in selected):
            raise OptbenchError(f"--hp {name}: no selected optimizer has it (see `optbench list`)")
    return {
        label: {**hparams_for(cls, bare[label], strict=False), **hparams_for(cls, targeted[label], strict=True)}
        for label, cls in selected
    }


@dataclass(frozen=True)
class Contender:
    """One optimizer as the user chose it: its label, class and typed hyperparameters."""

    label: str
    cls: type
    hparams: dict


def select_optimizers(specs: list[str], default: str = "all", points: bool = False) -> list[tuple[str, type]]:
    """(label, class) for each `--opt`, in order, with `all` expanded and duplicates dropped.

    `points`: for a surface, whose parameters are points, not matrices: `all` leaves out the
    rules that only update matrices (Muon), and naming one is refused with the reason.
    """
    chosen: dict[str, type] = {}
    for spec in specs or [default]:
        if spec == "all":
            pairs = [(label, cls) for label, cls in OPTIMIZERS.items() if not (points and cls.needs_matrices)]
        else:
            pairs = [(None, optimizer_class(spec))]
        for label, cls in pairs:
            if points and getattr(cls, "needs_matrices", False):
                raise OptbenchError(f"{optimizer_label(cls)} orthogonalises weight matrices: a point on a surface is "
                                    "a vector (run it with `optbench mnist`)")
            label = label or optimizer_label(cls)
            if label in chosen and chosen[label] is not cls:
                raise OptbenchError(f"two optimizers are both called {label!r}: give {spec!r} a `name` of its own")
            chosen.setdefault(label, cls)
    return list(chosen.items())


def select_contenders(specs: list[str], pairs: list[str], points: bool = False) -> list[Contender]:
    """The optimizers a command runs (default all), with typed `--hp` values, each built once now
    so that a bad hyperparameter stops the run before anything is written (`points`: for surfaces)."""
    selected = select_optimizers(specs, "all", points)
    typed = resolve_hparams(selected, pairs)
    for label, cls in selected:
        instantiate(cls, **typed[label])
    return [Contender(label, cls, typed[label]) for label, cls in selected]


def register_modern(modern) -> None:
    """The modern rules join the table, with the one-pass kernels that are cheap to have for the
    elementwise ones (CPU only for now)."""
    OPTIMIZERS.update(modern.OPTIMIZERS)
    FUSED.update({
        modern.Lion: FusedPaths(kernels.lion, None),
        modern.ScheduleFreeAdamW: FusedPaths(kernels.schedule_free, None),
        modern.ScheduleFreeSGD: FusedPaths(kernels.schedule_free, None),
        modern.AdEMAMix: FusedPaths(kernels.ademamix, None),
    })


# The modern rules subclass `Optimizer` above: `modern` registers them at its end, whichever of
# the two modules is imported first (this import finds `modern` half-made when that one was).
from optbench import modern  # noqa: E402, F401
