"""The settings the fused-kernel tests run: every branch of every fused kernel (CPU and GPU)."""

from optbench.optimizers import OPTIMIZERS, fused_paths

SETTINGS = [
    ("sgd", {}), ("sgd", {"weight_decay": 0.01}), ("momentum", {}), ("momentum", {"dampening": 0.3, "weight_decay": 0.1}),
    ("nesterov", {}), ("nesterov", {"momentum": 0.5, "weight_decay": 0.02}),
    ("adam", {}), ("adam", {"weight_decay": 0.1}), ("adam", {"beta1": 0.3}), ("amsgrad", {}), ("adamw", {}),
    ("adam", {"weight_decay": 0.1, "decoupled_weight_decay": True}), ("amsgrad", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("adamw", {"weight_decay": 0.3, "amsgrad": True}),
    ("rmsprop", {}), ("rmsprop", {"centered": True}), ("rmsprop", {"momentum": 0.9, "weight_decay": 0.01}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "alpha": 0.3}),
    ("lion", {}), ("lion", {"weight_decay": 0.1, "beta1": 0.5}), ("lion", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("sf_adamw", {}), ("sf_adamw", {"weight_decay": 0.1, "warmup_steps": 5.0, "beta1": 0.3}),
    ("sf_adamw", {"r": 1.0, "weight_lr_power": 0.0}),
    ("sf_sgd", {}), ("sf_sgd", {"weight_decay": 0.1, "momentum": 0.5, "warmup_steps": 3.0}),
    ("ademamix", {}), ("ademamix", {"weight_decay": 0.1, "beta1": 0.3, "t_alpha_beta3": 10.0}),
    ("ademamix", {"weight_decay": 0.1, "weight_decouple": True, "beta3": 0.3, "alpha": 2.0}),
    # The rest have a GPU kernel only (on the CPU their ufunc rules are not the slow part of a step).
    ("adagrad", {}), ("adagrad", {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1}),
    ("adadelta", {}), ("adadelta", {"rho": 0.5, "weight_decay": 0.1}),
    ("nadam", {}), ("nadam", {"weight_decay": 0.1}), ("nadam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", {}), ("radam", {"weight_decay": 0.1}), ("radam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("adamax", {}), ("adamax", {"weight_decay": 0.1, "beta1": 0.3}),
]

# The optimizers with a fused Numba kernel on the CPU, from the table the dispatcher reads.
CPU_FUSED = {name for name, cls in OPTIMIZERS.items() if fused_paths(cls).numba is not None}
CPU_SETTINGS = [(name, hparams) for name, hparams in SETTINGS if name in CPU_FUSED]
# The optimizers with a fused CUDA kernel, and the settings of theirs.
GPU_FUSED = {name for name, cls in OPTIMIZERS.items() if fused_paths(cls).cuda is not None}
GPU_SETTINGS = [(name, hparams) for name, hparams in SETTINGS if name in GPU_FUSED]
