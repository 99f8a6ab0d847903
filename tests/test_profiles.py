"""Performance profiles and integrated scores against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.profiles import integrated_scores, on_every_problem, performance_ratios, profile

import realdata

# Three optimizers, four problems; B never solves P3.
COSTS = pd.DataFrame({"A": [10, 30, 100, 8], "B": [20, 15, np.inf, 8], "C": [40, 15, 50, 16]},
                     index=["P1", "P2", "P3", "P4"], dtype=float)


def test_ratios_by_hand():
    expected = pd.DataFrame({"A": [1, 2, 2, 1], "B": [2, 1, np.inf, 1], "C": [4, 1, 1, 2]},
                            index=COSTS.index, dtype=float)
    pd.testing.assert_frame_equal(performance_ratios(COSTS), expected)


def test_profiles_by_hand():
    rho = profile(performance_ratios(COSTS), [1.0, 1.5, 2.0, 3.9, 4.0])
    # A: best on P1, P4; within 2x on all.  B: best on P2, P4; P1 at 2x; never P3.
    # C: best on P2, P3; P4 at 2x; P1 at exactly 4x.
    np.testing.assert_allclose(rho["A"], [0.5, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(rho["B"], [0.5, 0.5, 0.75, 0.75, 0.75])
    np.testing.assert_allclose(rho["C"], [0.5, 0.5, 0.75, 0.75, 1.0])


def test_integrated_scores_by_hand():
    # Each problem solved at ratio r <= 4 adds (4 - r) / 3, averaged over the four problems:
    # A (1 + 2/3 + 2/3 + 1) / 4 = 5/6; B (2/3 + 1 + 0 + 1) / 4 = 2/3; C (0 + 1 + 1 + 2/3) / 4 = 2/3.
    scores = integrated_scores(performance_ratios(COSTS))
    assert list(scores.index) == ["A", "B", "C"]  # stable among the equal ones
    np.testing.assert_allclose(scores.to_numpy(), [5 / 6, 2 / 3, 2 / 3])
    # The same area by brute force on a fine grid of tau.
    taus = np.linspace(1, 4, 300_001)
    area = profile(performance_ratios(COSTS), taus).mean(axis=0)
    np.testing.assert_allclose(area[scores.index].to_numpy(), scores.to_numpy(), atol=1e-4)
    with pytest.raises(OptbenchError):
        integrated_scores(performance_ratios(COSTS), r_max=1.0)


def test_a_problem_nobody_solves_lowers_everyone_alike_and_absent_optimizers_are_left_out():
    costs = pd.concat([COSTS, pd.DataFrame({"A": [np.inf], "B": [np.inf], "C": [np.inf]}, index=["P5"])])
    assert (performance_ratios(costs).loc["P5"] == np.inf).all()
    np.testing.assert_allclose(integrated_scores(performance_ratios(costs))["A"], 5 / 6 * 4 / 5)
    with_absent = costs.assign(D=[1.0, 1.0, 1.0, 1.0, np.nan])  # D did not run on P5
    kept, left_out = on_every_problem(with_absent)
    assert list(kept.columns) == ["A", "B", "C"] and left_out == ["D"]


def test_profile_command_reads_surface_folders(tmp_path):
    runner = CliRunner()
    for name in ("bowl", "booth"):
        result = runner.invoke(app, ["surface", "--opt", "adam", "--opt", "sgd", "--fn", name, "--out", str(tmp_path),
                                     "--no-plot", "--quiet"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["profile", str(tmp_path / "surface" / "bowl"), str(tmp_path / "surface" / "booth"),
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "profile" / "scores.csv")
    costs = pd.read_csv(tmp_path / "profile" / "costs.csv").set_index("problem")
    assert set(scores["optimizer"]) == {"adam", "sgd"} and len(costs) == 2
    assert scores["score"].between(0, 1).all() and (tmp_path / "profile" / "profile.png").stat().st_size > 10_000
    # Each score is the definition evaluated here on the written costs: per problem, the ratio r
    # to that problem's best cost adds max(0, 4 - r) / 3, averaged over the problems.
    ratio = costs.div(costs.min(axis=1), axis=0)
    by_hand = ((4 - ratio).clip(lower=0) / 3).fillna(0).mean(axis=0)  # NaN: inf / inf, nobody solved it
    for name, score in scores.set_index("optimizer")["score"].items():
        assert score == pytest.approx(by_hand[name], abs=1e-12)
    bad = runner.invoke(app, ["profile", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not an optbench run folder" in bad.output
    # A saddle has no minimum, so no target: its folder is left out and named, not counted as a
    # problem nobody solved (which would lower every score alike).
    runner.invoke(app, ["surface", "--opt", "adam", "--opt", "sgd", "--fn", "saddle", "--out", str(tmp_path), "--no-plot", "-q"])
    result = runner.invoke(app, ["profile", *(str(tmp_path / "surface" / n) for n in ("bowl", "booth", "saddle")),
                                 "--out", str(tmp_path / "with")])
    assert result.exit_code == 0 and "(no minimum, so no target): saddle" in result.output, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "with" / "profile" / "costs.csv"), costs.reset_index())
    alone = runner.invoke(app, ["profile", str(tmp_path / "surface" / "saddle"), "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 2 and "a problem with a target" in alone.output


# Seconds to the target for the problems of COSTS, chosen so that the seconds rank the optimizers
# otherwise than the steps do (as when they trained in different populations or on different
# devices: within one population the seconds follow the steps). Ratios to each problem's best:
#   P1: A 40 (4x), B 10 (1x), C 20 (2x)      P2: A 30 (2x), B 15 (1x), C 30 (2x)
#   P3: A 100 (4x), B never, C 25 (1x)      P4: A 16 (2x), B 8 (1x),  C 8 (1x)
SECONDS = pd.DataFrame({"A": [40, 30, 100, 16], "B": [10, 15, np.inf, 8], "C": [20, 30, 25, 8]},
                       index=COSTS.index, dtype=float)
# A problem solved at ratio r adds (4 - r) / 3: A (0 + 2/3 + 0 + 2/3) / 4 = 1/3;
# B (1 + 1 + 0 + 1) / 4 = 3/4; C (2/3 + 2/3 + 1 + 1) / 4 = 5/6. By steps A led (5/6); here it is last.
SECONDS_SCORES = {"C": 5 / 6, "B": 3 / 4, "A": 1 / 3}


def hand_built_mnist_folders(root) -> list[str]:
    """One MNIST run folder per problem of COSTS, as `optbench mnist` writes them: a summary with
    each optimizer's steps and seconds to the target (empty: never reached), and a manifest.
    Each optimizer also has a worse lr (3x the steps and seconds), which the profile must pass over."""
    import json

    folders = []
    for problem in COSTS.index:
        folder = root / problem
        folder.mkdir(parents=True)
        rows = []
        for name in COSTS.columns:
            steps, seconds = COSTS.loc[problem, name], SECONDS.loc[problem, name]
            for lr, factor in ((1e-3, 1.0), (1e-2, 3.0)):
                rows.append({"optimizer": name, "device": "cpu", "lr": lr, "seed": 0, "target_acc": 0.97,
                             "steps_to_target": steps * factor if np.isfinite(steps) else np.nan,
                             "seconds_to_target": seconds * factor if np.isfinite(seconds) else np.nan})
        pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
        (folder / "manifest.json").write_text(json.dumps({"status": "finished", "config": {"dataset": "mnist"}}))
        folders.append(str(folder))
    return folders


def test_the_profile_command_scores_run_folders_as_worked_out_by_hand(tmp_path):
    # The same numbers as test_integrated_scores_by_hand, now through run folders and the command.
    folders = hand_built_mnist_folders(tmp_path / "runs")
    result = CliRunner().invoke(app, ["profile", *folders, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    costs = pd.read_csv(tmp_path / "profile" / "costs.csv").set_index("problem")
    assert list(costs.index) == [f"mnist ({p})" for p in COSTS.index]
    np.testing.assert_array_equal(costs[["A", "B", "C"]].to_numpy(), COSTS.to_numpy())  # each at its best lr
    ratios = pd.read_csv(tmp_path / "profile" / "ratios.csv").set_index("problem")
    np.testing.assert_array_equal(ratios[["A", "B", "C"]].to_numpy(),
                                  [[1, 2, 4], [2, 1, 1], [2, np.inf, 1], [1, 1, 2]])
    scores = pd.read_csv(tmp_path / "profile" / "scores.csv")
    assert list(scores["optimizer"]) == ["A", "B", "C"]
    np.testing.assert_allclose(scores["score"], [5 / 6, 2 / 3, 2 / 3], rtol=1e-12)


def test_cost_seconds_profiles_the_seconds_where_they_rank_otherwise_than_the_steps(tmp_path):
    folders = hand_built_mnist_folders(tmp_path / "runs")
    runner = CliRunner()
    result = runner.invoke(app, ["profile", *folders, "--cost", "seconds", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    costs = pd.read_csv(tmp_path / "profile" / "costs.csv").set_index("problem")
    np.testing.assert_array_equal(costs[["A", "B", "C"]].to_numpy(), SECONDS.to_numpy())
    ratios = pd.read_csv(tmp_path / "profile" / "ratios.csv").set_index("problem")
    np.testing.assert_array_equal(ratios[["A", "B", "C"]].to_numpy(),
                                  [[4, 1, 2], [2, 1, 2], [4, np.inf, 1], [2, 1, 1]])
    scores = pd.read_csv(tmp_path / "profile" / "scores.csv")
    assert list(scores["optimizer"]) == list(SECONDS_SCORES)  # C, B, A: the seconds' order, not the steps'
    np.testing.assert_allclose(scores["score"], list(SECONDS_SCORES.values()), rtol=1e-12)
    # The rho(tau) of the seconds, at tau = 2 (the core function on the costs it read): A solves
    # P2 and P4 within 2x, B three (never P3), C all four.
    from optbench.profiles import read_costs

    read = read_costs(list(map(Path, folders)), "seconds")
    rho = profile(performance_ratios(read), [1.0, 2.0])
    np.testing.assert_allclose(rho.loc[2.0, ["A", "B", "C"]], [0.5, 0.75, 1.0])
    np.testing.assert_allclose(rho.loc[1.0, ["A", "B", "C"]], [0.0, 0.75, 0.5])
    # A surface records steps only: --cost seconds is refused there, as is an unknown cost.
    assert runner.invoke(app, ["surface", "--opt", "adam", "--fn", "booth", "--out", str(tmp_path), "--no-plot",
                               "-q"]).exit_code == 0
    refused = runner.invoke(app, ["profile", str(tmp_path / "surface" / "booth"), "--cost", "seconds",
                                  "--out", str(tmp_path / "s")])
    assert refused.exit_code == 2 and "not seconds" in refused.output, refused.output
    unknown = runner.invoke(app, ["profile", *folders, "--cost", "minutes", "--out", str(tmp_path / "m")])
    assert unknown.exit_code == 2 and "invalid --cost" in unknown.output, unknown.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1", "0.5"])
def test_a_bad_r_max_is_refused_in_one_line(tmp_path, value):
    result = CliRunner().invoke(app, ["profile", str(tmp_path), "--r-max", value, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "--r-max" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_the_scores_table_counts_what_each_optimizer_solved_and_was_best_on():
    from rich.console import Console

    from optbench.tables import profile_scores

    ratios = performance_ratios(COSTS)
    console = Console(record=True, width=200)
    console.print(profile_scores(integrated_scores(ratios, 4.0), ratios, "t"))
    rows = {line.split("│")[2].strip(): line.split("│") for line in console.export_text().splitlines()
            if line.count("│") > 4 and line.split("│")[2].strip() in COSTS.columns}
    # By hand from COSTS: B never solves P3; best (ratio 1): A on P1 and P4, B on P2 and P4, C on P2 and P3.
    assert {name: (cells[4].strip(), cells[5].strip()) for name, cells in rows.items()} == {
        "A": ("4/4", "2"), "B": ("3/4", "2"), "C": ("4/4", "2")}


def test_profile_with_no_folders_runs_the_problem_set(tmp_path):
    r = CliRunner().invoke(app, ["profile", "--opt", "sgd", "--opt", "adam", "--fn", "bowl", "--fn", "double_well",
                                 "--starts", "grid:3", "--dataset", "none", "--out", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "profile-set"
    for name in ("bowl", "double_well"):
        assert (folder / "surface" / name / "robustness.csv").exists()
        assert (folder / "surface" / name / "tuning.csv").exists()  # each optimizer at its tuned lr
        assert not (folder / "surface" / name / "trajectories.csv").exists()
    costs = pd.read_csv(folder / "profile" / "costs.csv")
    # 9 starts each; the bowl's centre is its minimum, already within tolerance: no problem.
    assert len(costs) == 17 and set(costs.columns) == {"problem", "sgd", "adam"}
    assert not costs["problem"].str.contains(r"bowl from \(0, 0\)", regex=True).any()
    scores = pd.read_csv(folder / "profile" / "scores.csv")
    assert set(scores["optimizer"]) == {"sgd", "adam"} and scores["score"].between(0, 1).all()
    bad = CliRunner().invoke(app, ["profile", "--fn", "saddle", "--dataset", "none", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no minimum" in bad.output
    muon = CliRunner().invoke(app, ["profile", "--opt", "muon", "--dataset", "none", "--out", str(tmp_path / "m")])
    assert muon.exit_code == 2 and "muon" in muon.output and not (tmp_path / "m").exists()


def test_a_profile_over_a_surface_and_an_mnist_run_and_the_html_report_of_them(tmp_path):
    realdata.load("mnist")
    runner = CliRunner()
    r = runner.invoke(app, ["surface", "--opt", "adam", "--opt", "sgd", "--fn", "booth", "--out", str(tmp_path),
                            "--no-plot", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["mnist", "--opt", "adam", "--opt", "sgd", "--hidden", "32", "--iterations", "60",
                            "--eval-every", "20", "--train-size", "2000", "--test-size", "500", "--target", "50",
                            "--out", str(tmp_path), "--name", "m", "--no-plot", "-q"])
    assert r.exit_code == 0, r.output
    folders = [str(tmp_path / "surface" / "booth"), str(tmp_path / "mnist" / "m")]
    r = runner.invoke(app, ["profile", *folders, "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    costs = pd.read_csv(tmp_path / "profile" / "costs.csv").set_index("problem")
    assert list(costs.index) == ["booth (booth)", "mnist (m)"] and set(costs.columns) == {"adam", "sgd"}
    # A cost is a number of steps: at most the run's 60 on MNIST, at one of its evaluations.
    summary = pd.read_csv(tmp_path / "mnist" / "m" / "summary.csv").set_index("optimizer")
    for name in ("adam", "sgd"):
        assert costs.loc["mnist (m)", name] == summary.loc[name, "steps_to_target"] or (
            np.isinf(costs.loc["mnist (m)", name]) and np.isnan(summary.loc[name, "steps_to_target"]))
    r = runner.invoke(app, ["report", "--html", *folders, "--out", str(tmp_path / "html")])
    assert r.exit_code == 0, r.output
    assert "Performance profile over these runs" in (tmp_path / "html" / "report.html").read_text()


def test_a_profile_names_a_folder_that_did_not_finish(tmp_path):
    import json

    runner = CliRunner()
    for name in ("bowl", "booth"):
        assert runner.invoke(app, ["surface", "--opt", "adam", "--opt", "sgd", "--fn", name, "--out", str(tmp_path),
                                   "--no-plot", "-q"]).exit_code == 0
    manifest = tmp_path / "surface" / "booth" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "interrupted"}))
    r = runner.invoke(app, ["profile", str(tmp_path / "surface" / "bowl"), str(tmp_path / "surface" / "booth"),
                            "--out", str(tmp_path)])
    assert r.exit_code == 0 and "not finished" in r.output and "booth" in r.output.split("not finished")[1], r.output


def test_muon_in_a_problem_set_without_surfaces_is_not_refused(tmp_path, monkeypatch):
    # Muon is refused on surfaces only: a set of data sets alone takes it.
    from optbench.problem_set import ProblemSet

    plan = ProblemSet(optimizers=["muon", "adam"], surfaces=[], datasets=["mnist"], epochs=1, train_size=1000,
                      test_size=200)
    plan.check()
    monkeypatch.setattr(ProblemSet, "experiments", lambda self: [])  # what it trains is another test's
    assert plan.run(tmp_path) == []
    with pytest.raises(OptbenchError, match="orthogonalises weight matrices"):
        ProblemSet(optimizers=["muon"], surfaces=["bowl"], datasets=[]).check()


def test_a_summary_without_the_columns_a_profile_reads_is_named_in_one_line(tmp_path):
    folder = tmp_path / "bowl"
    folder.mkdir()
    (folder / "summary.csv").write_text("surface,optimizer\nbowl,adam\n")
    result = CliRunner().invoke(app, ["profile", str(folder)])
    assert result.exit_code == 2 and "missing columns lr, steps_to_tol, diverged" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
