"""Each optimizer's per-step scalars, written once for its three paths.

A step's bias corrections, NAdam's momentum schedule, RAdam's rectification and the step sizes
are computed here, once per update, by `Optimizer.update`, which hands them to the path it
chooses: the ufunc rule in `optimizers`, the Numba kernel in `kernels` or the CUDA kernel in
`gpu_kernels`. They are Python floats (arrays where the lr is an array, as `--tune` uses), in
torch's order of operations; each path rounds them to the parameters' dtype as NumPy rounds a
Python float, which is what lets the paths agree bitwise.

A scalar of the hyperparameters alone (1 - beta2, ...) is not here: each path writes it in the
form its arithmetic takes. The lr is here, and all that is made from it, so that the size of a
step is set in one place.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class StepSize(NamedTuple):
    """SGD, RMSprop, Adadelta: the step is scaled by lr alone."""

    lr: Any


class AdagradScalars(NamedTuple):
    clr: Any  # lr / (1 + (t - 1) * lr_decay)


class AdamScalars(NamedTuple):
    decay_factor: Any  # 1 - lr * wd: AdamW's shrink of p
    step_size: Any  # lr / (1 - beta1^t)
    bias_correction2_sqrt: float  # sqrt(1 - beta2^t)


class NAdamScalars(NamedTuple):
    decay_factor: Any  # 1 - lr * wd, for decoupled weight decay
    bias_correction2: float  # 1 - beta2^t
    mu_product: float  # mu_1 * ... * mu_t, state carried to the next step
    grad_coef: Any  # -lr * (1 - mu_t) / (1 - mu_product): the step along g / d
    avg_coef: Any  # -lr * mu_{t+1} / (1 - mu_product * mu_{t+1}): the step along m / d


class RAdamScalars(NamedTuple):
    decay_factor: Any  # 1 - lr * wd, for decoupled weight decay
    lr: Any
    bias_correction1: float  # 1 - beta1^t
    bias_correction2_sqrt: float  # sqrt(1 - beta2^t)
    rectified: bool  # rho_t > 5: the adaptive step is on
    rect: float  # r_t; 0.0 while not rectified, where it is undefined and unused


class AdamaxScalars(NamedTuple):
    clr: Any  # lr / (1 - beta1^t)


def adagrad(opt, t: int) -> AdagradScalars:
    return AdagradScalars(opt.lr / (1 + (t - 1) * opt.lr_decay))


def adam(opt, t: int) -> AdamScalars:
    # ** 0.5 keeps a Python float: np.sqrt would make a float64 scalar and promote float32 arrays.
    return AdamScalars(1 - opt.lr * opt.weight_decay, opt.lr / (1 - opt.beta1**t), (1 - opt.beta2**t) ** 0.5)


def nadam(opt, t: int, mu_product: float) -> NAdamScalars:
    """Step t's scalars, given the product of the mu up to step t - 1."""
    mu = opt.beta1 * (1.0 - 0.5 * 0.96 ** (t * opt.momentum_decay))
    mu_next = opt.beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * opt.momentum_decay))
    mu_product = mu_product * mu
    return NAdamScalars(
        decay_factor=1 - opt.lr * opt.weight_decay,
        bias_correction2=1 - opt.beta2**t,
        mu_product=mu_product,
        grad_coef=-opt.lr * (1.0 - mu) / (1.0 - mu_product),
        avg_coef=(-opt.lr * mu_next) / (1.0 - mu_product * mu_next),
    )


def radam(opt, t: int) -> RAdamScalars:
    bias_correction2 = 1 - opt.beta2**t
    rho_inf = 2 / (1 - opt.beta2) - 1
    rho_t = rho_inf - 2 * t * opt.beta2**t / bias_correction2
    rectified = rho_t > 5.0
    # Below 5 the product under the root can be negative: a Python complex, not a step.
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 0.0
    return RAdamScalars(
        decay_factor=1 - opt.lr * opt.weight_decay,
        lr=opt.lr,
        bias_correction1=1 - opt.beta1**t,
        bias_correction2_sqrt=bias_correction2**0.5,
        rectified=rectified,
        rect=rect,
    )


def adamax(opt, t: int) -> AdamaxScalars:
    return AdamaxScalars(opt.lr / (1 - opt.beta1**t))
