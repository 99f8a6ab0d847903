"""Time to target, against hand-built evaluation curves, and as the MNIST command reports it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.spread import aggregate
from optbench.targets import cumulative_seconds, first_reached, member_targets


def test_the_first_evaluation_at_or_past_the_target():
    # Evaluations every 100 steps at 1,000 samples/s with batches of 10: one second per interval.
    iterations = [100, 200, 300, 400]
    seconds = cumulative_seconds(iterations, [1000.0] * 4, 10)
    np.testing.assert_allclose(seconds, [1.0, 2.0, 3.0, 4.0])
    accuracy = [0.90, 0.969, 0.97, 0.96]  # reached exactly at 300, lost again at 400
    assert first_reached(iterations, accuracy, seconds, 0.97, above=True) == (300.0, 3.0)
    assert np.isnan(first_reached(iterations, accuracy, seconds, 0.98, above=True)[0])
    loss = [0.5, np.nan, 0.2, 0.1]  # a NaN (diverged) never counts as reached
    assert first_reached(iterations, loss, seconds, 0.25, above=False) == (300.0, 3.0)
    assert np.isnan(first_reached(iterations, loss, seconds, None, above=False)[1])


def test_a_non_finite_value_never_meets_a_target():
    # A loss that overflowed to -inf is below any loss target, and an inf "accuracy" above any
    # accuracy target: neither is a run that got there.
    assert first_reached([10, 20, 30], [np.nan, -np.inf, 0.5], [1.0, 2.0, 3.0], 0.6, above=False) == (30.0, 3.0)
    assert first_reached([10, 20], [np.inf, 0.98], [1.0, 2.0], 0.97, above=True) == (20.0, 2.0)


def test_rates_that_change_between_intervals_add_up():
    frame = pd.DataFrame({"iteration": [50, 150], "samples_per_s": [500.0, 2000.0], "test_acc": [0.5, 0.99],
                          "train_loss": [1.0, 0.05]})
    row = member_targets(frame, batch_size=20, accuracy=0.97, loss=0.5)
    # 50 steps x 20 / 500 = 2 s, then 100 x 20 / 2000 = 1 s.
    assert row["steps_to_target"] == 150 and row["seconds_to_target"] == pytest.approx(3.0)
    assert row["steps_to_loss"] == 150 and row["target_acc"] == 0.97


def test_aggregate_takes_the_median_over_the_seeds_that_reached_it():
    base = {"optimizer": "adam", "device": "cpu", "lr": 1e-3, "final_test_acc": 0.97, "best_test_acc": 0.97,
            "final_train_loss": 0.1, "mean_epoch_seconds": 1.0, "samples_per_s": 1.0, "diverged": False,
            "status": "finished", "steps_to_loss": np.nan, "seconds_to_loss": np.nan}
    summary = pd.DataFrame([{**base, "steps_to_target": s, "seconds_to_target": s / 100} for s in (100, 300, np.nan)])
    row = aggregate(summary).iloc[0]
    assert row["steps_to_target_median"] == 200 and row["reached_target"] == 2 and row["reached_loss"] == 0


runner = CliRunner()


def test_mnist_reports_time_to_target_in_its_summary(tmp_path):
    result = runner.invoke(app, ["mnist", "--opt", "adam", "--iterations", "150", "--eval-every", "50",
                                 "--train-size", "5000", "--test-size", "1000", "--target", "80", "--target-loss", "0.6",
                                 "--no-plot", "--name", "run", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "mnist" / "run" / "summary.csv").iloc[0]
    epochs = pd.read_csv(tmp_path / "mnist" / "run" / "epochs.csv")
    first = epochs.loc[epochs["test_acc"] >= 0.80, "iteration"].min()  # the oracle: the evaluations themselves
    assert summary["target_acc"] == 0.80 and summary["steps_to_target"] == first
    assert summary["seconds_to_target"] > 0
    # The loss target: the train loss checked is the mean over each evaluation interval (README),
    # worked out here from every iteration's loss in curves.csv, not read from the summary's source.
    curves = pd.read_csv(tmp_path / "mnist" / "run" / "curves.csv")
    assert sorted(curves["iteration"]) == list(range(1, 151))
    bounds = [0, *epochs["iteration"]]
    means = [curves.loc[(curves["iteration"] > a) & (curves["iteration"] <= b), "train_loss"].mean()
             for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_allclose(epochs["train_loss"], means, rtol=1e-6)
    reached = [b for b, mean in zip(bounds[1:], means) if mean <= 0.6]
    assert reached, means  # the run gets there within its 150 steps
    assert summary["target_loss"] == 0.6 and summary["steps_to_loss"] == reached[0]
    # Its seconds are the training seconds up to that evaluation, so they order as the steps do.
    assert summary["seconds_to_loss"] > 0
    assert (summary["seconds_to_loss"] > summary["seconds_to_target"]) == (reached[0] > first)


@pytest.mark.parametrize(("dataset", "default"), [("mnist", 0.97), ("fashion", 0.85)])
def test_the_default_accuracy_target_is_97_percent_on_mnist_and_85_on_fashion(tmp_path, dataset, default):
    # README: "--target PCT ... (default 97 on MNIST, 85 on Fashion-MNIST)". Without --target, the
    # summary a user reads names that target, and its steps are the first evaluation reaching it.
    import realdata
    from optbench.experiment import MnistProblem

    realdata.load(dataset)
    result = runner.invoke(app, ["mnist", "--dataset", dataset, "--opt", "adam", "--hidden", "32", "--iterations", "20",
                                 "--eval-every", "10", "--train-size", "1000", "--test-size", "200", "--no-plot",
                                 "--name", "run", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "mnist" / "run" / "summary.csv").iloc[0]
    epochs = pd.read_csv(tmp_path / "mnist" / "run" / "epochs.csv")
    assert summary["target_acc"] == default
    first = epochs.loc[epochs["test_acc"] >= default, "iteration"].min()  # NaN: not reached in 20 steps
    assert summary["steps_to_target"] == first or (np.isnan(first) and np.isnan(summary["steps_to_target"]))
    assert np.isnan(summary["target_loss"]) and np.isnan(summary["steps_to_loss"])  # no --target-loss: none
    # The Python API's problem says the same, and an explicit target wins over it.
    assert MnistProblem(dataset=dataset).target_accuracy == default
    assert MnistProblem(dataset=dataset, target=0.5).target_accuracy == 0.5


@pytest.mark.parametrize("args", [["--target", "0"], ["--target", "101"], ["--target-loss", "-1"]])
def test_bad_targets_are_refused_in_one_line(tmp_path, args):
    result = runner.invoke(app, ["mnist", "--opt", "adam", "--iterations", "10", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--target" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_surface_tol_sets_steps_to_tol(tmp_path):
    counts = {}
    for tol in ("1e-3", "1e-8"):
        result = runner.invoke(app, ["surface", "--opt", "adam", "--fn", "bowl", "--tol", tol, "--no-plot", "--quiet",
                                     "--out", str(tmp_path / tol)])
        assert result.exit_code == 0, result.output
        summary = pd.read_csv(tmp_path / tol / "surface" / "bowl" / "summary.csv").iloc[0]
        trajectory = pd.read_csv(tmp_path / tol / "surface" / "bowl" / "trajectories.csv")
        # The oracle: the first recorded step whose loss (the gap: the bowl's minimum is 0) is below tol.
        assert summary["steps_to_tol"] == trajectory.loc[trajectory["loss"] < float(tol), "step"].min()
        counts[tol] = summary["steps_to_tol"]
    assert counts["1e-8"] > counts["1e-3"]
    bad = runner.invoke(app, ["surface", "--opt", "adam", "--tol", "0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--tol" in bad.output


def test_tuning_draws_the_lr_sensitivity(tmp_path):
    import matplotlib.image

    result = runner.invoke(app, ["surface", "--opt", "adam", "--opt", "sgd", "--fn", "bowl", "--tune",
                                 "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    picture = tmp_path / "surface" / "bowl" / "lr_sensitivity.png"
    assert matplotlib.image.imread(picture).shape[0] > 300
    from optbench.plots import save_lr_sensitivity

    # Several seeds per lr: a median with a band; a diverged lr is left out.
    tuning = pd.DataFrame({"optimizer": "adam", "lr": [1e-3, 1e-3, 1e-2, 1e-2, 1e-1], "seed": [0, 1, 0, 1, 0],
                           "final_val_acc": [0.9, 0.92, 0.95, 0.96, np.nan], "diverged": [False] * 4 + [True],
                           "chosen": [False, False, True, True, False]})
    assert save_lr_sensitivity(tuning, "final_val_acc", tmp_path / "s.png", ylabel="acc", scale=100).stat().st_size > 5000


def test_lr_sensitivity_leaves_out_a_blown_up_loss_instead_of_failing_to_draw(tmp_path):
    # A final loss near 1e305 is finite but past what a log axis can label: it was a traceback.
    from optbench.plots import save_lr_sensitivity

    tuning = pd.DataFrame({"optimizer": "sgd", "lr": [1e-3, 1e-2, 1e-1, 1.0], "gap": [1e-2, 1e-6, 0.0, 3e305],
                           "diverged": False, "chosen": [False, True, False, False]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert save_lr_sensitivity(tuning, "gap", tmp_path / "s.png", ylabel="gap", log_y=True).stat().st_size > 5000
