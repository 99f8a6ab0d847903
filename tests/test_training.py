"""Training on a few thousand real MNIST images must learn; runs are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from optbench.errors import OptbenchError
from optbench.mlp import MLP
from optbench.optimizers import make_optimizer
from optbench.training import batch_order, train

import realdata


@pytest.fixture(scope="module")
def small_mnist():
    x_train, y_train, x_test, y_test = realdata.load("mnist")
    return x_train[:5000], y_train[:5000], x_test[:2000], y_test[:2000]


def run(data, name, **hparams):
    net = MLP((784, 100, 100, 10), seed=0)
    log = train(net, make_optimizer(name, **hparams), *data, epochs=2, batch_size=64, seed=0)
    return log


def test_adam_learns_far_above_chance(small_mnist):
    log = run(small_mnist, "adam")
    assert not log.diverged
    assert log.evaluations[-1]["test_acc"] > 0.88  # chance is 0.10
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
    assert log.diverged and log.evaluations == []
    assert log.iterations  # what was logged is kept


def test_iterations_and_eval_every(small_mnist):
    net = MLP((784, 32, 10), seed=0)
    log = train(net, make_optimizer("adam"), *small_mnist, iterations=100, eval_every=30, batch_size=64, seed=0)
    assert [r["iteration"] for r in log.iterations] == list(range(1, 101))
    assert [e["iteration"] for e in log.evaluations] == [30, 60, 90, 100]
    # 5000 // 64 = 78 batches per epoch: iteration 79 is the first of epoch 2.
    assert log.iterations[77]["epoch"] == 1 and log.iterations[78]["epoch"] == 2
    assert all(e["samples_per_s"] > 0 and e["epoch_seconds"] > 0 for e in log.evaluations)


def test_evaluation_intervals_do_not_change_the_batches(small_mnist):
    """Intervals that cross epoch ends (the orders of every epoch an interval reaches are
    uploaded before it starts) train on exactly the batches of one long interval."""
    losses = {}
    for eval_every in (7, 100, 250):
        net = MLP((784, 32, 10), seed=0)
        log = train(net, make_optimizer("adam"), *small_mnist, iterations=250, eval_every=eval_every, batch_size=64)
        losses[eval_every] = [r["train_loss"] for r in log.iterations]
    assert len(losses[7]) == 250 and losses[7] == losses[100] == losses[250]


def test_warmup_leaves_no_trace(small_mnist, monkeypatch):
    import optbench.training as training

    def losses(warmup):
        monkeypatch.setattr(training, "WARMUP_STEPS", warmup)
        net = MLP((784, 32, 10), dropout=0.2, batchnorm=True, seed=0)
        log = train(net, make_optimizer("adam"), *small_mnist, iterations=20, batch_size=64, seed=0)
        return [r["train_loss"] for r in log.iterations], net.params.copy()

    (plain, w_plain), (warmed, w_warmed) = losses(0), losses(3)
    assert plain == warmed and np.array_equal(w_plain, w_warmed)


def test_ctrl_c_keeps_what_was_logged(small_mnist):
    def interrupt(done):
        if done == 10:
            raise KeyboardInterrupt

    net = MLP((784, 32, 10), seed=0)
    log = train(net, make_optimizer("sgd"), *small_mnist, epochs=1, batch_size=64, on_step=interrupt)
    assert log.interrupted and len(log.iterations) == 10 and log.evaluations == []


def test_cuda_graph_is_refused_for_a_numpy_network():
    rng = np.random.default_rng(0)
    x, y = rng.random((256, 784), dtype=np.float32), rng.integers(0, 10, 256)
    with pytest.raises(OptbenchError, match="CUDA graphs need the GPU"):
        train(MLP((784, 16, 10), seed=0), make_optimizer("adam"), x, y, x, y, iterations=2, cuda_graph=True)


def test_batchnorm_refresh_gathers_statistics_as_torch_batchnorm_does():
    # The oracle is torch's BatchNorm1d in train mode, fed the first layer's outputs of member 1
    # over the same batches from the same running statistics; member 0's rows stay as they were.
    torch = pytest.importorskip("torch")
    from optbench.mlp import Population

    pop = Population((12, 6, 3), seeds=[0, 1], batchnorm=True)
    rng = np.random.default_rng(3)
    pop.running["mean0"][...] = rng.standard_normal((2, 6))
    pop.running["var0"][...] = rng.uniform(0.5, 2, (2, 6))
    before = {name: value.copy() for name, value in pop.running.items()}
    batches = [rng.standard_normal((16, 12)).astype(np.float32) for _ in range(5)]
    pop.training = False
    pop.refresh_batchnorm(batches, 1)
    assert pop.training is False  # put back

    bn = torch.nn.BatchNorm1d(6, momentum=0.1, eps=1e-5)
    bn.running_mean.copy_(torch.from_numpy(before["mean0"][1]))
    bn.running_var.copy_(torch.from_numpy(before["var0"][1]))
    bn.train()
    with torch.no_grad():
        for x in batches:
            bn(torch.from_numpy(x @ pop.p["W0"][1] + pop.p["b0"][1]))
    np.testing.assert_allclose(pop.running["mean0"][1], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pop.running["var0"][1], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(pop.running["mean0"][1], before["mean0"][1])
    np.testing.assert_array_equal(pop.running["mean0"][0], before["mean0"][0])
    np.testing.assert_array_equal(pop.running["var0"][0], before["var0"][0])


def test_schedule_free_with_batchnorm_is_evaluated_with_statistics_gathered_at_its_average(small_mnist, monkeypatch):
    # schedulefree's README: before evaluating at x, run training batches through the net at x in
    # train mode. Only the members that answer with other weights are refreshed, at each
    # evaluation, and the training itself is untouched by how often it is evaluated.
    from optbench.mlp import Population
    from optbench.training import BATCHNORM_REFRESH_BATCHES, train_population

    calls = []
    original = Population.refresh_batchnorm

    def spy(self, batches, member):
        calls.append((member, len(batches), self.params[member].copy()))
        original(self, batches, member)

    monkeypatch.setattr(Population, "refresh_batchnorm", spy)
    x_train, y_train, x_test, y_test = small_mnist
    losses = {}
    for eval_every in (20, 60):
        calls.clear()
        pop = Population((784, 16, 10), seeds=[0, 0, 0], batchnorm=True)
        opts = [make_optimizer("adam"), make_optimizer("sf_adamw"), make_optimizer("sgd", lr=0.05)]
        log = train_population(pop, opts, x_train, y_train, {"test": (x_test, y_test)}, iterations=60,
                               eval_every=eval_every, batch_size=32)
        losses[eval_every] = log.losses.copy()
        assert [member for member, _, _ in calls] == [1] * (60 // eval_every)
        assert all(n == BATCHNORM_REFRESH_BATCHES for _, n, _ in calls)
        # Refreshed at the average x, not at the point y it trains at (restored afterwards).
        assert not np.array_equal(calls[-1][2], pop.params[1])
    np.testing.assert_array_equal(losses[20], losses[60])
