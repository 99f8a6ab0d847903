"""`optbench regress`: an unchanged tree passes, a planted regression fails on exactly its rows,
and broken suites or baselines are named with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench import optimizers, regress
from optbench.cli import app
from optbench.surfaces import SURFACES

# Every surface x every optimizer that runs on points (all but Muon) x 4 metrics.
SURFACE_METRICS = len(SURFACES) * sum(not c.needs_matrices for c in optimizers.OPTIMIZERS.values()) * 4

runner = CliRunner()
SUITES = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small_suite(tmp_path):
    """Two surfaces, three optimizers, the tolerances of the committed surface suite."""
    committed = (SUITES / "surfaces.toml").read_text()
    text = committed.replace('optimizers = "all"', 'optimizers = ["sgd", "adam", "nadam"]').replace(
        'surfaces = "all"', 'surfaces = ["bowl", "booth"]').replace('baseline = "surfaces-baseline.csv"', 'baseline = "small-baseline.csv"')
    path = tmp_path / "small.toml"
    path.write_text(text)
    result = invoke("regress", "--suite", path, "--update", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "24 value(s) changed" in result.output  # 2 surfaces x 3 optimizers x 4 metrics, all new
    return path


def test_the_committed_surface_suite_passes_on_an_unchanged_tree(tmp_path):
    result = invoke("regress", "--suite", SUITES / "surfaces.toml", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    comparison = pd.read_csv(tmp_path / "regress" / "comparison.csv")
    assert len(comparison) == SURFACE_METRICS and (comparison["status"] == "ok").all()


def test_a_rerun_on_one_machine_gives_bitwise_the_same_numbers(tmp_path):
    # The committed baselines come from another machine (its libm and BLAS may differ in the
    # last ulp); a baseline written here and checked here must match exactly.
    suite = tmp_path / "surfaces.toml"
    suite.write_text((SUITES / "surfaces.toml").read_text().replace('baseline = "surfaces-baseline.csv"', 'baseline = "here.csv"'))
    assert invoke("regress", "--suite", suite, "--update", "--out", tmp_path).exit_code == 0
    result = invoke("regress", "--suite", suite, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    comparison = pd.read_csv(tmp_path / "regress" / "comparison.csv")
    assert len(comparison) == SURFACE_METRICS
    assert (comparison["delta"].fillna(0) == 0).all()


def test_a_planted_sign_error_fails_exactly_its_rows(small_suite, tmp_path, monkeypatch):
    original = optimizers.NAdam.update

    def sign_error(self, p, g, state):
        original(self, p, -g, state)  # a refactor that flipped the gradient's sign

    monkeypatch.setattr(optimizers.NAdam, "update", sign_error)
    result = invoke("regress", "--suite", small_suite, "--out", tmp_path)
    assert result.exit_code == 1, result.output
    comparison = pd.read_csv(tmp_path / "regress" / "comparison.csv")
    failed = comparison[comparison["status"] != "ok"]
    assert set(failed["case"]) == {"bowl/nadam", "booth/nadam"}
    assert "bowl/nadam" in result.output and "booth/nadam" in result.output
    assert "bowl/adam " not in result.output


def test_a_changed_default_fails_only_that_optimizer(small_suite, tmp_path, monkeypatch):
    monkeypatch.setattr(optimizers.Adam, "defaults", {**optimizers.Adam.defaults, "beta1": 0.89})
    result = invoke("regress", "--suite", small_suite, "--out", tmp_path)
    assert result.exit_code == 1
    failed = pd.read_csv(tmp_path / "regress" / "comparison.csv").query("status != 'ok'")
    assert set(failed["case"].str.split("/").str[1]) == {"adam"}


def test_update_says_what_changed(small_suite, tmp_path, monkeypatch):
    result = invoke("regress", "--suite", small_suite, "--update", "--out", tmp_path)
    assert "0 value(s) changed" in result.output
    monkeypatch.setattr(optimizers.SGD, "defaults", {**optimizers.SGD.defaults, "weight_decay": 0.1})
    result = invoke("regress", "--suite", small_suite, "--update", "--out", tmp_path)
    assert result.exit_code == 0 and "bowl/sgd" in result.output
    assert "adam" not in result.output.split("changed values")[-1]


def test_all_lists_every_metric_and_without_it_only_the_failures(small_suite, tmp_path, monkeypatch):
    quiet = invoke("regress", "--suite", small_suite, "--out", tmp_path)
    every = invoke("regress", "--suite", small_suite, "--out", tmp_path, "--all")
    assert quiet.exit_code == every.exit_code == 0
    for case in ("bowl/sgd", "bowl/adam", "booth/nadam"):
        assert case in every.output and case not in quiet.output
    monkeypatch.setattr(optimizers.SGD, "defaults", {**optimizers.SGD.defaults, "weight_decay": 0.1})
    failing = invoke("regress", "--suite", small_suite, "--out", tmp_path)
    assert failing.exit_code == 1 and "bowl/sgd" in failing.output and "bowl/adam" not in failing.output


def test_the_summary_line_keeps_text_in_brackets(small_suite, tmp_path):
    # rich reads "[red]" as markup: the folder written must be printed as it is.
    out = tmp_path / "[red]out"
    result = invoke("regress", "--suite", small_suite, "--out", out)
    assert result.exit_code == 0 and "[red]out" in result.output.replace("\n", ""), result.output


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_text("case,metric,value\nbowl/sgd,gap,1\n"), "missing column(s) spread"),
        (lambda p: p.write_text("case,metric,value,spread\nbowl/sgd,gap,abc,0\n"), "row 2 has a non-numeric"),
    ],
)
def test_a_missing_or_malformed_baseline_is_named(small_suite, tmp_path, damage, fragment):
    baseline = small_suite.parent / "small-baseline.csv"
    damage(baseline)
    result = invoke("regress", "--suite", small_suite, "--out", tmp_path)
    assert result.exit_code == 2
    assert "small-baseline.csv" in result.output and fragment in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_broken_suite_file_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("kind = 'surface\n")
    result = invoke("regress", "--suite", bad, "--out", tmp_path)
    assert result.exit_code == 2 and "bad.toml" in result.output and "TOML" in result.output
    bad.write_text("kind = 'cifar'\n")
    assert "kind must be one of surface, mnist" in invoke("regress", "--suite", bad).output
    assert invoke("regress", "--suite", tmp_path / "none.toml").exit_code == 2
    folder = invoke("regress", "--suite", tmp_path)  # a folder given for the file
    assert folder.exit_code == 2 and "cannot read suite file" in folder.output and "Traceback" not in folder.output
    assert len(folder.output.strip().splitlines()) == 1


def test_tolerance_rule():
    tol = regress.Tolerance(rel=1e-3, abs=1e-6, spread_factor=2)
    assert tol.allows(1.0, 1.0 + 1e-3, 0.0)[0]
    assert not tol.allows(1.0, 1.0 + 2e-3, 0.0)[0]
    assert tol.allows(1.0, 1.5, 0.25)[0]  # 2 x spread covers it
    assert regress.Tolerance(exact=True).allows(0.0, 0.0, 5.0)[0]
    assert not regress.Tolerance(exact=True).allows(0.0, 1.0, 5.0)[0]
    assert tol.allows(float("nan"), float("nan"), 0.0)[0] and not tol.allows(float("nan"), 1.0, 0.0)[0]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("kind = 'surface'\nlr = 'abc'\n", "bad value for lr"),
        ("kind = 'surface'\noptimizer = ['adam']\n", "unknown setting 'optimizer'"),
        ("kind = 'surface'\ntolerance = 5\n", "must be tables"),
        ("kind = 'surface'\n[tolerance.gap]\nrel = 'x'\n", "tolerance.gap.rel must be a number, finite and >= 0, got 'x'"),
        ("kind = 'mnist'\n", "needs `iterations`"),
        ("kind = 'mnist'\niterations = 10\ntrain_size = 100\n", "larger than --train-size"),
        ("kind = 'mnist'\niterations = 10\ncheck_iterations = [20]\n", "past iterations"),
    ],
)
def test_malformed_suites_are_named(tmp_path, text, fragment):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = invoke("regress", "--suite", bad, "--update", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "kind, table, fragment",
    [
        ("surface", "[tolerance.bogus]\nrel = 1e-9\n",
         "unknown metric 'bogus' in `tolerance` (a surface suite measures final_loss, gap, steps_to_tol, diverged)"),
        ("mnist", "[tolerance.final_loss]\nabs = 0.1\n",
         "unknown metric 'final_loss' in `tolerance` (a mnist suite measures train_loss, final_test_acc, diverged)"),
        ("surface", "[tolerance.final_loss]\nrelative = 1e-9\n",
         "unknown key 'relative' in [tolerance.final_loss] (a tolerance takes rel, abs, spread_factor, exact)"),
        ("surface", "[tolerance.final_loss]\nrel = -1\n", "tolerance.final_loss.rel must be a number, finite and >= 0, got -1"),
        ("surface", "[tolerance.gap]\nabs = inf\n", "tolerance.gap.abs must be a number, finite and >= 0, got inf"),
        ("surface", "[tolerance.gap]\nspread_factor = nan\n", "tolerance.gap.spread_factor must be a number, finite and >= 0, got nan"),
        ("surface", "[tolerance.gap]\nabs = [1]\n", "tolerance.gap.abs must be a number, finite and >= 0, got [1]"),
        ("surface", "[tolerance.diverged]\nexact = 1\n", "tolerance.diverged.exact must be true or false, got 1"),
        ("surface", "[tolerance]\ngap = 1e-9\n", "tolerance.gap must be a table such as [tolerance.gap]"),
    ],
)
def test_a_bad_tolerance_table_is_refused_before_anything_runs(tmp_path, kind, table, fragment):
    suite = tmp_path / "bad.toml"
    settings = "kind = 'mnist'\niterations = 10\n" if kind == "mnist" else "kind = 'surface'\n"
    suite.write_text(settings + table)
    result = invoke("regress", "--suite", suite, "--update", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "bad.toml" in lines[0] and fragment in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]  # no baseline, no output folder


def test_tolerance_tables_name_the_metrics_the_runner_measures(tmp_path):
    # The list of metrics a tolerance may name is checked against what a suite really produces.
    suite = tmp_path / "one.toml"
    suite.write_text("kind = 'surface'\noptimizers = ['sgd']\nsurfaces = ['bowl']\n")
    measured = regress.run_surface_suite(regress.load_suite(suite))
    assert tuple(dict.fromkeys(measured["metric"])) == regress.METRICS["surface"]


def test_a_baseline_or_out_that_cannot_be_written_is_found_before_anything_is_measured(small_suite, tmp_path, monkeypatch):
    measured = []
    real_measure = regress.measure
    monkeypatch.setattr(regress, "measure", lambda suite: measured.append(suite) or real_measure(suite))
    real_run = regress.RUNNERS["surface"]
    monkeypatch.setitem(regress.RUNNERS, "surface", lambda suite, nudge: measured.append(suite) or real_run(suite, nudge))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the baselines' folder should be")
    blocked = tmp_path / "blocked.toml"
    blocked.write_text(small_suite.read_text().replace('baseline = "small-baseline.csv"', 'baseline = "blocker/b.csv"'))
    result = invoke("regress", "--suite", small_suite, "--suite", blocked, "--update")
    assert result.exit_code == 2 and "cannot write to output folder" in result.output and measured == [], result.output
    result = invoke("regress", "--suite", small_suite, "--out", blocker)
    assert result.exit_code == 2 and "cannot write to output folder" in result.output and measured == [], result.output
