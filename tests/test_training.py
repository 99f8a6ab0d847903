"""Training on a few thousand real MNIST images must learn; runs are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from optbench import datasets
from optbench.errors import OptbenchError
from optbench.mlp import MLP
from optbench.optimizers import make_optimizer
from optbench.training import batch_order, train


@pytest.fixture(scope="module")
def small_mnist():
    try:
        x_train, y_train, x_test, y_test = datasets.load("mnist")
    except OptbenchError as exc:
        pytest.skip(f"real MNIST not available here: {exc}")
    return x_train[:5000], y_train[:5000], x_test[:2000], y_test[:2000]


def run(data, name, **hparams):
    net = MLP((784, 100, 100, 10), seed=0)
    log = train(net, make_optimizer(name, **hparams), *data, epochs=2, batch_size=64, seed=0)
    return log


def test_adam_learns_far_above_chance(small_mnist):
    log = run(small_mnist, "adam")
    assert not log.diverged
    assert log.epochs[-1]["test_acc"] > 0.88  # chance is 0.10
    assert log.iterations[-1]["train_loss"] < log.iterations[0]["train_loss"] / 3
    assert len(log.iterations) == 2 * (5000 // 64)


def test_same_seed_same_numbers(small_mnist):
    a, b = run(small_mnist, "momentum", lr=0.01), run(small_mnist, "momentum", lr=0.01)
    assert [r["train_loss"] for r in a.iterations] == [r["train_loss"] for r in b.iterations]


def test_batches_depend_on_seed_and_epoch_only():
    assert np.array_equal(batch_order(100, 3, 7), batch_order(100, 3, 7))
    assert not np.array_equal(batch_order(100, 3, 7), batch_order(100, 4, 7))
    assert sorted(batch_order(100, 1, 0)) == list(range(100))


def test_divergence_stops_and_is_marked(small_mnist):
    log = run(small_mnist, "sgd", lr=1e6)
    assert log.diverged and log.epochs == []
    assert log.iterations  # what was logged is kept
