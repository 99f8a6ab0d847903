"""Populations: a member trains as it would alone, diverging members are isolated, tuning never
reads the test set, seeds differ and reproduce; the experiment's bad input; its Python API."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from optbench import experiment
from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.experiment import TUNE_FACTORS, Experiment, MnistProblem, learning_rates
from optbench.mlp import MLP, Population, initial_weights
from optbench.optimizers import make_optimizer
from optbench.training import Shards, batch_order, shards_of, train_population

import realdata

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


@pytest.fixture(scope="module")
def data():
    x_train, y_train, x_test, y_test = realdata.load("mnist")
    return x_train[:3000], y_train[:3000], x_test[:500], y_test[:500]


SMALL = MnistProblem(hidden=(32, 16), batch_size=64, iterations=100, eval_every=50)


def curve(result, optimizer, lr, seed):
    c = result.curves
    return c[(c["optimizer"] == optimizer) & (c["lr"] == lr) & (c["seed"] == seed)]["train_loss"].to_numpy()


def test_a_member_trains_in_a_population_as_it_would_alone(data):
    """Bitwise on the CPU where BLAS computes the same products: each member's products are the
    2-D GEMMs it computes alone (NumPy's stacked matmul calls the same sgemm per member), and
    its update reads only its own row. A population of two or more trains its shards with
    one-thread BLAS (`training.Shards`), so the population of one is run so too; with the
    machine's two BLAS threads it agrees to float32 rounding at the start of training."""
    together = Experiment(optimizers=["adam", "momentum", "rmsprop"], lrs=[1e-3, 1e-2], seeds=2, problem=SMALL).run(data=data)
    assert len(together.summary) == 3 * 2 * 2
    for optimizer, lr, seed in (("adam", 1e-3, 0), ("momentum", 1e-2, 1), ("rmsprop", 1e-3, 1)):
        with threadpool_limits(1, "blas"):
            alone = Experiment(optimizers=[optimizer], lrs=[lr], seed=seed, problem=SMALL).run(data=data)
        assert len(curve(alone, optimizer, lr, seed)) == 100
        assert np.array_equal(curve(together, optimizer, lr, seed), curve(alone, optimizer, lr, seed))
        row = lambda r: r.summary.set_index(["optimizer", "lr", "seed"]).loc[(optimizer, lr, seed)]  # noqa: E731
        assert row(together)["final_test_acc"] == row(alone)["final_test_acc"]
        two_threads = Experiment(optimizers=[optimizer], lrs=[lr], seed=seed, problem=SMALL).run(data=data)
        np.testing.assert_allclose(curve(two_threads, optimizer, lr, seed)[:5], curve(together, optimizer, lr, seed)[:5], rtol=1e-5)


def test_final_weights_of_a_member_equal_its_population_of_one(data):
    x, y = data[0], data[1]
    specs = [("adam", 1e-3, 0), ("nadam", 2e-3, 0), ("sgd", 0.05, 1), ("adadelta", 1.0, 1)]
    sizes = (784, 32, 10)
    pop = Population(sizes, [s for _, _, s in specs])
    train_population(pop, [make_optimizer(n, lr=lr) for n, lr, _ in specs], x, y, {}, iterations=60, batch_size=64,
                     group_seeds=[0, 1])
    for k, (name, lr, seed) in enumerate(specs):
        alone = Population(sizes, [seed])
        with threadpool_limits(1, "blas"):  # as the population's shards run
            train_population(alone, [make_optimizer(name, lr=lr)], x, y, {}, iterations=60, batch_size=64)
        assert np.array_equal(pop.rows[k], alone.rows[0]), name


def test_a_diverging_member_is_frozen_and_leaves_the_others_bitwise_unchanged(data):
    x, y = data[0], data[1]
    sizes = (784, 32, 16, 10)  # two hidden layers: lr 1e5 overflows within a few steps
    names = [("adam", 1e-3), ("sgd", 1e5), ("momentum", 0.01)]
    pop = Population(sizes, [0, 0, 0])
    log = train_population(pop, [make_optimizer(n, lr=lr) for n, lr in names], x, y, {"test": data[2:]},
                           iterations=80, eval_every=20, batch_size=64)
    assert log.diverged_at[1] > 0 and log.diverged_at[0] == log.diverged_at[2] == 0
    stopped = int(log.diverged_at[1])
    assert np.isnan(log.losses[1, stopped:]).all() and not math.isfinite(log.losses[1, stopped - 1])
    # Frozen: its rows are the weights that gave the non-finite loss, trained alone that far.
    alone = Population(sizes, [0])
    with threadpool_limits(1, "blas"):  # as the population's shards run
        train_population(alone, [make_optimizer("sgd", lr=1e5)], x, y, {}, iterations=stopped - 1, batch_size=64)
    np.testing.assert_array_equal(pop.rows[1], alone.rows[0])
    # The others train exactly as without it.
    without = Population(sizes, [0, 0])
    log2 = train_population(without, [make_optimizer("adam", lr=1e-3), make_optimizer("momentum", lr=0.01)], x, y,
                            {"test": data[2:]}, iterations=80, eval_every=20, batch_size=64)
    np.testing.assert_array_equal(pop.rows[[0, 2]], without.rows)
    np.testing.assert_array_equal(log.losses[[0, 2]], log2.losses)
    assert [r["test_acc"][[0, 2]].tolist() for r in log.evaluations] == [r["test_acc"].tolist() for r in log2.evaluations]
    # The diverged member is not evaluated after it diverged.
    assert all(math.isnan(r["test_acc"][1]) for r in log.evaluations if r["iteration"] >= stopped)


class CountingSGD:
    """A user's rule that keeps a step counter on itself, and raises at step `fail_at`."""

    name = "counting"

    def __init__(self, lr=0.05, fail_at=0):
        self.lr, self.fail_at, self.t = lr, fail_at, 0

    def init(self, p):
        return {}

    def update(self, p, g, state):
        self.t += 1
        if self.t == self.fail_at:
            raise ValueError(f"a bug at step {self.t}")
        p -= self.lr * g


def test_a_rule_that_raises_fails_alone_and_the_others_train_as_without_it(data):
    x, y = data[0], data[1]
    sizes = (784, 32, 10)
    pop = Population(sizes, [0, 0, 0])
    log = train_population(pop, [make_optimizer("adam"), CountingSGD(fail_at=7), make_optimizer("sgd", lr=0.05)],
                           x, y, {"test": data[2:]}, iterations=40, eval_every=20, batch_size=64)
    # The warm-up ran on copies, so the rule's own counter says 7 at the run's 7th step.
    assert log.failures == {1: "ValueError: a bug at step 7"} and int(log.diverged_at[1]) == 7
    assert log.status(1) == "failed" and not log.diverged(1) and log.status(0) == "finished"
    without = Population(sizes, [0, 0])
    log2 = train_population(without, [make_optimizer("adam"), make_optimizer("sgd", lr=0.05)], x, y,
                            {"test": data[2:]}, iterations=40, eval_every=20, batch_size=64)
    np.testing.assert_array_equal(pop.rows[[0, 2]], without.rows)
    np.testing.assert_array_equal(log.losses[[0, 2]], log2.losses)
    # A rule with a counter of its own trains as a plain SGD does: the warm-up did not advance it.
    same = Population(sizes, [0, 0])
    log3 = train_population(same, [CountingSGD(), make_optimizer("sgd", lr=0.05)], x, y, {}, iterations=40, batch_size=64)
    np.testing.assert_array_equal(log3.losses[0], log3.losses[1])


def test_a_subclass_of_a_built_in_rule_that_fails_is_isolated_too(data):
    # A user's subclass that changes step_scalars keeps the fused update; it runs apart from the
    # built-ins' launch, so its failure stops it alone. Unfailing, it trains bitwise as Adam does.
    from optbench.optimizers import Adam

    class FlakyAdam(Adam):
        name = "flaky"
        fail_at = 9

        def step_scalars(self, state):
            if state["step"] == self.fail_at:
                raise RuntimeError("flaky")
            return super().step_scalars(state)

    x, y = data[0], data[1]
    sizes = (784, 32, 10)
    pop = Population(sizes, [0, 0, 0])
    steady = FlakyAdam()
    steady.fail_at = -1
    log = train_population(pop, [make_optimizer("adam"), FlakyAdam(), steady], x, y, {}, iterations=30, batch_size=64)
    assert log.failures == {1: "RuntimeError: flaky"} and int(log.diverged_at[1]) == 9
    np.testing.assert_array_equal(log.losses[0], log.losses[2])
    np.testing.assert_array_equal(pop.rows[0], pop.rows[2])


def test_a_model_trained_alone_whose_rule_raises_says_so():
    from optbench.training import train

    x = np.random.default_rng(0).standard_normal((256, 784)).astype(np.float32)
    y = np.arange(256) % 10
    with pytest.raises(OptbenchError, match="its update raised ValueError: a bug at step 3 at step 3"):
        train(MLP((784, 16, 10)), CountingSGD(fail_at=3), x, y, x[:64], y[:64], iterations=10, batch_size=64)


def test_a_failed_member_is_marked_in_the_tables_and_warned_of(data):
    warnings = []

    class Listener(experiment.Reporter):
        def warn(self, message):
            warnings.append(message)

    result = Experiment(optimizers=[CountingSGD, "sgd"], hp=["counting.fail_at=5"], problem=SMALL).run(
        Listener(), data=data)
    status = result.summary.set_index("optimizer")["status"]
    assert status["counting"] == "failed" and status["sgd"] == "finished"
    assert result.summary["optimizer"].tolist() == ["sgd", "counting"]  # what stopped early goes last
    assert result.aggregate.set_index("optimizer").loc["counting", "status"] == "1 failed"
    assert len(warnings) == 1 and "ValueError: a bug at step 5" in warnings[0] and "\n" not in warnings[0]


def test_a_diverged_member_is_marked_in_the_tables(data):
    result = Experiment(optimizers=["sgd"], lrs=[1e5, 0.01], problem=SMALL).run(data=data)
    status = result.summary.set_index("lr")["status"]
    assert status[1e5] == "diverged" and status[0.01] == "finished"
    assert result.summary["diverged"].tolist() == [False, True]  # diverged last
    assert result.aggregate.set_index("lr").loc[1e5, "status"] == "1 diverged"


def test_members_that_diverge_before_their_first_evaluation_leave_the_epoch_table_numeric(data, tmp_path):
    # Two seeds of sgd at lr 1e5 diverge within the first 50 steps, before any evaluation: the
    # epoch table holds adam's rows alone, still numbers, and its plots draw the seeds' bands.
    result = Experiment(optimizers=["sgd", "adam"], lrs=[1e5, 1e-3], seeds=2, problem=SMALL).run(data=data)
    summary = result.summary
    assert (summary.loc[(summary["optimizer"] == "sgd") & (summary["lr"] == 1e5), "status"] == "diverged").sum() == 2
    epochs = result.epochs
    assert epochs["test_acc"].dtype == np.float64 and epochs["iteration"].dtype == np.int64
    assert not ((epochs["optimizer"] == "sgd") & (epochs["lr"] == 1e5)).any()
    written = result.write(tmp_path / "run")
    assert {"accuracy.png", "loss.png"} <= {p.name for p in written}


def test_tuning_never_reads_the_test_set(data):
    problem = MnistProblem(hidden=(32,), batch_size=64, iterations=60, validation=1000)
    clean = Experiment(optimizers=["adam", "sgd"], tune=True, problem=problem).run(data=data)
    x_test = np.full_like(data[2], np.nan)  # poisoned: any use would change a number
    poisoned = Experiment(optimizers=["adam", "sgd"], tune=True, problem=problem).run(data=(*data[:2], x_test, data[3]))
    pd.testing.assert_frame_equal(clean.tuning, poisoned.tuning)
    assert len(clean.tuning) == 2 * len(TUNE_FACTORS) and clean.tuning.groupby("optimizer")["chosen"].sum().tolist() == [1, 1]
    # The chosen lr is the best by validation accuracy, and it is what the final runs trained at.
    for optimizer, grid in clean.tuning.groupby("optimizer"):
        chosen = grid[grid["chosen"]].iloc[0]
        assert chosen["final_val_acc"] == grid[~grid["diverged"]]["final_val_acc"].max()
        assert clean.summary.set_index("optimizer").loc[optimizer, "lr"] == chosen["lr"]
    # The poisoned test set was in use after tuning: NaN logits score no better than chance.
    assert (poisoned.summary["final_test_acc"] < 0.2).all() and (clean.summary["final_test_acc"] > 0.5).all()


def test_tuning_grid_is_centred_on_each_default():
    grids = Experiment(optimizers=["adam", "sgd"], tune=True).tuning_lrs()
    assert grids["adam"][3] == 1e-3 and grids["sgd"][3] == 0.01
    assert grids["adam"][0] == pytest.approx(1e-3 / 10**1.5) and grids["adam"][-1] == pytest.approx(1e-3 * 10**1.5)


def test_seeds_differ_and_the_same_seed_reproduces(data):
    a = Experiment(optimizers=["adam"], seeds=2, seed=3, problem=SMALL).run(data=data)
    b = Experiment(optimizers=["adam"], seeds=2, seed=3, problem=SMALL).run(data=data)
    assert sorted(a.summary["seed"]) == [3, 4]
    assert not np.array_equal(curve(a, "adam", 1e-3, 3), curve(a, "adam", 1e-3, 4))
    assert np.array_equal(curve(a, "adam", 1e-3, 3), curve(b, "adam", 1e-3, 3))
    assert np.array_equal(curve(a, "adam", 1e-3, 4), curve(b, "adam", 1e-3, 4))
    assert not np.array_equal(initial_weights((784, 32, 10), "he", 3), initial_weights((784, 32, 10), "he", 4))
    assert not np.array_equal(batch_order(3000, 1, 3), batch_order(3000, 1, 4))


def test_max_population_splits_the_run_and_changes_no_number(data):
    # 2 optimizers x 3 seeds in two chunks of 3: the second seed's pair is cut across them.
    plan = dict(optimizers=["adam", "sgd"], seeds=3, problem=SMALL)
    whole = Experiment(**plan).run(data=data)
    split = Experiment(**plan, max_population=4).run(data=data)
    assert [(c["members"], c["reason"]) for c in split.manifest["populations"]] == [(3, "--max-population"), (3, "--max-population")]
    assert [(c["members"], c["reason"]) for c in whole.manifest["populations"]] == [(6, "none")]
    timing = ["epoch_seconds", "samples_per_s", "mean_epoch_seconds"]
    pd.testing.assert_frame_equal(whole.curves, split.curves)
    pd.testing.assert_frame_equal(whole.epochs.drop(columns=timing[:2]), split.epochs.drop(columns=timing[:2]))
    pd.testing.assert_frame_equal(whole.summary.drop(columns=timing[1:]), split.summary.drop(columns=timing[1:]))


@pytest.fixture
def ctrl_c_at_second_population(monkeypatch):
    """Ctrl-C as the second population starts (in its warm-up, outside the training loop)."""
    import optbench.experiment as experiment

    real, calls = experiment.train_population, []

    def second_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_population", second_interrupted)


def test_ctrl_c_between_populations_keeps_every_member_marked(data, ctrl_c_at_second_population):
    result = Experiment(optimizers=["adam", "sgd"], seeds=2, problem=SMALL, max_population=2).run(data=data)
    assert result.status == "interrupted"
    status = result.summary.set_index(["optimizer", "seed"])["status"]
    assert status[("adam", 0)] == status[("sgd", 0)] == "finished"
    assert status[("adam", 1)] == status[("sgd", 1)] == "interrupted"  # never started, still listed
    assert np.isnan(result.summary.set_index(["optimizer", "seed"]).loc[("adam", 1), "final_test_acc"])
    assert result.aggregate.set_index("optimizer").loc["adam", "status"] == "1 interrupted"


def test_ctrl_c_while_tuning_keeps_the_grid_trained_so_far(data, ctrl_c_at_second_population):
    problem = MnistProblem(hidden=(16,), batch_size=64, iterations=20, validation=500)
    result = Experiment(optimizers=["adam"], tune=True, problem=problem, max_population=4).run(data=data)
    assert result.status == "interrupted" and len(result.tuning) == 4  # the first chunk of the 7-lr grid


def test_torch_init_is_pytorch_linear_default():
    sizes = (784, 512, 10)
    flat = initial_weights(sizes, "torch", 0)
    net = MLP(sizes, init="torch")
    assert np.array_equal(net.params, flat)
    for i, fan_in in enumerate(sizes[:-1]):
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias rule of nn.Linear
        for name in (f"W{i}", f"b{i}"):
            values = net.p[name]
            assert values.min() >= -bound and values.max() <= bound
        assert net.p[f"W{i}"].std() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # uniform's std
        assert net.p[f"b{i}"].any()


def test_no_shuffle_trains_on_the_data_sets_order(data):
    x, y = data[0], data[1]
    net = MLP((784, 16, 10))  # the same initial weights as the population's member (seed 0)
    pop = Population((784, 16, 10), [0])
    log = train_population(pop, [make_optimizer("sgd")], x, y, {}, iterations=2, batch_size=64, shuffle=False)
    first = float(net.loss_and_grads(x[:64], y[:64]))  # the first 64 images, in order
    assert log.losses[0, 0] == first
    assert np.array_equal(batch_order(10, 3, 7, shuffle=False), np.arange(10))


def test_learning_rate_precedence():
    assert learning_rates({"lr": 0.5}, [0.1, 0.2], 0.01) == [0.5]  # --hp lr= wins
    assert learning_rates({}, [0.1, 0.2], 0.01) == [0.1, 0.2]  # then every --lr
    assert learning_rates({}, [], 0.01) == [0.01]  # then the table or the class default


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seeds", "0"], "--seeds"),
        (["--seeds", "-2"], "--seeds"),
        (["--lr", "0"], "invalid --lr 0.0"),
        (["--lr", "-1e-3"], "invalid --lr"),
        (["--lr", "nan"], "invalid --lr nan"),
        (["--lr", "inf"], "invalid --lr inf"),
        (["--validation", "60000"], "--validation 60000"),
        (["--validation", "3000", "--train-size", "3000"], "--validation 3000"),
        (["--max-population", "0"], "--max-population"),
        (["--tune", "--lr", "0.1"], "--tune or --lr"),
        (["--init", "kaiming"], "he, xavier, std, torch"),
        (["--tune", "--train-size", "5000"], "pass a smaller --validation N"),
        (["--train-size", "70000"], "60,000 training images"),
        (["--test-size", "10001"], "10,000 test images"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(tmp_path, args, fragment):
    result = invoke("mnist", *args, "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "mnist").exists()


def test_tune_and_seeds_from_the_cli(tmp_path, data):
    result = invoke("mnist", "--opt", "adam", "--tune", "--seeds", "2", "--validation", "500", "--train-size", "3000",
                    "--test-size", "500", "--hidden", "32", "--batch-size", "64", "--iterations", "40",
                    "--out", tmp_path, "--name", "t", "--no-plot")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "mnist" / "t"
    tuning = pd.read_csv(folder / "tuning.csv")
    assert len(tuning) == 7 and tuning["chosen"].sum() == 1 and set(tuning["seed"]) == {0}
    summary = pd.read_csv(folder / "summary.csv")
    assert sorted(summary["seed"]) == [0, 1] and set(summary["lr"]) == {tuning[tuning["chosen"]]["lr"].iloc[0]}
    assert summary["final_val_acc"].notna().all() and summary["final_test_acc"].notna().all()
    aggregate = pd.read_csv(folder / "aggregate.csv")
    assert aggregate["seeds"].tolist() == [2] and "±" in result.output and "Tuning" in result.output


def test_the_readme_notebook_example_runs(data, monkeypatch):
    """The README's Python API example, run as written (on the real MNIST it names)."""
    text = README.read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its API example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    result = namespace["result"]
    assert set(result.summary["optimizer"]) == {"signsgd", "adam"}
    assert result.aggregate["seeds"].tolist() == [5, 5]
    assert {"final_test_acc_mean", "final_test_acc_std"} <= set(result.aggregate.columns)


def test_shards_split_a_population_over_the_cores(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert shards_of(Population((4, 3, 2), list(range(10)))) == [slice(0, 2), slice(2, 5), slice(5, 8), slice(8, 10)]
    assert shards_of(Population((4, 3, 2), [0, 1])) == [slice(0, 1), slice(1, 2)]
    assert shards_of(Population((4, 3, 2), [0])) == [slice(0, 1)]
    with Shards(Population((4, 3, 2), list(range(10)))) as shards:
        assert shards.map(lambda s: (s.start, s.stop)) == [(0, 2), (2, 5), (5, 8), (8, 10)]


def test_chunks_are_balanced_and_leave_no_population_of_one(data):
    result = Experiment(optimizers=["adam", "sgd", "adamax", "nadam", "radam"], problem=SMALL, max_population=4).run(data=data)
    assert sorted(c["members"] for c in result.manifest["populations"]) == [2, 3]


class _Sign:
    def __init__(self, lr=1e-3):
        self.lr = lr

    def init(self, p):
        return {}

    def update(self, p, g, state):
        p -= self.lr * np.sign(g)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"optimizers": ["sgd", _Sign()]}, "pass the class _Sign itself"),
    ({"optimizers": [42]}, "got 42"),
    ({"optimizers": [dict]}, "dict is not an optimizer class"),
    ({"problem": None}, "invalid problem None"),
    ({"problem": MnistProblem(hidden=32)}, "invalid hidden 32"),
    ({"problem": MnistProblem(hidden="32,32")}, "invalid hidden '32,32'"),
    ({"problem": MnistProblem(schedule="cosine")}, "a Schedule"),
    ({"problem": MnistProblem(batch_size=1.5)}, "--batch-size 1.5 (a whole number"),
    ({"problem": MnistProblem(iterations=2.5)}, "--iterations 2.5"),
    ({"problem": MnistProblem(weight_decay=float("nan"))}, "--weight-decay nan"),
    ({"problem": MnistProblem(target=97)}, "9700 % (--target takes percent"),
    ({"seeds": np.int64(0)}, "--seeds 0"),
    ({"max_population": 2.5}, "--max-population 2.5"),
    ({"optimizers": ["sf_sgd"], "hp": ["warmup_steps=inf"]}, "warmup_steps inf"),
])
def test_the_python_api_refuses_bad_settings_with_one_line(settings, fragment):
    # A notebook's mistakes: an OptbenchError that says what is wrong, not a TypeError from deep inside.
    with pytest.raises(OptbenchError) as excinfo:
        Experiment(**settings).check()
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_the_python_api_takes_one_name_one_hp_one_lr_and_numpy_numbers():
    plan = Experiment(optimizers="adam", hp="adam.beta1=0.8", lrs=0.01, seeds=np.int64(2), seed=np.int64(1))
    plan.check()
    assert [(m.optimizer, m.lr, m.seed, m.hparams) for m in plan.members()] == [
        ("adam", 0.01, 1, {"beta1": 0.8}), ("adam", 0.01, 2, {"beta1": 0.8})]
    Experiment(lrs=[np.float32(1e-3)]).check()


def test_a_reporter_hears_each_population_and_can_keep_it_on_disk(data, tmp_path):
    # The README's checkpoint: `written` is given the tables as each population finishes.
    from optbench.experiment import Reporter

    class Checkpoint(Reporter):
        def __init__(self):
            self.seen = []

        def written(self, results):
            self.seen.append(len(results.summary[results.summary["status"] == "finished"]))
            results.write(tmp_path / "run", plot=False)

    reporter = Checkpoint()
    result = Experiment(optimizers=["adam", "sgd"], max_population=1, problem=SMALL).run(reporter, data=data)
    assert reporter.seen == [1, 2] and result.status == "finished"
    on_disk = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert sorted(on_disk["optimizer"]) == ["adam", "sgd"] and (on_disk["status"] == "finished").all()
