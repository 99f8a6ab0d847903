"""optbench: benchmark neural-network optimizers on 2-D loss surfaces and MNIST.

Run `optbench --help`, or `python -m optbench --help`. From Python: `Experiment(...).run()`
returns the tables the CLI writes, as DataFrames.
"""

__version__ = "0.1.0"

# The names below load on first use (PEP 562), so that `import optbench` is cheap: the command's
# entry point (`optbench.__main__`) can then catch a Ctrl-C that comes while NumPy and pandas load.
_PUBLIC = {
    "OptbenchError": "optbench.errors",
    "OPTIMIZERS": "optbench.optimizers",
    "Optimizer": "optbench.optimizers",
    "make_optimizer": "optbench.optimizers",
    "Experiment": "optbench.experiment",
    "MnistProblem": "optbench.experiment",
    "Results": "optbench.experiment",
    "Schedule": "optbench.schedules",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    import importlib

    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:  # a submodule, as `optbench.modern.tensors` after `import optbench`
        try:
            value = importlib.import_module(f"optbench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"optbench.{name}":
                raise
            raise AttributeError(f"module 'optbench' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
