"""`optbench mnist` and `optbench report` end to end with CliRunner, on a slice of real MNIST."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench import experiment
from optbench.backend import gpu_available
from optbench.cli import app
from optbench.errors import OptbenchError

import realdata

runner = CliRunner()


@pytest.fixture(scope="module")
def mnist_available():
    realdata.load("mnist")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


SMALL = ["--train-size", "3000", "--test-size", "1000", "--hidden", "64,32", "--batch-size", "100"]


def test_mnist_writes_every_file(tmp_path, mnist_available):
    result = invoke("mnist", "--opt", "adam", "--opt", "sgd", *SMALL, "--epochs", "2", "--out", tmp_path, "--name", "run")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "mnist" / "run"
    curves = pd.read_csv(folder / "curves.csv")
    epochs = pd.read_csv(folder / "epochs.csv")
    summary = pd.read_csv(folder / "summary.csv")
    assert list(curves.columns) == experiment.CURVE_COLUMNS
    assert list(epochs.columns) == experiment.EPOCH_COLUMNS
    assert list(summary.columns) == experiment.SUMMARY_COLUMNS
    assert (folder / "aggregate.csv").exists() and not (folder / "tuning.csv").exists()
    # 3000 / 100 = 30 steps per epoch, 2 epochs, logged every iteration for both optimizers.
    assert curves.groupby("optimizer")["iteration"].agg(list).map(lambda it: it == list(range(1, 61))).all()
    assert sorted(epochs[epochs["optimizer"] == "adam"]["epoch"]) == [1, 2]
    assert set(summary["device"]) == {"cpu"} and set(summary["status"]) == {"finished"}
    # Best test accuracy first; Adam learns far above chance (10 %) even on this slice.
    assert summary["best_test_acc"].is_monotonic_decreasing
    adam = summary.set_index("optimizer").loc["adam"]
    assert adam["best_test_acc"] > 0.8 and adam["lr"] == 1e-3
    assert summary.set_index("optimizer").loc["sgd", "lr"] == 0.01
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["hidden"] == [64, 32]
    assert manifest["optimizers"]["adam"]["beta2"] == 0.999 and manifest["device"]["numpy"] == np.__version__
    assert manifest["optimizers"]["sgd"]["lr"] == 0.01  # the lr it ran at (torch's SGD default is 1e-3)
    for name in ("loss.png", "accuracy.png", "time.png"):
        assert (folder / name).stat().st_size > 10_000


def test_every_optimizer_starts_from_the_same_weights_and_batches(tmp_path, mnist_available):
    # momentum with momentum=0 is sgd: identical curves prove the same start and the same batches.
    result = invoke("mnist", "--opt", "sgd", "--opt", "momentum", "--hp", "momentum.momentum=0", *SMALL,
                    "--iterations", "25", "--out", tmp_path, "--name", "same", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    curves = pd.read_csv(tmp_path / "mnist" / "same" / "curves.csv")
    sgd = curves[curves["optimizer"] == "sgd"]["train_loss"].to_numpy()
    momentum = curves[curves["optimizer"] == "momentum"]["train_loss"].to_numpy()
    assert len(sgd) == 25 and np.array_equal(sgd, momentum)


def test_eval_every_and_report_redraws_from_saved_csvs(tmp_path, mnist_available):
    result = invoke("mnist", "--opt", "adam", "--opt", "sgd", *SMALL, "--iterations", "40", "--eval-every", "15",
                    "--out", tmp_path, "--name", "a", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    epochs = pd.read_csv(tmp_path / "mnist" / "a" / "epochs.csv")
    assert epochs[epochs["optimizer"] == "adam"]["iteration"].tolist() == [15, 30, 40]
    report = invoke("report", tmp_path / "mnist" / "a")
    assert report.exit_code == 0, report.output
    # The table is the saved numbers: each optimizer's row shows its last evaluation's accuracy,
    # best first.
    rows = {line.split("│")[2].strip(): line for line in report.output.splitlines() if line.count("│") > 5}
    last = epochs.sort_values("iteration").groupby("optimizer").last()
    for name in ("adam", "sgd"):
        assert f"{100 * last.loc[name, 'test_acc']:.2f}" in rows[name], rows
    order = [line.split("│")[2].strip() for line in report.output.splitlines() if line.count("│") > 5]
    assert order == sorted(order, key=lambda n: -last.loc[n, "test_acc"])
    for figure in ("loss.png", "accuracy.png"):
        assert (tmp_path / "mnist" / "a" / figure).stat().st_size > 0


# The columns of run folders written before populations (no lr, seed or validation columns).
OLD_CURVES = ["optimizer", "device", "epoch", "iteration", "train_loss"]
OLD_EPOCHS = ["optimizer", "device", "epoch", "train_loss", "test_loss", "test_acc", "epoch_seconds", "samples_per_s", "iteration"]
OLD_SUMMARY = ["optimizer", "device", "lr", "epochs", "final_test_acc", "best_test_acc", "final_train_loss",
               "mean_epoch_seconds", "samples_per_s", "diverged", "status"]


def test_report_combines_cpu_and_gpu_runs_written_before_populations(tmp_path):
    # Two saved runs, written by hand as a CPU and a GPU run of the old layout were.
    for device, rate in (("cpu", 1000.0), ("gpu", 8000.0)):
        folder = tmp_path / device
        folder.mkdir()
        pd.DataFrame([[o, device, 1, i, 1.0 / i] for o in ("adam", "sgd") for i in (1, 2)], columns=OLD_CURVES).to_csv(folder / "curves.csv", index=False)
        pd.DataFrame([[o, device, 1, 0.5, 0.4, 0.9, 60000 / rate, rate, 2] for o in ("adam", "sgd")], columns=OLD_EPOCHS).to_csv(folder / "epochs.csv", index=False)
        pd.DataFrame([[o, device, 0.001, 1, 0.9, 0.9, 0.5, 60000 / rate, rate, False, "finished"] for o in ("adam", "sgd")], columns=OLD_SUMMARY).to_csv(folder / "summary.csv", index=False)
    result = invoke("report", tmp_path / "cpu", tmp_path / "gpu", "--out", tmp_path / "both")
    assert result.exit_code == 0, result.output
    assert "CPU vs GPU" in result.output and "8.00×" in result.output
    devices = pd.read_csv(tmp_path / "both" / "devices.csv")
    assert devices["gpu_speedup"].tolist() == [8.0, 8.0]


def test_report_of_a_run_interrupted_before_any_member_trained(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    for name, columns in (("curves", experiment.CURVE_COLUMNS), ("epochs", experiment.EPOCH_COLUMNS), ("summary", experiment.SUMMARY_COLUMNS)):
        pd.DataFrame(columns=columns).to_csv(folder / f"{name}.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({"status": "interrupted"}))
    result = invoke("report", folder)
    assert result.exit_code == 0, result.output
    assert "partial" in result.output and not (folder / "loss.png").exists()


@pytest.mark.parametrize("name, column, fragment", [
    ("summary", "final_test_acc", "neither a surface nor an MNIST summary"),
    ("curves", "optimizer", "missing columns optimizer (not a whole optbench run file)"),
    ("epochs", "test_acc", "missing columns test_acc (not a whole optbench run file)"),
])
def test_report_names_a_run_file_that_lacks_a_column(tmp_path, name, column, fragment):
    folder = tmp_path / "run"
    folder.mkdir()
    for part, columns in (("curves", experiment.CURVE_COLUMNS), ("epochs", experiment.EPOCH_COLUMNS), ("summary", experiment.SUMMARY_COLUMNS)):
        kept = [c for c in columns if not (part == name and c == column)]
        pd.DataFrame(columns=kept).to_csv(folder / f"{part}.csv", index=False)
    result = invoke("report", folder)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip() == f"error: {folder / (name + '.csv')}: {fragment}"


def test_report_names_a_folder_that_is_not_a_run(tmp_path):
    result = invoke("report", tmp_path)
    assert result.exit_code == 2 and "is not an optbench run folder" in result.output
    # A surface folder is a run, but not one report reads without --html: it says so.
    assert invoke("surface", "--opt", "sgd", "--fn", "bowl", "--out", tmp_path, "--no-plot", "-q").exit_code == 0
    result = invoke("report", tmp_path / "surface" / "bowl")
    assert result.exit_code == 2 and "`optbench report --html` reads it" in result.output


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU: the missing-GPU error cannot be shown")
def test_device_gpu_without_cupy_says_what_to_install(tmp_path):
    result = invoke("mnist", "--device", "gpu", "--out", tmp_path)
    assert result.exit_code == 2
    assert "cupy-cuda12x" in result.output and len(result.output.strip().splitlines()) == 1
    assert "optbench[gpu]" in result.output  # square brackets shown, not taken for markup


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--dataset", "cifar"], "choose from mnist, fashion"),
        (["--device", "tpu"], "choose from cpu, gpu, auto"),
        (["--hidden", "100,x"], "--hidden"),
        (["--activation", "gelu"], "relu, sigmoid, tanh"),
        (["--dropout", "1.5"], "--dropout"),
        (["--compare", "some"], "--compare"),
        (["--opt", "adam", "--hp", "beta1=2"], "beta1"),
        (["--batch-size", "0"], "--batch-size"),
        (["--cuda-graph"], "--cuda-graph needs the GPU"),
        (["--opt", "nosuch[red]"], "nosuch[red]"),
        (["--cuda-graph", "--dropout", "0.5"], "does not support --dropout"),
        (["--cuda-graph", "--batchnorm"], "does not support --dropout or --batchnorm"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, fragment):
    result = invoke("mnist", *args, "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1


@pytest.fixture
def ctrl_c_at_step_12(monkeypatch):
    """Ctrl-C as training reaches step 12 (inside the training loop)."""
    real_train = experiment.train_population

    def train_then_ctrl_c(*args, **kwargs):
        step = kwargs["on_step"]

        def interrupting(done):
            step(done)
            if done == 12:
                raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "on_step": interrupting})

    monkeypatch.setattr(experiment, "train_population", train_then_ctrl_c)


def test_interrupt_keeps_what_was_trained(tmp_path, mnist_available, ctrl_c_at_step_12):
    result = invoke("mnist", "--opt", "adam", "--opt", "sgd", *SMALL, "--out", tmp_path, "--name", "cut", "--no-plot")
    assert result.exit_code == 130
    folder = tmp_path / "mnist" / "cut"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    summary = pd.read_csv(folder / "summary.csv")
    # One population: both members stop at the same step, each marked interrupted.
    assert sorted(summary["optimizer"]) == ["adam", "sgd"] and set(summary["status"]) == {"interrupted"}
    assert pd.read_csv(folder / "curves.csv").groupby("optimizer").size().tolist() == [12, 12]


def test_an_interrupted_tuning_grid_is_marked_and_nothing_is_chosen_from_it(tmp_path, mnist_available, ctrl_c_at_step_12):
    result = invoke("mnist", "--opt", "adam", "--tune", *SMALL, "--validation", "500", "--eval-every", "10",
                    "--out", tmp_path, "--name", "cut")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert "Warning" not in result.output  # no matplotlib chatter about empty legends
    tuning = pd.read_csv(tmp_path / "mnist" / "cut" / "tuning.csv")
    # Seven lrs stopped at step 12: evaluated once (step 10), none trained to the end, none chosen.
    assert len(tuning) == 7 and set(tuning["status"]) == {"interrupted"} and not tuning["chosen"].any()


def test_interrupt_between_populations_is_marked_too(tmp_path, mnist_available, monkeypatch):
    real_population = experiment.Population
    calls = []

    def build_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # while the second population is being built
            raise KeyboardInterrupt
        return real_population(*args, **kwargs)

    monkeypatch.setattr(experiment, "Population", build_then_ctrl_c)
    result = invoke("mnist", "--opt", "adam", "--opt", "sgd", "--max-population", "1", *SMALL, "--iterations", "10",
                    "--out", tmp_path, "--name", "cut2", "--no-plot")
    assert result.exit_code == 130 and "interrupted" in result.output
    folder = tmp_path / "mnist" / "cut2"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["populations"][0]["members"] == 1
    summary = pd.read_csv(folder / "summary.csv").set_index("optimizer")
    # The second member never started: listed, marked interrupted, with no numbers.
    assert summary.loc["adam", "status"] == "finished" and summary.loc["sgd", "status"] == "interrupted"
    assert np.isnan(summary.loc["sgd", "final_test_acc"])


def test_an_interrupt_after_training_still_marks_the_run_and_writes_its_files(tmp_path, mnist_available, monkeypatch):
    # SIGTERM (or Ctrl-C) arriving as the final tables are put together, after every member
    # has trained: the manifest must not be left at "running".
    real_results = experiment._Run.results
    calls = []

    def results_then_ctrl_c(self, status=None):
        if status is None and not calls:  # the final tables, not a population's interim write
            calls.append(1)
            raise KeyboardInterrupt
        return real_results(self, status)

    monkeypatch.setattr(experiment._Run, "results", results_then_ctrl_c)
    result = invoke("mnist", "--opt", "adam", *SMALL, "--iterations", "10", "--out", tmp_path, "--name", "late")
    assert result.exit_code == 130 and "interrupted" in result.output
    folder = tmp_path / "mnist" / "late"
    assert json.loads((folder / "manifest.json").read_text())["status"] == "interrupted"
    assert pd.read_csv(folder / "summary.csv")["status"].tolist() == ["finished"]
    assert (folder / "loss.png").stat().st_size > 0


def test_a_plain_optimizer_class_uses_its_own_default_lr(tmp_path, mnist_available, monkeypatch):
    (tmp_path / "plain.py").write_text(
        "class Plain:\n"
        "    def __init__(self, lr=0.05):\n"
        "        self.lr = lr\n"
        "    def init(self, p):\n"
        "        return {}\n"
        "    def update(self, p, g, state):\n"
        "        p -= self.lr * g\n"
    )
    monkeypatch.chdir(tmp_path)
    result = invoke("mnist", "--opt", "plain:Plain", *SMALL, "--iterations", "5", "--out", tmp_path, "--name", "p", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "mnist" / "p" / "summary.csv")["lr"].tolist() == [0.05]
    result = invoke("mnist", "--opt", "plain:Plain", "--hp", "lr=0.1", *SMALL, "--iterations", "5", "--out", tmp_path, "--name", "q", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "mnist" / "q" / "summary.csv")["lr"].tolist() == [0.1]


def test_report_keeps_two_runs_of_one_optimizer_apart(tmp_path, mnist_available):
    for name in ("one", "two"):
        result = invoke("mnist", "--opt", "sgd", *SMALL, "--iterations", "5", "--out", tmp_path, "--name", name, "--no-plot", "-q")
        assert result.exit_code == 0, result.output
    result = invoke("report", tmp_path / "mnist" / "one", tmp_path / "mnist" / "two", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "sgd [one]" in result.output and "sgd [two]" in result.output


def test_sigterm_stops_a_run_like_ctrl_c_and_keeps_what_was_trained(tmp_path, mnist_available):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "mnist" / "term"
    process = subprocess.Popen(
        # Two populations of one: the first one's files appear when it finishes, then the second
        # trains, for seconds (long enough that the signal lands in it on a loaded machine too).
        [sys.executable, "-m", "optbench", "mnist", "--opt", "adam", "--opt", "sgd", "--max-population", "1",
         "--train-size", "6000", "--test-size", "1000", "--iterations", "2400", "--eval-every", "800",
         "--out", str(tmp_path), "--name", "term", "--no-plot", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "MPLBACKEND": "Agg"},
    )
    deadline = time.time() + 120
    while not (folder / "summary.csv").exists():  # written when the first population finishes
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 130
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    summary = pd.read_csv(folder / "summary.csv").set_index("optimizer")
    assert summary.loc["adam", "status"] == "finished" and summary.loc["sgd", "status"] == "interrupted"


def test_a_data_error_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise OptbenchError("could not fetch mnist (offline)")

    monkeypatch.setattr(experiment, "load_data", no_data)
    result = invoke("mnist", "--iterations", "5", "--out", tmp_path, "--name", "x")
    assert result.exit_code == 2 and "could not fetch mnist" in result.output
    assert not (tmp_path / "mnist" / "x").exists()


def test_ctrl_c_while_the_data_loads_leaves_no_empty_run_folder_and_says_so(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM) during a download or the cache's unpacking

    monkeypatch.setattr(experiment, "load_data", interrupted)
    result = invoke("mnist", "--iterations", "5", "--out", tmp_path, "--name", "x")
    assert result.exit_code == 130 and "interrupted before any member trained: nothing written" in result.output
    assert not (tmp_path / "mnist" / "x").exists()


def test_an_interrupt_while_a_run_folder_is_written_marks_its_manifest(tmp_path, mnist_available, monkeypatch):
    # Whoever writes the folder (the mnist command, a profile's problem set, the Python API):
    # Ctrl-C or SIGTERM among the plots leaves whole files and a manifest that says interrupted.
    from optbench import plots

    result = experiment.Experiment(optimizers=["adam"], problem=experiment.MnistProblem(
        hidden=(16,), iterations=10, eval_every=5, train_size=1000, test_size=200)).run()
    assert result.status == "finished"

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save_accuracy", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        result.write(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "interrupted"
    assert result.status == "interrupted" and len(pd.read_csv(tmp_path / "run" / "summary.csv")) == 1
