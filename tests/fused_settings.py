"""The settings the fused-kernel tests run: every branch of every fused kernel (CPU and GPU)."""

SETTINGS = [
    ("sgd", {}), ("sgd", {"weight_decay": 0.01}), ("momentum", {}), ("momentum", {"dampening": 0.3, "weight_decay": 0.1}),
    ("nesterov", {}), ("nesterov", {"momentum": 0.5, "weight_decay": 0.02}),
    ("adam", {}), ("adam", {"weight_decay": 0.1}), ("adam", {"beta1": 0.3}), ("amsgrad", {}), ("adamw", {}),
    ("adamw", {"weight_decay": 0.3, "amsgrad": True}),
    ("rmsprop", {}), ("rmsprop", {"centered": True}), ("rmsprop", {"momentum": 0.9, "weight_decay": 0.01}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "alpha": 0.3}),
]
