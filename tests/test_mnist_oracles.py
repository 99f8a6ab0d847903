"""MNIST runs checked against oracles written here, outside the code under test.

- The validation split: the last N training images poisoned with NaN never reach a training
  loss, and a run with `validation=N` trains bitwise as a run on the first len - N images alone.
- Hand-written training loops: a plain-SGD member is reproduced step by step by a loop in this
  file (p <- p - lr_t * g, with g from `MLP.loss_and_grads` on the batch this file works out
  from `batch_order`, and lr_t = peak x the cosine / warmup factor written here from PyTorch's
  published closed forms, not taken from `optbench.schedules`). Every network and training
  option of `MnistProblem` must change those numbers exactly as it changes a hand-built `MLP`.
- Hand evaluation: loss and accuracy recomputed here in float64 NumPy (eval mode: no dropout,
  batch norm with the running statistics; a stable log-sum-exp cross-entropy; argmax == label)
  from the reproduced weights, against what the run reports (epochs.csv, the summary).
- The tuning choice on hand-built grids: the README's rule (highest final validation accuracy,
  ties to the lower validation loss, then to the smaller lr; diverged lrs never).
- `--compare all`: the twenty optimizers the README's tables list.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.experiment import Experiment, Member, MnistProblem, choose_lrs
from optbench.mlp import MLP
from optbench.optimizers import OPTIMIZERS
from optbench.schedules import Schedule
from optbench.training import PopulationLog, batch_order

import realdata

runner = CliRunner()
HIDDEN = (16,)
SIZES = (784, *HIDDEN, 10)
BATCH = 64


@pytest.fixture(scope="module")
def data():
    x_train, y_train, x_test, y_test = realdata.load("mnist")
    return x_train[:3000], y_train[:3000], x_test[:500], y_test[:500]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def sgd_by_hand(x, y, steps, *, seed, lr, factors=None, weight_decay=0.0, shuffle=True, snapshots=(), **net_options):
    """Plain SGD written out: the batches of `batch_order` (epoch e is 1-based; the last
    partial batch dropped), g from `MLP.loss_and_grads`, p <- p - float32(lr * factor_t) * g
    (the optimizer's lr is a float32 in the update). Returns the losses and the net, and the
    (weights, running statistics) at each step in `snapshots`."""
    net = MLP(SIZES, seed=seed, **net_options)
    per_epoch = len(x) // BATCH
    losses, states = [], {}
    for t in range(steps):
        epoch, b = divmod(t, per_epoch)
        index = batch_order(len(x), epoch + 1, seed, shuffle)[b * BATCH : (b + 1) * BATCH]
        losses.append(float(net.loss_and_grads(x[index], y[index], weight_decay)))
        factor = 1.0 if factors is None else factors[t]
        net.params -= np.float32(lr * factor) * net.grads
        if t + 1 in snapshots:
            states[t + 1] = weights_of(net)
    return np.array(losses), net, states


def weights_of(net: MLP) -> dict:
    """The member's weights and batch-norm running statistics, as plain float64 arrays."""
    state = {name: np.array(value, dtype=np.float64) for name, value in net.p.items()}
    state.update({name: np.array(value[0], dtype=np.float64) for name, value in net.running.items()})
    return state


def evaluate_by_hand(state: dict, x, y, *, activation="relu", batchnorm=False, n_layers=2) -> tuple[float, float, int]:
    """Eval mode, in float64: Linear -> [BatchNorm with the running statistics, eps 1e-5 as
    torch's BatchNorm1d] -> activation, no dropout; then the mean of log-sum-exp(z) - z[label]
    with the max subtracted first, the share of argmax == label, and how many images have
    their two largest logits within 1e-4 (where float32 logits may pick the other class)."""
    h = np.asarray(x, dtype=np.float64)
    for i in range(n_layers):
        z = h @ state[f"W{i}"] + state[f"b{i}"]
        if i == n_layers - 1:
            break
        if batchnorm:
            z = (z - state[f"mean{i}"]) / np.sqrt(state[f"var{i}"] + 1e-5) * state[f"gamma{i}"] + state[f"beta{i}"]
        h = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh}[activation](z)
    shifted = z - z.max(axis=1, keepdims=True)
    loss = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]
    top2 = np.sort(z, axis=1)[:, -2:]
    return float(loss.mean()), float((z.argmax(axis=1) == y).mean()), int((top2[:, 1] - top2[:, 0] < 1e-4).sum())


def assert_accuracy(reported: float, hand: tuple, n: int) -> None:
    """The reported accuracy is the hand one, image for image, but for near-ties."""
    assert abs(round(reported * n) - round(hand[1] * n)) <= hand[2], (reported, hand)
    assert reported * n == pytest.approx(round(reported * n), abs=1e-9)  # a count of images over n


def cosine_factors(total: int, warmup: int = 0, min_ratio: float = 0.0) -> np.ndarray:
    """PyTorch's closed forms, step t = 1 .. total (the lr after t - 1 scheduler steps):
    LinearLR(start_factor=1/W, total_iters=W-1) gives 1/W + (1 - 1/W)(t-1)/(W-1) = t/W over the
    warmup; then CosineAnnealingLR(T_max = total - W - 1): eta_min + (1 - eta_min)(1 + cos(pi
    T_cur / T_max)) / 2 with T_cur = t - 1 - W."""
    out = []
    for t in range(1, total + 1):
        if t <= warmup:
            out.append(t / warmup)
        else:
            t_cur, t_max = t - 1 - warmup, total - warmup - 1
            out.append(min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t_cur / t_max)) / 2)
    return np.array(out)


def curve(result) -> np.ndarray:
    return result.curves["train_loss"].to_numpy()


# --- 1. the validation split is held out ------------------------------------------------------


def test_poisoned_validation_images_never_reach_training_and_the_run_equals_one_on_the_rest(data):
    x_train, y_train, x_test, y_test = data
    held = 500
    poisoned = x_train.copy()
    poisoned[-held:] = np.nan  # any training step that read one would turn its loss NaN
    # Two epochs (2500 // 64 = 39 steps each), two members: every batch of both epochs.
    problem = dict(hidden=HIDDEN, batch_size=BATCH, iterations=80, eval_every=40)
    plan = dict(optimizers=["sgd", "adam"], lrs=[0.05], seed=1)
    with_val = Experiment(**plan, problem=MnistProblem(**problem, validation=held)).run(
        data=(poisoned, y_train, x_test, y_test))
    alone = Experiment(**plan, problem=MnistProblem(**problem)).run(
        data=(x_train[:-held], y_train[:-held], x_test, y_test))
    losses = curve(with_val)
    assert len(losses) == 2 * 80 and np.isfinite(losses).all()
    assert set(with_val.summary["status"]) == {"finished"}
    # Bitwise the run on the first 2500 images: the same batches (drawn over 2500, not 3000).
    np.testing.assert_array_equal(losses, curve(alone))
    pd.testing.assert_series_equal(with_val.epochs["test_acc"], alone.epochs["test_acc"])
    # And the held-out images are the poisoned ones: the validation loss is NaN, the test's not.
    assert with_val.epochs["val_loss"].isna().all() and with_val.epochs["test_loss"].notna().all()


def test_validation_without_tune_reports_val_beside_test_as_a_hand_evaluation_of_the_last_images(data, tmp_path):
    # README: "`--validation` alone reports validation metrics beside the test ones"; epochs.csv
    # has val_loss, val_acc "empty without a validation split". The oracle: the member's weights
    # reproduced by the hand SGD loop on the first 2500 images, evaluated by hand on the last 500
    # training images (validation) and the 500 test images.
    x_train, y_train, x_test, y_test = data
    args = ["--opt", "sgd", "--lr", "0.1", "--train-size", "3000", "--test-size", "500", "--hidden", "16",
            "--batch-size", BATCH, "--iterations", "30", "--eval-every", "15", "--seed", "2", "--no-plot", "-q"]
    result = invoke("mnist", *args, "--validation", "500", "--out", tmp_path, "--name", "val")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "mnist" / "val"
    assert not (folder / "tuning.csv").exists()  # no tuning: the lr given is the lr trained
    epochs = pd.read_csv(folder / "epochs.csv")
    summary = pd.read_csv(folder / "summary.csv").iloc[0]
    _, _, states = sgd_by_hand(x_train[:2500], y_train[:2500], 30, seed=2, lr=0.1, snapshots=(15, 30))
    assert epochs["iteration"].tolist() == [15, 30]
    for row in epochs.itertuples():
        val = evaluate_by_hand(states[row.iteration], x_train[2500:3000], y_train[2500:3000])
        test = evaluate_by_hand(states[row.iteration], x_test, y_test)
        assert row.val_loss == pytest.approx(val[0], rel=1e-5) and row.test_loss == pytest.approx(test[0], rel=1e-5)
        assert_accuracy(row.val_acc, val, 500)
        assert_accuracy(row.test_acc, test, 500)
    assert summary["final_val_acc"] == epochs["val_acc"].iloc[-1] and summary["best_val_acc"] == epochs["val_acc"].max()
    assert summary["final_test_acc"] == epochs["test_acc"].iloc[-1]
    # Without --validation: the val columns are empty, and every image trains (batches over 3000).
    result = invoke("mnist", *args, "--out", tmp_path, "--name", "noval")
    assert result.exit_code == 0, result.output
    epochs = pd.read_csv(tmp_path / "mnist" / "noval" / "epochs.csv")
    assert epochs["val_loss"].isna().all() and epochs["val_acc"].isna().all() and epochs["test_acc"].notna().all()
    losses, _, _ = sgd_by_hand(x_train, y_train, 30, seed=2, lr=0.1)
    curves = pd.read_csv(tmp_path / "mnist" / "noval" / "curves.csv")
    np.testing.assert_allclose(curves["train_loss"].to_numpy(), losses, rtol=1e-12)


# --- 2. network and training options reach the network ----------------------------------------

OPTIONS = [
    pytest.param({"weight_decay": 0.01}, id="weight_decay"),
    pytest.param({"shuffle": False}, id="no_shuffle"),
    pytest.param({"dropout": 0.3}, id="dropout"),
    pytest.param({"activation": "sigmoid"}, id="sigmoid"),
    pytest.param({"activation": "tanh"}, id="tanh"),
    pytest.param({"init": "torch"}, id="init_torch"),
    pytest.param({"init": "xavier"}, id="init_xavier"),
    pytest.param({"init": "std"}, id="init_std"),
    pytest.param({"batchnorm": True}, id="batchnorm"),
]


@pytest.mark.parametrize("option", OPTIONS)
def test_an_mnist_option_reaches_the_network_as_on_a_hand_built_mlp(data, option):
    # The member's first three losses (the first step's loss, then two after an update) are
    # those of an MLP built here with the option, on the batches worked out here: with
    # shuffle=False the first 64, 64 next, ...; else batch_order(seed 3, epoch 1). The option
    # must matter: the same hand loop without it gives other losses.
    x_train, y_train = data[0], data[1]
    steps, seed, lr = 3, 3, 0.1
    result = Experiment(optimizers=["sgd"], lrs=[lr], seed=seed, problem=MnistProblem(
        hidden=HIDDEN, batch_size=BATCH, iterations=steps, **option)).run(data=data)
    train = {k: v for k, v in option.items() if k in ("weight_decay", "shuffle")}
    net = {k: v for k, v in option.items() if k not in train}
    expected, _, _ = sgd_by_hand(x_train, y_train, steps, seed=seed, lr=lr, **train, **net)
    default, _, _ = sgd_by_hand(x_train, y_train, steps, seed=seed, lr=lr)
    np.testing.assert_array_equal(curve(result), expected)
    assert expected[0] != default[0] and not np.allclose(expected, default, rtol=1e-4)
    if option == {"shuffle": False}:  # the first batch is the data set's first 64 images
        assert expected[0] == float(MLP(SIZES, seed=seed).loss_and_grads(x_train[:BATCH], y_train[:BATCH]))


def test_weight_decay_is_half_wd_times_the_squared_weights_in_the_first_loss(data):
    # The README: "weight decay here is an L2 term in the loss, on the weights" (0.5·wd·|W|²,
    # not on the biases): the first loss with it, less the first loss without, is that term of
    # the initial weights, summed here over W0 and W1 of a fresh MLP in float64.
    wd = 0.01
    runs = [Experiment(optimizers=["sgd"], lrs=[0.1], problem=MnistProblem(
        hidden=HIDDEN, batch_size=BATCH, iterations=1, weight_decay=w, init="torch")).run(data=data) for w in (0.0, wd)]
    net = MLP(SIZES, init="torch", seed=0)  # torch's init: non-zero biases, which must stay out
    term = 0.5 * wd * sum(float((net.p[f"W{i}"].astype(np.float64) ** 2).sum()) for i in range(2))
    assert curve(runs[1])[0] - curve(runs[0])[0] == pytest.approx(term, rel=1e-5)
    with_biases = term + 0.5 * wd * sum(float((net.p[f"b{i}"].astype(np.float64) ** 2).sum()) for i in range(2))
    assert curve(runs[1])[0] - curve(runs[0])[0] != pytest.approx(with_biases, rel=1e-5)


# The README's two tables of optimizers: the twelve of torch.optim and the eight modern ones.
README_OPTIMIZERS = {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "amsgrad", "nadam",
                     "radam", "adamax", "lion", "sf_adamw", "sf_sgd", "ademamix", "prodigy", "lamb", "adafactor", "muon"}


def test_compare_all_trains_every_built_in_optimizer(tmp_path, data):
    # Muon is left out of `all` on the surfaces only (points are not matrices); on MNIST the
    # README's "`--compare all` is one population of 20, every built-in optimizer".
    assert set(OPTIMIZERS) == README_OPTIMIZERS
    result = invoke("mnist", "--compare", "all", "--train-size", "1000", "--test-size", "200", "--hidden", "16",
                    "--batch-size", BATCH, "--iterations", "3", "--out", tmp_path, "--name", "all", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "mnist" / "all" / "summary.csv")
    assert sorted(summary["optimizer"]) == sorted(README_OPTIMIZERS)
    assert (summary["status"] == "finished").all() and summary["final_test_acc"].notna().all()
    curves = pd.read_csv(tmp_path / "mnist" / "all" / "curves.csv")
    assert (curves.groupby("optimizer").size() == 3).all()


# --- 3. evaluation: eval mode, and its numbers ---------------------------------------------------


def test_evaluation_is_in_eval_mode_and_equals_a_hand_evaluation(data):
    # With dropout 0.3 and batch norm, a train-mode evaluation (masks, the test batch's own
    # statistics) would give other numbers; the run's must be the hand evaluation with the
    # running statistics and no dropout, at every evaluation.
    x_train, y_train, x_test, y_test = data
    net = dict(dropout=0.3, batchnorm=True)
    result = Experiment(optimizers=["sgd"], lrs=[0.1], seed=4, problem=MnistProblem(
        hidden=HIDDEN, batch_size=BATCH, iterations=40, eval_every=20, **net)).run(data=data)
    losses, _, states = sgd_by_hand(x_train, y_train, 40, seed=4, lr=0.1, snapshots=(20, 40), **net)
    np.testing.assert_array_equal(curve(result), losses)  # the same weights and statistics, then
    epochs = result.epochs
    assert epochs["iteration"].tolist() == [20, 40]
    for row in epochs.itertuples():
        hand = evaluate_by_hand(states[row.iteration], x_test, y_test, batchnorm=True)
        assert row.test_loss == pytest.approx(hand[0], rel=1e-5)
        assert_accuracy(row.test_acc, hand, len(y_test))
    # The power of the check: the batch's own statistics (train mode, even without dropout) are
    # far from the running ones this early.
    state = dict(states[40])
    z = x_test.astype(np.float64) @ state["W0"] + state["b0"]
    state["mean0"], state["var0"] = z.mean(axis=0), z.var(axis=0)
    train_mode = evaluate_by_hand(state, x_test, y_test, batchnorm=True)[0]
    assert abs(train_mode - epochs["test_loss"].iloc[-1]) > 1e-3
    summary = result.summary.iloc[0]
    assert summary["final_test_acc"] == epochs["test_acc"].iloc[-1] and summary["best_test_acc"] == epochs["test_acc"].max()


# --- 4. lr schedules on MNIST -------------------------------------------------------------------


@pytest.mark.parametrize(("warmup", "min_ratio"), [(0, 0.0), (10, 0.1)])
def test_cosine_schedule_on_mnist_equals_a_hand_sgd_loop(data, warmup, min_ratio):
    x_train, y_train = data[0], data[1]
    steps, lr = 60, 0.1  # 3000 // 64 = 46 steps an epoch: the second epoch's batches too
    result = Experiment(optimizers=["sgd"], lrs=[lr], seed=5, problem=MnistProblem(
        hidden=HIDDEN, batch_size=BATCH, iterations=steps,
        schedule=Schedule("cosine", warmup=warmup, min_lr_ratio=min_ratio))).run(data=data)
    factors = cosine_factors(steps, warmup, min_ratio)
    assert factors[0] == (1 / warmup if warmup else 1) and factors[-1] == pytest.approx(min_ratio)
    expected, _, _ = sgd_by_hand(x_train, y_train, steps, seed=5, lr=lr, factors=factors)
    # float32 rounding at most: the factors here and the library's may differ in the last bit.
    np.testing.assert_allclose(curve(result), expected, rtol=1e-6)
    constant, _, _ = sgd_by_hand(x_train, y_train, steps, seed=5, lr=lr)
    assert np.abs(curve(result) - constant)[-10:].min() > 1e-4  # the schedule changed the run
    assert result.summary["schedule"].iloc[0].startswith("cosine")


# --- 5. the tuning choice -------------------------------------------------------------------------


def tuned(grid) -> pd.DataFrame:
    """`choose_lrs` on hand-built rows (optimizer, lr, final val acc, final val loss, diverged
    at, val acc at the first evaluation): evaluations at steps 5 and 10 (a member that
    diverged at step 8 has the first only, so its last evaluation scores it)."""
    chunk = [Member(row[0], OPTIMIZERS[row[0]], {}, row[1], 0) for row in grid]
    stopped = np.array([row[4] for row in grid])
    acc, loss = np.array([row[2] for row in grid]), np.array([row[3] for row in grid])
    first_acc = np.array([row[5] for row in grid])
    log = PopulationLog(np.zeros((len(grid), 10)), stopped, done=10)
    for iteration, members, val_acc in ((5, np.ones(len(grid), bool), first_acc), (10, stopped == 0, acc)):
        log.evaluations.append({
            "epoch": 1, "iteration": iteration, "members": members, "train_loss": np.where(members, 0.5, np.nan),
            "val_acc": np.where(members, val_acc, np.nan), "val_loss": np.where(members, loss, np.nan),
        })
    return choose_lrs([(chunk, log)])


def chosen(table: pd.DataFrame) -> dict:
    return {row.optimizer: row.lr for row in table[table["chosen"]].itertuples()}


def test_tuning_ties_in_accuracy_go_to_the_lower_loss_then_to_the_smaller_lr():
    # README: "the highest final validation accuracy (ties: lower validation loss, then the
    # smaller lr; diverged lrs never)". Each grid lists the winner neither first nor last.
    table = tuned([
        # adam: a tie at 0.9 broken by the loss (0.3 < 0.5); 0.8's lowest loss does not count,
        # nor 0.1's best accuracy at the first evaluation (the final one is what counts).
        ("adam", 1e-3, 0.9, 0.5, 0, 0.5), ("adam", 1e-2, 0.9, 0.3, 0, 0.5), ("adam", 1e-4, 0.8, 0.1, 0, 0.5),
        ("adam", 1e-1, 0.7, 0.8, 0, 0.99), ("adam", 3e-3, 0.9, 0.4, 0, 0.5),
        # sgd: accuracy and loss tied: the smaller lr; the lr that diverged at step 8 after the
        # best evaluation of all (0.99 at step 5) never.
        ("sgd", 0.1, 0.95, 0.2, 0, 0.5), ("sgd", 0.01, 0.95, 0.2, 0, 0.5), ("sgd", 1.0, 0.95, 0.2, 0, 0.5),
        ("sgd", 0.001, 0.99, 0.01, 8, 0.99),
        # momentum: the highest accuracy wins over a lower loss.
        ("momentum", 0.1, 0.90, 0.1, 0, 0.5), ("momentum", 0.01, 0.91, 0.9, 0, 0.5),
        ("momentum", 0.001, 0.90, 0.2, 0, 0.5),
    ])
    assert chosen(table) == {"adam": 1e-2, "sgd": 0.01, "momentum": 0.01}
    assert table.groupby("optimizer")["chosen"].sum().to_dict() == {"adam": 1, "momentum": 1, "sgd": 1}
    assert table.set_index(["optimizer", "lr"]).loc[("sgd", 0.001), "status"] == "diverged"
