"""optbench: benchmark neural-network optimizers on 2-D loss surfaces and MNIST.

Run `optbench --help`, or `python -m optbench --help`.
"""

from optbench.errors import OptbenchError
from optbench.optimizers import OPTIMIZERS, Optimizer, make_optimizer

__all__ = ["OPTIMIZERS", "OptbenchError", "Optimizer", "make_optimizer"]
__version__ = "0.1.0"
