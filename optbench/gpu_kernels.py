"""Fused GPU kernels: each optimizer's update as one CuPy elementwise kernel, one pass per step.

The update rules in `optimizers.py` are the definition; on CuPy, written with ufuncs, they
launch 8 to 15 kernels per update, each a pass over every parameter. Here each rule is one
CUDA C body doing the same IEEE operations in the same order, every scalar rounded to the
array's dtype first (as NumPy and CuPy do with a Python float). It is compiled with
`--fmad=false`, because NVRTC would otherwise contract `a * b + c` into one fused multiply-add
and round once where the ufunc rules round twice; CUDA's float `sqrt` and `/` are correctly
rounded by default. So the kernel gives bitwise the ufunc path's numbers, for every value that
is not subnormal: CuPy compiles every kernel, its own ufuncs included, with `-ftz=true` (last,
so it cannot be overridden), which flushes float32 values below 1.2e-38 to zero.

Each body is also valid host C++: `tests/test_gpu_kernels.py` compiles every variant with the
system's C++ compiler and checks it bitwise against the NumPy ufunc rules, on machines without a
GPU; it also compiles them for the H100 with nvcc, and with CuPy's own NVRTC and headers in
the form ElementwiseKernel writes, where those exist. `tests/test_gpu.py` checks the real launch
against NumPy on a GPU.

A setting that has no state array (SGD without momentum, Adam without AMSGrad, ...) gets its
own variant of the kernel, chosen by the `#if` flags, rather than a dummy array.
`Optimizer.update` calls them, for 1-D contiguous CuPy parameters with a scalar learning rate
(the MLP's flat buffer), with the step already counted and its scalars (`step_scalars`) computed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from optbench import step_scalars
from optbench.backend import get_array_module
from optbench.kernels import flat_buffers

# Round every operation on its own, as NumPy does: no contraction into fused multiply-adds.
COMPILE_OPTIONS = ("--fmad=false",)


@dataclass(frozen=True)
class FusedUpdate:
    """One kernel: its arrays (read; read and written), scalar parameters, flags and body."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scalars: tuple[tuple[str, str], ...]  # (C type: "T" is the array's, or "bool"; name)
    body: str
    flags: tuple[tuple[str, int], ...] = field(default=())

    @property
    def kernel_name(self) -> str:
        return "optbench_" + self.name + "".join(f"_{k.lower()}{v}" for k, v in self.flags)

    @property
    def preamble(self) -> str:
        return "".join(f"#define {k} {v}\n" for k, v in self.flags)


_SGD_BODY = """
T d = g;
if (wd != 0) d = p * wd + d;
#if MOMENTUM
if (first) {
    buf = d;
} else {
    T b = buf * momentum;
    buf = dampened ? b + d * one_minus_dampening : b + d;
}
d = nesterov ? buf * momentum + d : buf;
#endif
p = p - d * lr;
"""

# Adam, NAdam and RAdam begin alike: weight decay (decoupled or L2), then both moments.
_MOMENTS = """
T q = p;
T d = g;
if (decoupled) q = q * decay_factor;
else if (wd != 0) d = q * wd + d;
T diff = d - m;
m = small ? m + diff * w : d - diff * one_minus_w;  /* torch's lerp */
v = v * b2 + (d * one_minus_b2) * d;
"""

_ADAM_BODY = _MOMENTS + """#if AMSGRAD
vmax = (vmax > v || vmax != vmax) ? vmax : v;  /* np.maximum: NaN wins */
T second = vmax;
#else
T second = v;
#endif
T denom = sqrt(second) / bc2_sqrt + eps;
p = q + (m * neg_step_size) / denom;
"""

_RMSPROP_BODY = """
T d = g;
if (wd != 0) d = p * wd + d;
square_avg = square_avg * alpha + (d * one_minus_alpha) * d;
#if CENTERED
T diff = d - grad_avg;
grad_avg = small ? grad_avg + diff * w : d - diff * one_minus_w;
T avg = sqrt(square_avg - grad_avg * grad_avg) + eps;
#else
T avg = sqrt(square_avg) + eps;
#endif
#if MOMENTUM
buf = buf * momentum + d / avg;
p = p - buf * lr;
#else
p = p + (d * neg_lr) / avg;
#endif
"""

_ADAGRAD_BODY = """
T d = g;
if (wd != 0) d = p * wd + d;
acc = acc + d * d;
T denom = sqrt(acc) + eps;
p = p + (d * neg_clr) / denom;
"""

_ADADELTA_BODY = """
T d = g;
if (wd != 0) d = p * wd + d;
square_avg = square_avg * rho + (d * one_minus_rho) * d;
T delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * d;
acc_delta = acc_delta * rho + (delta * one_minus_rho) * delta;
p = p - delta * lr;
"""

_NADAM_BODY = _MOMENTS + """T denom = sqrt(v / bias_correction2) + eps;
q = q + (d * grad_coef) / denom;
p = q + (m * avg_coef) / denom;
"""

_RADAM_BODY = _MOMENTS + """T step = m / bias_correction1 * lr;
if (rectified) step = step * (bc2_sqrt / (sqrt(v) + eps)) * rect;  /* else: SGD with momentum */
p = q - step;
"""

_ADAMAX_BODY = """
T d = g;
if (wd != 0) d = p * wd + d;
T diff = d - m;
m = small ? m + diff * w : d - diff * one_minus_w;
T decayed = u * b2;
T bound = fabs(d) + eps;
u = (decayed > bound || decayed != decayed) ? decayed : bound;  /* np.maximum: NaN wins */
p = p + (m * neg_clr) / u;
"""


# Scalars shared by several kernels: decoupled (AdamW-style) or L2 weight decay, and torch's lerp.
_DECAY = (("T", "decay_factor"), ("bool", "decoupled"), ("T", "wd"))
_LERP = (("T", "w"), ("bool", "small"), ("T", "one_minus_w"))


def _sgd(momentum: bool) -> FusedUpdate:
    return FusedUpdate(
        "sgd", ("g",), ("p", "buf") if momentum else ("p",),
        (("T", "wd"), ("T", "momentum"), ("T", "one_minus_dampening"), ("bool", "dampened"), ("bool", "nesterov"),
         ("bool", "first"), ("T", "lr")),
        _SGD_BODY, (("MOMENTUM", int(momentum)),),
    )


def _adam(amsgrad: bool) -> FusedUpdate:
    return FusedUpdate(
        "adam", ("g",), ("p", "m", "v", "vmax") if amsgrad else ("p", "m", "v"),
        _DECAY + _LERP + (("T", "b2"), ("T", "one_minus_b2"), ("T", "bc2_sqrt"), ("T", "eps"), ("T", "neg_step_size")),
        _ADAM_BODY, (("AMSGRAD", int(amsgrad)),),
    )


def _rmsprop(centered: bool, momentum: bool) -> FusedUpdate:
    return FusedUpdate(
        "rmsprop", ("g",), ("p", "square_avg") + (("grad_avg",) if centered else ()) + (("buf",) if momentum else ()),
        (("T", "wd"), ("T", "alpha"), ("T", "one_minus_alpha")) + _LERP + (("T", "eps"), ("T", "momentum"), ("T", "lr"), ("T", "neg_lr")),
        _RMSPROP_BODY, (("CENTERED", int(centered)), ("MOMENTUM", int(momentum))),
    )


_ADAGRAD = FusedUpdate("adagrad", ("g",), ("p", "acc"), (("T", "wd"), ("T", "eps"), ("T", "neg_clr")), _ADAGRAD_BODY)
_ADADELTA = FusedUpdate("adadelta", ("g",), ("p", "square_avg", "acc_delta"),
                        (("T", "wd"), ("T", "rho"), ("T", "one_minus_rho"), ("T", "eps"), ("T", "lr")), _ADADELTA_BODY)
_NADAM = FusedUpdate("nadam", ("g",), ("p", "m", "v"),
                     _DECAY + _LERP + (("T", "b2"), ("T", "one_minus_b2"), ("T", "bias_correction2"), ("T", "eps"),
                                       ("T", "grad_coef"), ("T", "avg_coef")), _NADAM_BODY)
_RADAM = FusedUpdate("radam", ("g",), ("p", "m", "v"),
                     _DECAY + _LERP + (("T", "b2"), ("T", "one_minus_b2"), ("T", "bias_correction1"), ("T", "lr"),
                                       ("bool", "rectified"), ("T", "bc2_sqrt"), ("T", "eps"), ("T", "rect")), _RADAM_BODY)
_ADAMAX = FusedUpdate("adamax", ("g",), ("p", "m", "u"),
                      (("T", "wd"),) + _LERP + (("T", "b2"), ("T", "eps"), ("T", "neg_clr")), _ADAMAX_BODY)

VARIANTS: tuple[FusedUpdate, ...] = (
    _sgd(False), _sgd(True), _adam(False), _adam(True),
    _rmsprop(False, False), _rmsprop(False, True), _rmsprop(True, False), _rmsprop(True, True),
    _ADAGRAD, _ADADELTA, _NADAM, _RADAM, _ADAMAX,
)


# -- what each optimizer's update passes to its kernel -----------------------------------------------
# Each returns (kernel, arrays by name, scalars by name) for one update, from the step's scalars
# (`step_scalars`) rounded to the arrays' dtype. The same plans drive the GPU launch and the host test.

def _lerp_scalars(t, weight: float) -> dict:
    return {"w": t(weight), "small": abs(weight) < 0.5, "one_minus_w": t(1 - weight)}


def _decay_scalars(t, opt, decay_factor: float) -> dict:
    return {"decay_factor": t(decay_factor),
            "decoupled": bool(getattr(opt, "decoupled_weight_decay", False) and opt.weight_decay != 0),
            "wd": t(opt.weight_decay)}


def plan_sgd(opt, p, g, state, scalars: step_scalars.StepSize):
    t = p.dtype.type
    arrays = {"p": p, "g": g}
    momentum = opt.momentum != 0
    first = state["momentum_buffer"] is None
    if momentum:
        if first:
            state["momentum_buffer"] = get_array_module(p).empty_like(p)
        arrays["buf"] = state["momentum_buffer"]
    by_name = {"wd": t(opt.weight_decay), "momentum": t(opt.momentum), "one_minus_dampening": t(1 - opt.dampening),
               "dampened": bool(opt.dampening), "nesterov": bool(opt.nesterov), "first": first, "lr": t(scalars.lr)}
    return _sgd(momentum), arrays, by_name


def plan_adam(opt, p, g, state, scalars: step_scalars.AdamScalars):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "m": state["exp_avg"], "v": state["exp_avg_sq"]}
    if opt.amsgrad:
        arrays["vmax"] = state["max_exp_avg_sq"]
    by_name = {**_decay_scalars(t, opt, scalars.decay_factor), **_lerp_scalars(t, 1 - opt.beta1), "b2": t(opt.beta2),
               "one_minus_b2": t(1 - opt.beta2), "bc2_sqrt": t(scalars.bias_correction2_sqrt), "eps": t(opt.eps),
               "neg_step_size": t(-scalars.step_size)}
    return _adam(bool(opt.amsgrad)), arrays, by_name


def plan_rmsprop(opt, p, g, state, scalars: step_scalars.StepSize):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "square_avg": state["square_avg"]}
    if opt.centered:
        arrays["grad_avg"] = state["grad_avg"]
    if opt.momentum > 0:
        arrays["buf"] = state["momentum_buffer"]
    by_name = {"wd": t(opt.weight_decay), "alpha": t(opt.alpha), "one_minus_alpha": t(1 - opt.alpha),
               **_lerp_scalars(t, 1 - opt.alpha), "eps": t(opt.eps), "momentum": t(opt.momentum),
               "lr": t(scalars.lr), "neg_lr": t(-scalars.lr)}
    return _rmsprop(bool(opt.centered), opt.momentum > 0), arrays, by_name


def plan_adagrad(opt, p, g, state, scalars: step_scalars.AdagradScalars):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "acc": state["sum"]}
    return _ADAGRAD, arrays, {"wd": t(opt.weight_decay), "eps": t(opt.eps), "neg_clr": t(-scalars.clr)}


def plan_adadelta(opt, p, g, state, scalars: step_scalars.StepSize):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "square_avg": state["square_avg"], "acc_delta": state["acc_delta"]}
    by_name = {"wd": t(opt.weight_decay), "rho": t(opt.rho), "one_minus_rho": t(1 - opt.rho), "eps": t(opt.eps),
               "lr": t(scalars.lr)}
    return _ADADELTA, arrays, by_name


def plan_nadam(opt, p, g, state, scalars: step_scalars.NAdamScalars):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "m": state["exp_avg"], "v": state["exp_avg_sq"]}
    by_name = {**_decay_scalars(t, opt, scalars.decay_factor), **_lerp_scalars(t, 1 - opt.beta1), "b2": t(opt.beta2),
               "one_minus_b2": t(1 - opt.beta2), "bias_correction2": t(scalars.bias_correction2), "eps": t(opt.eps),
               "grad_coef": t(scalars.grad_coef), "avg_coef": t(scalars.avg_coef)}
    return _NADAM, arrays, by_name


def plan_radam(opt, p, g, state, scalars: step_scalars.RAdamScalars):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "m": state["exp_avg"], "v": state["exp_avg_sq"]}
    by_name = {**_decay_scalars(t, opt, scalars.decay_factor), **_lerp_scalars(t, 1 - opt.beta1), "b2": t(opt.beta2),
               "one_minus_b2": t(1 - opt.beta2), "bias_correction1": t(scalars.bias_correction1), "lr": t(scalars.lr),
               "rectified": scalars.rectified, "bc2_sqrt": t(scalars.bias_correction2_sqrt), "eps": t(opt.eps),
               "rect": t(scalars.rect)}
    return _RADAM, arrays, by_name


def plan_adamax(opt, p, g, state, scalars: step_scalars.AdamaxScalars):
    t = p.dtype.type
    arrays = {"p": p, "g": g, "m": state["exp_avg"], "u": state["exp_inf"]}
    by_name = {"wd": t(opt.weight_decay), **_lerp_scalars(t, 1 - opt.beta1), "b2": t(opt.beta2), "eps": t(opt.eps),
               "neg_clr": t(-scalars.clr)}
    return _ADAMAX, arrays, by_name


# -- on the GPU ------------------------------------------------------------------------------------

def usable(p, g, lr) -> bool:
    """Whether a fused kernel may replace the ufunc path for this update (CuPy arrays only)."""
    return type(p).__module__.startswith("cupy") and flat_buffers(p, g, lr)

@functools.cache
def _elementwise(fused: FusedUpdate):
    import cupy

    scalars = ", ".join(f"{ctype} {name}" for ctype, name in fused.scalars)
    inputs = ", ".join(f"T {name}" for name in fused.inputs) + ", " + scalars
    outputs = ", ".join(f"T {name}" for name in fused.outputs)
    return cupy.ElementwiseKernel(inputs, outputs, fused.body, fused.kernel_name, preamble=fused.preamble,
                                  options=COMPILE_OPTIONS, no_return=True)


def launch(fused: FusedUpdate, arrays: dict, scalars: dict) -> None:
    kernel = _elementwise(fused)
    kernel(*(arrays[n] for n in fused.inputs), *(scalars[n] for _, n in fused.scalars),
           *(arrays[n] for n in fused.outputs))


def _launcher(plan):
    def update(opt, p, g, state, scalars) -> None:
        launch(*plan(opt, p, g, state, scalars))

    update.__doc__ = f"`{plan.__name__[5:]}` in one kernel on the GPU (`Optimizer.update` calls it for CuPy flat buffers)."
    return update


sgd = _launcher(plan_sgd)
adam = _launcher(plan_adam)
rmsprop = _launcher(plan_rmsprop)
adagrad = _launcher(plan_adagrad)
adadelta = _launcher(plan_adadelta)
nadam = _launcher(plan_nadam)
radam = _launcher(plan_radam)
adamax = _launcher(plan_adamax)
