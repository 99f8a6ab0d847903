"""The CLI end to end with CliRunner: files written, read back with pandas, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.optimizers import OPTIMIZERS
from optbench.surface_run import SUMMARY_COLUMNS, TRAJECTORY_COLUMNS
from optbench.surfaces import SURFACES

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_list_shows_every_optimizer_and_surface():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in [*OPTIMIZERS, *SURFACES]:
        assert name in result.output


def test_list_shows_the_defaults_as_numbers_are_written():
    from rich.console import Console

    from optbench.tables import optimizers_table

    console = Console(width=400, record=True)
    console.print(optimizers_table())
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") > 3}
    assert "ns_steps=5," in rows["muon"] and "eps=1e-07" in rows["muon"]
    assert "warmup_steps=0," in rows["sf_adamw"] and "lr=0.0025" in rows["sf_adamw"]
    assert "decoupled_weight_decay=False" in rows["adam"] and "decoupled" not in rows["adamw"]


def test_muon_on_a_surface_is_refused_in_one_line_and_writes_nothing(tmp_path):
    result = invoke("surface", "--opt", "muon", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "matrices" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_surface_all_writes_tidy_csvs_and_plots(tmp_path):
    result = invoke("surface", "--opt", "all", "--fn", "bowl", "--fn", "saddle", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    for name, minimum in (("bowl", 0.0), ("saddle", None)):
        folder = tmp_path / "surface" / name
        trajectories = pd.read_csv(folder / "trajectories.csv")
        summary = pd.read_csv(folder / "summary.csv")
        assert list(trajectories.columns) == TRAJECTORY_COLUMNS
        assert list(summary.columns) == SUMMARY_COLUMNS
        # Every optimizer but the matrix-only Muon, which a point cannot take.
        assert set(summary["optimizer"]) == {n for n, c in OPTIMIZERS.items() if not c.needs_matrices}
        assert (folder / "trajectories.png").stat().st_size > 10_000
        surface = SURFACES[name]
        # Step 0 is the start, and each recorded loss is the surface's value at the recorded point.
        assert (trajectories.loc[trajectories["step"] == 0, ["x", "y"]].to_numpy() == surface.start).all()
        np.testing.assert_allclose(trajectories["loss"], surface.value(trajectories[["x", "y"]].to_numpy()), rtol=1e-12)
        counts = trajectories.groupby("optimizer")["step"].agg(["min", "max", "count"])
        assert (counts["min"] == 0).all() and (counts["count"] == counts["max"] + 1).all()
        last = trajectories.sort_values("step").groupby("optimizer").tail(1).set_index("optimizer")
        summary = summary.set_index("optimizer")
        np.testing.assert_allclose(summary["final_loss"], last.loc[summary.index, "loss"])
        if minimum is None:
            assert summary["gap"].isna().all() and summary["steps_to_tol"].isna().all()
        else:
            np.testing.assert_allclose(summary["gap"], summary["final_loss"] - minimum)
    # Best first: the summary is sorted by final loss among non-diverged runs.
    bowl = pd.read_csv(tmp_path / "surface" / "bowl" / "summary.csv")
    ok = bowl[~bowl["diverged"]]
    assert ok["final_loss"].is_monotonic_increasing


def test_surface_options_reach_the_optimizer(tmp_path):
    result = invoke(
        "surface", "--opt", "sgd", "--opt", "nesterov", "--fn", "bowl", "--steps", "7", "--lr", "0.05",
        "--hp", "nesterov.momentum=0.5", "--start", "3", "-1", "--out", tmp_path, "--no-plot",
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "surface" / "bowl"
    assert not (folder / "trajectories.png").exists()
    traj = pd.read_csv(folder / "trajectories.csv")
    sgd = traj[traj["optimizer"] == "sgd"].sort_values("step")
    assert sgd["step"].max() == 7 and (sgd["lr"] == 0.05).all()
    # Plain SGD on x^2/20 + y^2: x_t = (1 - lr/10)^t x_0, y_t = (1 - 2 lr)^t y_0.
    t = sgd["step"].to_numpy()
    np.testing.assert_allclose(sgd["x"], 3 * (1 - 0.005) ** t, rtol=1e-13)
    np.testing.assert_allclose(sgd["y"], -1 * (1 - 0.1) ** t, rtol=1e-13)
    nesterov = traj[traj["optimizer"] == "nesterov"].sort_values("step")
    # First Nesterov step with buffer b1 = g: p1 = p0 - lr (g + mu g) = p0 - lr (1 + mu) g.
    g = np.array([3 / 10, 2 * -1])
    np.testing.assert_allclose(nesterov[["x", "y"]].to_numpy()[1], np.array([3, -1]) - 0.05 * 1.5 * g, rtol=1e-14)


def test_repeated_lr_runs_every_optimizer_at_each(tmp_path, monkeypatch):
    from optbench import plots

    drawn = {}
    real = plots.save_trajectories

    def spy(surface, trajectories, summary, path, note=""):
        drawn["labels"] = list(summary["optimizer"])
        drawn["paths"] = trajectories.groupby("optimizer")["step"].count().to_dict()
        return real(surface, trajectories, summary, path)

    monkeypatch.setattr(plots, "save_trajectories", spy)
    result = invoke(
        "surface", "--opt", "sgd", "--opt", "adam", "--opt", "nesterov", "--fn", "bowl", "--steps", "12",
        "--lr", "0.05", "--lr", "0.2", "--hp", "nesterov.lr=0.01", "--out", tmp_path,
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "surface" / "bowl"
    summary = pd.read_csv(folder / "summary.csv")
    traj = pd.read_csv(folder / "trajectories.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and list(traj.columns) == TRAJECTORY_COLUMNS
    # Every optimizer at each --lr, except where --hp sets its own lr.
    expected = {("sgd", 0.05), ("sgd", 0.2), ("adam", 0.05), ("adam", 0.2), ("nesterov", 0.01)}
    assert set(zip(summary["optimizer"], summary["lr"])) == expected and len(summary) == 5
    assert (traj.groupby(["optimizer", "lr"])["step"].count() == 13).all()
    # Plain SGD on x^2/20 + y^2 from (-7, 2), at each lr: x_t = (1 - lr/10)^t x_0, y_t = (1 - 2 lr)^t y_0.
    for lr in (0.05, 0.2):
        sgd = traj[(traj["optimizer"] == "sgd") & (traj["lr"] == lr)].sort_values("step")
        t = sgd["step"].to_numpy()
        np.testing.assert_allclose(sgd["x"], -7 * (1 - lr / 10) ** t, rtol=1e-13)
        np.testing.assert_allclose(sgd["y"], 2 * (1 - 2 * lr) ** t, rtol=1e-13)
    # The picture has one path per (optimizer, lr), and its legend tells the lrs apart.
    assert sorted(drawn["labels"]) == sorted(["sgd lr=0.05", "sgd lr=0.2", "adam lr=0.05", "adam lr=0.2", "nesterov lr=0.01"])
    assert set(drawn["paths"].values()) == {13}
    assert (folder / "trajectories.png").stat().st_size > 10_000
    assert result.output.count("sgd") >= 2 and "0.2" in result.output


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e400"])
def test_a_bad_lr_among_several_gives_one_line_and_exit_2_and_writes_nothing(tmp_path, value):
    result = invoke("surface", "--opt", "sgd", "--lr", "0.1", f"--lr={value}", "--out", tmp_path / "out")
    assert result.exit_code == 2
    message = result.output.strip()
    assert "invalid --lr" in message and "must be a finite number > 0" in message
    assert len(message.splitlines()) == 1, message
    assert not (tmp_path / "out").exists()


def test_lr_and_tune_together_are_refused(tmp_path):
    result = invoke("surface", "--opt", "sgd", "--lr", "0.1", "--tune", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "give --tune or --lr, not both" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_tune_reports_the_chosen_lr(tmp_path):
    result = invoke("surface", "--opt", "adam", "--fn", "booth", "--tune", "--out", tmp_path, "--no-plot")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "surface" / "booth"
    tuning = pd.read_csv(folder / "tuning.csv")
    summary = pd.read_csv(folder / "summary.csv")
    chosen = tuning[tuning["chosen"]]
    assert len(chosen) == 1
    assert summary.loc[0, "lr"] == pytest.approx(chosen["lr"].iloc[0])
    finite = tuning[~tuning["diverged"]]
    assert chosen["final_loss"].iloc[0] == finite["final_loss"].min()
    assert "lr tuned" in result.output
    # The manifest records the lr that ran, not the class's default (Adam's 1e-3).
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["optimizers"]["adam"]["lr"] == summary.loc[0, "lr"] != 1e-3


def test_user_optimizer_joins_the_builtins(tmp_path, monkeypatch):
    (tmp_path / "my_opt.py").write_text(
        "import numpy as np\n"
        "class SignSGD:\n"
        "    name = 'signsgd'\n"
        "    defaults = {'lr': 0.1}\n"
        "    def __init__(self, lr=0.1):\n"
        "        self.lr = lr\n"
        "    def init(self, p):\n"
        "        return {}\n"
        "    def update(self, p, g, state):\n"
        "        p -= self.lr * np.sign(g)\n"
    )
    monkeypatch.chdir(tmp_path)
    result = invoke("surface", "--opt", "my_opt:SignSGD", "--opt", "adam", "--fn", "bowl", "--steps", "3", "--out", tmp_path / "r", "--no-plot")
    assert result.exit_code == 0, result.output
    traj = pd.read_csv(tmp_path / "r" / "surface" / "bowl" / "trajectories.csv")
    mine = traj[traj["optimizer"] == "signsgd"].sort_values("step")
    np.testing.assert_allclose(mine[["x", "y"]].to_numpy()[-1], [-7 + 0.3, 2 - 0.3])
    # By path as well; a file named twice runs once and is one optimizer, not two called alike.
    (tmp_path / "sub").mkdir()
    (tmp_path / "my_opt.py").rename(tmp_path / "sub" / "my_opt.py")
    twice = invoke("surface", "--opt", "sub/my_opt.py:SignSGD", "--opt", "./sub/my_opt.py:SignSGD", "--fn", "bowl",
                   "--steps", "3", "--out", tmp_path / "p", "--no-plot", "-q")
    assert twice.exit_code == 0, twice.output
    assert pd.read_csv(tmp_path / "p" / "surface" / "bowl" / "summary.csv")["optimizer"].tolist() == ["signsgd"]
    no_suffix = invoke("surface", "--opt", "sub/my_opt:SignSGD", "--fn", "bowl", "--out", tmp_path / "q")
    assert no_suffix.exit_code == 2 and "a path names a .py file" in no_suffix.output


def test_a_user_rule_that_raises_on_a_surface_is_marked_failed_and_the_others_go_on(tmp_path, monkeypatch):
    (tmp_path / "buggy.py").write_text(
        "class Buggy:\n"
        "    def __init__(self, lr=0.01):\n"
        "        self.lr = lr\n"
        "    def init(self, p):\n"
        "        return {'t': 0}\n"
        "    def update(self, p, g, state):\n"
        "        state['t'] += 1\n"
        "        if state['t'] == 4:\n"
        "            raise ValueError('my bug')\n"
        "        p -= self.lr * g\n"
        "class BadInit(Buggy):\n"
        "    def init(self, p):\n"
        "        raise KeyError('oops')\n"
    )
    monkeypatch.chdir(tmp_path)
    alone = invoke("surface", "--opt", "sgd", "--fn", "bowl", "--out", tmp_path / "alone", "--no-plot", "-q")
    assert alone.exit_code == 0, alone.output
    sgd_alone = pd.read_csv(tmp_path / "alone" / "surface" / "bowl" / "trajectories.csv")
    for spec, label, fragment, stop in (
            ("buggy:Buggy", "Buggy", "Buggy (lr 0.01) on bowl: its update raised ValueError: my bug at step 4", 4),
            ("buggy:BadInit", "BadInit", "BadInit (lr 0.01) on bowl: init(p) raised KeyError: 'oops'", 1)):
        out = tmp_path / label
        result = invoke("surface", "--opt", spec, "--opt", "sgd", "--fn", "bowl", "--out", out, "--no-plot")
        assert result.exit_code == 0 and fragment in result.output and "Traceback" not in result.output, result.output
        assert f"{label} (failed at step {stop})" in result.output
        folder = out / "surface" / "bowl"
        summary = pd.read_csv(folder / "summary.csv").set_index("optimizer")
        assert summary.loc[label, "status"] == "failed" and not summary.loc[label, "diverged"]
        assert summary.loc["sgd", "status"] == "finished" and list(summary.index) == ["sgd", label]  # failed last
        paths = pd.read_csv(folder / "trajectories.csv")
        assert (paths["optimizer"] == label).sum() == stop  # the steps before the failure: the start, then 3
        sgd = paths[paths["optimizer"] == "sgd"].reset_index(drop=True)
        pd.testing.assert_frame_equal(sgd, sgd_alone)  # the others go on as if it were not there


def test_divergence_is_marked_and_the_others_go_on(tmp_path):
    result = invoke("surface", "--opt", "sgd", "--opt", "adam", "--fn", "rosenbrock", "--lr", "0.5", "--steps", "50", "--out", tmp_path, "--no-plot")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "surface" / "rosenbrock" / "summary.csv").set_index("optimizer")
    assert summary.loc["sgd", "diverged"] and not summary.loc["adam", "diverged"]
    traj = pd.read_csv(tmp_path / "surface" / "rosenbrock" / "trajectories.csv")
    assert np.isfinite(traj[["x", "y", "loss"]].to_numpy()).all()
    assert traj[traj["optimizer"] == "adam"]["step"].max() == 50
    assert traj[traj["optimizer"] == "sgd"]["step"].max() < 50
    assert "Warning" not in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--opt", "adamm"], "choose from sgd, momentum"),
        (["--fn", "rosenbrok"], "choose from bowl, rosenbrock"),
        (["--opt", "adam", "--hp", "beta1=1.5"], "beta1"),
        (["--opt", "adam", "--hp", "adam.momentum=0.9"], "choose from lr, beta1"),
        (["--opt", "sgd", "--hp", "momentum"], "name=value"),
        (["--opt", "sgd", "--lr", "0"], "lr"),
        (["--opt", "sgd", "--steps", "0"], "--steps"),
        (["--opt", "no_such_module:Thing"], "no_such_module"),
        (["--opt", "adam", "--hp", "beta1=0.9", "--hp", "beta1=0.8"], "--hp beta1 is given twice"),
        (["--opt", "adam", "--tune", "--hp", "adam.lr=0.1"], "give --tune or --hp lr="),
        (["--opt", "adam", "--start", "nan", "0"], "not finite"),
        (["--opt", "prodigy", "--hp", "prodigy.d0=nan"], "invalid d0 nan"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, fragment):
    result = invoke("surface", *args, "--out", tmp_path / "out", "--no-plot")
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder
    assert result.exit_code == 2
    message = result.output.strip()
    assert fragment in message
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message


def test_unwritable_out_gives_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("surface", "--opt", "sgd", "--out", blocker / "sub")
    assert result.exit_code == 2
    assert "cannot write to output folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_python_dash_m_runs():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "optbench", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "surface" in done.stdout


def test_animate_writes_a_gif(tmp_path):
    result = invoke("surface", "--opt", "adam", "--opt", "sgd", "--fn", "booth", "--steps", "15", "--animate", "--no-plot", "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    gif = tmp_path / "surface" / "booth" / "trajectories.gif"
    assert gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    from PIL import Image

    with Image.open(gif) as movie:
        assert movie.n_frames == 16  # one frame per step, start included


def test_an_interrupt_while_a_surface_is_written_marks_its_manifest(tmp_path, monkeypatch):
    from optbench import plots

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save_trajectories", ctrl_c)
    result = invoke("surface", "--opt", "sgd", "--fn", "bowl", "--out", tmp_path)
    assert result.exit_code == 130
    folder = tmp_path / "surface" / "bowl"
    assert json.loads((folder / "manifest.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(folder / "summary.csv")) == 1  # what was written is whole


def test_a_start_where_the_surface_is_not_finite_is_refused(tmp_path):
    result = invoke("surface", "--opt", "sgd", "--fn", "rosenbrock", "--start", "1e200", "1e200", "--out", tmp_path)
    assert result.exit_code == 2 and "not finite" in result.output


def test_a_targeted_hp_wins_over_a_bare_one_in_any_order(tmp_path):
    for order in (["--hp", "momentum.momentum=0.99", "--hp", "momentum=0.5"], ["--hp", "momentum=0.5", "--hp", "momentum.momentum=0.99"]):
        from optbench.optimizers import resolve_hparams, select_optimizers

        typed = resolve_hparams(select_optimizers(["sgd", "momentum"]), order[1::2])
        assert typed == {"sgd": {"momentum": 0.5}, "momentum": {"momentum": 0.99}}


def test_two_optimizers_with_one_name_are_refused(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("from optbench.optimizers import Adam\nclass MyAdam(Adam):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("surface", "--opt", "adam", "--opt", "mine:MyAdam", "--out", tmp_path, "--no-plot")
    assert result.exit_code == 2 and "both called 'adam'" in result.output


@pytest.mark.parametrize("args", [[], ["data"]])
def test_no_command_shows_the_help_and_no_empty_error(args):
    result = invoke(*args)
    assert "Usage" in result.output and "error:" not in result.output, result.output


def test_version_is_the_packages():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"optbench {project['version']}"


def test_importing_the_package_loads_no_numpy_until_a_name_is_used():
    # So that the command's entry point can catch a Ctrl-C while the CLI's libraries load.
    import subprocess
    import sys

    code = ("import sys, optbench; assert 'numpy' not in sys.modules, 'numpy loaded'; "
            "optbench.Experiment; assert 'numpy' in sys.modules; print(sorted(optbench.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Experiment" in done.stdout and "OptbenchError" in done.stdout


def test_ctrl_c_while_the_cli_loads_is_one_line_and_exit_130():
    import subprocess
    import sys

    # A Ctrl-C that lands while `optbench.cli` is imported: stand-in, a finder that raises it there.
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'optbench.cli': raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from optbench.__main__ import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code, "list"], capture_output=True, text=True)
    assert done.returncode == 130
    assert done.stderr.strip() == "interrupted before the command started"


def test_a_backend_matplotlib_does_not_know_in_mplbackend_still_draws(tmp_path):
    # A notebook's "inline" left in the environment: matplotlib alone refuses to load with it.
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "optbench", "surface", "--opt", "adam", "--fn", "bowl", "--steps", "5",
                           "--out", str(tmp_path), "-q"], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "inline"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "surface" / "bowl" / "trajectories.png").stat().st_size > 0


@pytest.mark.parametrize("first", ["optbench.modern", "optbench.optimizers", "optbench.cli"])
def test_every_optimizer_is_registered_whichever_module_is_imported_first(first):
    import subprocess
    import sys

    from optbench.optimizers import OPTIMIZERS

    code = (f"import importlib, optbench; importlib.import_module({first!r}); "
            "from optbench.optimizers import OPTIMIZERS, fused_paths; "
            "print(len(OPTIMIZERS), fused_paths(OPTIMIZERS['lion']).numba is not None, callable(optbench.modern.tensors))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(OPTIMIZERS)), "True", "True"]
