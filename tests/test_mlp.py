"""The hand-written MLP: backward against central finite differences, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from optbench.errors import OptbenchError
from optbench.mlp import MLP, softmax_cross_entropy


def numeric_gradient(f, params, h=1e-6):
    grad = np.zeros_like(params)
    for k in range(params.size):
        old = params[k]
        params[k] = old + h
        up = f()
        params[k] = old - h
        down = f()
        params[k] = old
        grad[k] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_backward_matches_finite_differences(activation, batchnorm, dropout):
    rng = np.random.default_rng(1)
    net = MLP((6, 5, 4, 3), activation=activation, batchnorm=batchnorm, dropout=dropout, init="xavier", seed=2, dtype=np.float64)
    x = rng.standard_normal((7, 6))
    labels = rng.integers(0, 3, 7)
    # Non-zero biases: a row that dropout and ReLU zero entirely would otherwise sit exactly on
    # the ReLU kink (z = 0), where a finite difference sees half a slope.
    net.params += 0.1 * rng.standard_normal(net.params.size)

    def loss():
        net._dropout_rng = np.random.default_rng(99)  # the same dropout mask on every call
        return float(softmax_cross_entropy(net.forward(x), labels)[0]) + 0.5 * 0.01 * sum(
            float((net.p[f"W{i}"] ** 2).sum()) for i in range(net.n_layers)
        )

    net._dropout_rng = np.random.default_rng(99)
    net.loss_and_grads(x, labels, weight_decay=0.01)
    analytic = net.grads.copy()
    numeric = numeric_gradient(loss, net.params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_cross_entropy_is_stable_and_exact():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, grad = softmax_cross_entropy(logits, np.array([0, 2]))
    # Row 1: log-sum-exp = 1000 exactly in float64, loss 0; row 2: log 3.
    assert np.isfinite(loss) and loss == pytest.approx(np.log(3) / 2)
    np.testing.assert_allclose(grad[1], (np.full(3, 1 / 3) - [0, 0, 1]) / 2)


def test_float32_throughout_and_parameter_views():
    net = MLP((784, 100, 100, 10))
    assert net.params.dtype == np.float32 and net.grads.dtype == np.float32
    assert net.params.size == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert np.shares_memory(net.p["W1"], net.params) and np.shares_memory(net.g["W1"], net.grads)
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    loss = net.loss_and_grads(x, np.array([1, 2, 3, 4]))
    assert loss.dtype == np.float32 and net.grads.any()
    # He init: weight std close to sqrt(2 / fan_in).
    assert net.p["W0"].std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)


def test_same_seed_same_weights_and_bad_options():
    assert np.array_equal(MLP((5, 4, 2), seed=3).params, MLP((5, 4, 2), seed=3).params)
    with pytest.raises(OptbenchError, match="activation"):
        MLP((5, 2), activation="gelu")
    with pytest.raises(OptbenchError, match="dropout"):
        MLP((5, 2), dropout=1.0)
