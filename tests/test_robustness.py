"""Robustness maps (`optbench surface --starts grid:N`): a grid of start points per optimizer as one
population, checked against hand-derived convergence on the bowl and the known basins of the
double well."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.optimizers import select_contenders
from optbench.profiles import read_costs
from optbench.surface_run import grid_starts, parse_starts, robustness, run_surface, start_cells, write_surface_result
from optbench.surfaces import get_surface

BOWL = get_surface("bowl")  # x^2/20 + y^2
WELL = get_surface("double_well")  # x-derivative 4 (x + 1.2)(x - 0.2)(x - 1)
runner = CliRunner()


def sgd_steps_on_the_bowl(x0: float, y0: float, lr: float, tol: float, limit: int) -> int | None:
    """SGD on the bowl by hand: x_t = (1 - lr/10)^t x0 and y_t = (1 - 2 lr)^t y0, so the first t
    with x_t^2/20 + y_t^2 < tol is found by counting (None: not within `limit` steps)."""
    for t in range(limit + 1):
        if x0**2 * (1 - lr / 10) ** (2 * t) / 20 + y0**2 * (1 - 2 * lr) ** (2 * t) < tol:
            return t
    return None


@pytest.mark.parametrize("text", ["grid:1", "grid:101", "grid:", "grid:x", "random:5", "5", "grid:-3"])
def test_bad_starts_are_refused_with_the_form_expected(text):
    with pytest.raises(OptbenchError, match="grid:N"):
        parse_starts(text)


def test_the_grid_is_the_cell_centres_of_the_domain_row_by_row():
    assert parse_starts("grid:4") == 4
    points = np.array(grid_starts(BOWL, 4))  # domain x in [-10, 10], y in [-5, 5]
    assert points.shape == (16, 2)
    np.testing.assert_allclose(np.unique(points[:, 0]), [-7.5, -2.5, 2.5, 7.5])
    np.testing.assert_allclose(np.unique(points[:, 1]), [-3.75, -1.25, 1.25, 3.75])
    np.testing.assert_allclose(points[:4, 1], -3.75)  # the bottom row first, left to right
    np.testing.assert_allclose(points[:4, 0], [-7.5, -2.5, 2.5, 7.5])


def test_on_the_bowl_every_start_converges_for_a_stable_lr_in_the_steps_by_hand():
    lr, steps, tol = 0.3, 400, 1e-3  # stable: lr < 2 / 2 (the y curvature)
    contenders = select_contenders(["sgd"], [f"lr={lr}"], points=True)
    result = run_surface(BOWL, contenders, steps=steps, starts=grid_starts(BOWL, 5), tol=tol)
    cells = start_cells(result.summary)
    assert len(cells) == 25
    for row in cells.itertuples():
        assert row.steps == sgd_steps_on_the_bowl(row.start_x, row.start_y, lr, tol, steps), row
    table = robustness(result.summary)
    assert table[["starts", "reached", "success_rate", "diverged"]].iloc[0].tolist() == [25, 25, 1.0, 0]
    # The start at the minimum itself (the grid's centre) is there at step 0.
    assert cells["steps"].min() == 0


def test_on_the_bowl_an_unstable_lr_diverges_from_every_start_but_the_minimum():
    contenders = select_contenders(["sgd"], ["lr=3"], points=True)  # |1 - 2 lr| = 5 along y: overflows
    result = run_surface(BOWL, contenders, steps=300, starts=grid_starts(BOWL, 5))
    table = robustness(result.summary).iloc[0]
    # Every start with y != 0 blows up; the middle row (y = 0) only sees the stable x direction.
    assert (table["reached"], table["diverged"]) == (5, 20)


def test_on_the_double_well_small_step_sgd_finds_the_global_minimum_exactly_from_its_basin():
    # With lr * max f'' < 1 over the domain (f'' = 12x^2 - 4.96 <= 43.04), the SGD map is
    # monotone along x and never crosses the ridge at x = 0.2: the starts left of it reach the
    # global minimum at x = -1.2, those right of it stay in the local well at x = 1.
    lr = 0.02
    contenders = select_contenders(["sgd"], [f"lr={lr}"], points=True)
    result = run_surface(WELL, contenders, steps=600, starts=grid_starts(WELL, 7))
    cells = start_cells(result.summary)
    left = cells["start_x"] < 0.2
    assert left.sum() == 28 and cells.loc[left, "steps"].notna().all()
    assert cells.loc[~left, "steps"].isna().all()
    final = result.summary
    right = final["start_x"] > 0.2
    np.testing.assert_allclose(final.loc[right, "final_x"], 1.0, atol=1e-6)
    np.testing.assert_allclose(final.loc[~right, "final_x"], -1.2, atol=1e-6)
    assert robustness(result.summary)["success_rate"].iloc[0] == pytest.approx(28 / 49)


def test_a_cell_over_seeds_is_the_median_with_unreached_seeds_counting_as_never():
    rows = []
    for seed, (a, b) in enumerate([(10, None), (20, None), (30, 40)]):
        rows += [{"surface": "bowl", "optimizer": "sgd", "lr": 0.1, "seed": seed, "start_x": 0.0, "start_y": 0.0,
                  "steps_to_tol": a, "diverged": False},
                 {"surface": "bowl", "optimizer": "sgd", "lr": 0.1, "seed": seed, "start_x": 1.0, "start_y": 0.0,
                  "steps_to_tol": b, "diverged": seed == 1}]
    summary = pd.DataFrame(rows).astype({"steps_to_tol": "Int64"})
    cells = start_cells(summary).set_index("start_x")
    assert cells.loc[0.0, "steps"] == 20  # median of 10, 20, 30
    assert math.isnan(cells.loc[1.0, "steps"])  # two of three seeds never reached it
    assert cells.loc[1.0, "diverged"] == 1
    table = robustness(summary).iloc[0]
    assert (table["starts"], table["reached"], table["diverged"], table["steps_to_tol_median"]) == (2, 1, 1, 20)


def test_tuning_over_a_grid_chooses_the_lr_with_the_lowest_median_final_loss(tmp_path):
    result = run_surface(BOWL, select_contenders(["adam"], [], points=True), steps=60,
                         starts=grid_starts(BOWL, 3), tune=True)
    tuning = result.tuning
    assert len(tuning) == 36 * 9 and {"start_x", "start_y"} <= set(tuning.columns)
    final = tuning["final_loss"].where(~tuning["diverged"], np.inf)
    medians = final.groupby(tuning["lr"]).median()
    chosen = tuning.loc[tuning["chosen"], "lr"].unique()
    assert len(chosen) == 1 and medians[chosen[0]] == medians.min()
    assert (result.summary["lr"] == chosen[0]).all()
    files = write_surface_result(result, tmp_path)
    assert {"lr_sensitivity.png", "robustness.png", "robustness.csv"} <= {f.name for f in files}


def test_every_start_of_a_grid_folder_is_a_problem_of_the_profile(tmp_path):
    contenders = select_contenders(["sgd", "adam"], [], points=True)
    write_surface_result(run_surface(BOWL, contenders, steps=200, starts=grid_starts(BOWL, 2)), tmp_path,
                         plot=False)
    costs = read_costs([tmp_path / "surface" / "bowl"])
    assert len(costs) == 4 and set(costs.columns) == {"sgd", "adam"}
    summary = pd.read_csv(tmp_path / "surface" / "bowl" / "summary.csv")
    for row in summary.itertuples():
        cost = costs.loc[f"bowl from ({row.start_x:.4g}, {row.start_y:.4g})", row.optimizer]
        assert cost == (row.steps_to_tol if row.steps_to_tol == row.steps_to_tol else np.inf)


def test_cli_writes_the_maps_and_the_table_and_refuses_bad_combinations(tmp_path):
    out = tmp_path / "res"
    r = runner.invoke(app, ["surface", "--opt", "sgd", "--opt", "adam", "--fn", "double_well", "--starts", "grid:3",
                            "--no-trajectories", "--out", str(out)])
    assert r.exit_code == 0, r.output
    folder = out / "surface" / "double_well"
    names = {p.name for p in folder.iterdir()}
    assert {"summary.csv", "robustness.csv", "robustness.png"} <= names
    assert "trajectories.csv" not in names and "trajectories.png" not in names and "aggregate.csv" not in names
    assert (folder / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(folder / "robustness.csv")
    assert table["starts"].tolist() == [9, 9]
    assert "3 x 3 starts" in r.output and "success" in r.output
    for args, message in [(["--starts", "grid:0"], "grid:N"), (["--starts", "grid:3", "--start", "1", "1"], "not both"),
                          (["--starts", "grid:3", "--animate"], "--animate")]:
        bad = runner.invoke(app, ["surface", "--opt", "sgd", "--out", str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output


def _summary(rows: list[dict]) -> pd.DataFrame:
    """A surface summary.csv by hand: the few columns a test sets, the rest at a finished run's."""
    base = {"surface": "bowl", "optimizer": "adam", "lr": 0.1, "schedule": "constant", "seed": 0, "start_x": -7.0,
            "start_y": 2.0, "steps": 200, "final_x": 0.0, "final_y": 0.0, "final_loss": 1.0, "gap": 1.0,
            "dist_to_min": 0.0, "steps_to_tol": np.nan, "diverged": False, "status": "finished"}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_the_seeds_aggregate_leaves_stopped_runs_out_of_the_losses_and_ranks_by_reached_then_loss():
    from optbench.surface_run import aggregate

    summary = _summary([
        {"seed": 0, "final_loss": 1.0, "gap": 1.0, "steps_to_tol": 10},
        {"seed": 1, "final_loss": 3.0, "gap": 3.0, "steps_to_tol": 30},
        {"seed": 2, "final_loss": 8.0, "gap": 8.0},
        {"seed": 3, "final_loss": 1e250, "gap": 1e250, "diverged": True, "status": "diverged"},
        {"seed": 4, "final_loss": 0.0, "gap": 1e250, "diverged": True, "status": "failed"},  # its rule raised
        # sgd: a lower loss, but reached by one seed only: after adam.
        {"optimizer": "sgd", "seed": 0, "final_loss": 0.1, "gap": 0.1, "steps_to_tol": 50},
        {"optimizer": "sgd", "seed": 1, "final_loss": 0.2, "gap": 0.2},
    ])
    table = aggregate(summary)
    assert table["optimizer"].tolist() == ["adam", "sgd"]
    adam = table.iloc[0]
    assert (adam["seeds"], adam["reached"], adam["diverged"], adam["failed"]) == (5, 2, 1, 1)
    assert (adam["final_loss_median"], adam["final_loss_min"], adam["final_loss_max"]) == (3.0, 1.0, 8.0)
    assert adam["gap_median"] == 3.0 and adam["steps_to_tol_median"] == 20.0


def test_a_start_counts_as_reached_by_the_median_over_its_seeds():
    # Three seeds from one start reach the tolerance in 10, 20 and 90 steps: the median, 20, not
    # the mean, 40; a start where two of three never get there is not reached.
    summary = _summary([
        {"seed": 0, "steps_to_tol": 10}, {"seed": 1, "steps_to_tol": 20}, {"seed": 2, "steps_to_tol": 90},
        {"seed": 0, "start_x": 1.0, "steps_to_tol": 5}, {"seed": 1, "start_x": 1.0}, {"seed": 2, "start_x": 1.0},
    ])
    cells = start_cells(summary).set_index("start_x")
    assert cells.loc[-7.0, "steps"] == 20.0 and np.isnan(cells.loc[1.0, "steps"])
    row = robustness(summary).iloc[0]
    assert (row["starts"], row["reached"], row["success_rate"], row["steps_to_tol_median"]) == (2, 1, 0.5, 20.0)


def test_a_start_counts_once_among_the_diverged_however_many_of_its_seeds_did():
    summary = _summary([
        {"seed": 0, "diverged": True, "status": "diverged"}, {"seed": 1, "diverged": True, "status": "diverged"},
        {"seed": 0, "start_x": 1.0, "steps_to_tol": 5}, {"seed": 1, "start_x": 1.0, "steps_to_tol": 7},
    ])
    assert robustness(summary).iloc[0]["diverged"] == 1


def test_the_summary_is_finished_then_diverged_then_failed_then_by_loss_then_by_steps():
    from optbench.surface_run import sort_summary

    summary = _summary([
        {"optimizer": "failed", "final_loss": 0.0, "diverged": True, "status": "failed"},
        {"optimizer": "diverged", "final_loss": 5.0, "diverged": True, "status": "diverged"},
        {"optimizer": "slow", "final_loss": 0.5, "steps_to_tol": 90},
        {"optimizer": "fast", "final_loss": 0.5, "steps_to_tol": 20},
        {"optimizer": "worse", "final_loss": 0.9, "steps_to_tol": 5},
    ])
    assert sort_summary(summary)["optimizer"].tolist() == ["fast", "slow", "worse", "diverged", "failed"]


def test_the_picture_of_several_seeds_draws_the_first_seed():
    # README: "the picture shows seed S" (--seed S --seeds N).
    from optbench.surface_run import _one_path_per_label

    result = run_surface(get_surface("bowl"), select_contenders(["sgd"], [], points=True), steps=20, noise=0.5,
                         seeds=[5, 6, 7])
    trajectories, summary = _one_path_per_label(result)
    assert set(trajectories["seed"]) == set(summary["seed"]) == {5}
