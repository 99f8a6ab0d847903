"""optbench: benchmark neural-network optimizers on 2-D loss surfaces and MNIST.

Run `optbench --help`, or `python -m optbench --help`. From Python: `Experiment(...).run()`
returns the tables the CLI writes, as DataFrames.
"""

__version__ = "0.1.0"

from optbench.errors import OptbenchError  # noqa: E402
from optbench.optimizers import OPTIMIZERS, Optimizer, make_optimizer  # noqa: E402
from optbench.experiment import Experiment, MnistProblem, Results  # noqa: E402
from optbench.schedules import Schedule  # noqa: E402

__all__ = ["OPTIMIZERS", "Experiment", "MnistProblem", "OptbenchError", "Optimizer", "Results", "Schedule",
           "make_optimizer"]
