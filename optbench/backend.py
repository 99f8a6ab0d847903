"""The array module behind the maths: NumPy on the CPU, CuPy on the GPU.

Code that computes takes `xp` from its data, so one definition runs on both in one process.
"""

from __future__ import annotations

import numpy as np


def get_array_module(*arrays):
    """Return cupy when any argument is a CuPy array, else numpy (CuPy need not be installed)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """A host copy of a NumPy or CuPy array."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
