"""Noisy surfaces: Gaussian noise on each gradient, one documented stream per seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.optimizers import make_optimizer
from optbench.surfaces import get_surface
from optbench.trajectories import run

BOWL = get_surface("bowl")  # f = x^2/20 + y^2: gradient (x/10, 2y)


def draws(seed: int, steps: int) -> np.ndarray:
    """The documented stream: SeedSequence([seed, 2]), two standard normals per step."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    return np.array([rng.standard_normal(2) for _ in range(steps)])


def test_sgd_on_the_bowl_follows_the_noisy_recursion_by_hand():
    lr, sigma, steps = 0.1, 0.3, 25
    batch = run(BOWL, make_optimizer("sgd", lr=lr), [(2.0, 1.0)], steps, noise=sigma, seeds=[7])
    p = np.array([2.0, 1.0])
    for xi in draws(7, steps):
        p = p - lr * (p * np.array([0.1, 2.0]) + sigma * xi)
    np.testing.assert_allclose(batch.final_positions[0], p, rtol=1e-13)


def test_no_noise_is_the_plain_run_bitwise_and_seeds_differ():
    opt = lambda: make_optimizer("adam", lr=0.1)  # noqa: E731
    plain = run(BOWL, opt(), [(2.0, 1.0)], 50)
    np.testing.assert_array_equal(run(BOWL, opt(), [(2.0, 1.0)], 50, noise=0.0, seeds=[3]).positions, plain.positions)
    a = run(BOWL, opt(), [(2.0, 1.0)], 50, noise=0.2, seeds=[0]).positions
    np.testing.assert_array_equal(run(BOWL, opt(), [(2.0, 1.0)], 50, noise=0.2, seeds=[0]).positions, a)
    assert not np.array_equal(run(BOWL, opt(), [(2.0, 1.0)], 50, noise=0.2, seeds=[1]).positions, a)


def test_rows_of_one_seed_share_their_draws_and_a_row_alone_gets_what_it_got_in_the_cloud():
    starts = [(2.0, 1.0), (-1.0, 0.5), (2.0, 1.0)]
    cloud = run(BOWL, make_optimizer("sgd", lr=0.1), starts, 30, noise=0.5, seeds=[4, 4, 9])
    # Rows 0 and 2 start alike; seed 4 and seed 9 draw differently.
    assert not np.array_equal(cloud.positions[:, 0], cloud.positions[:, 2])
    for i, (start, seed) in enumerate(zip(starts, [4, 4, 9])):
        alone = run(BOWL, make_optimizer("sgd", lr=0.1), [start], 30, noise=0.5, seeds=[seed])
        np.testing.assert_array_equal(alone.positions[:, 0], cloud.positions[:, i])


runner = CliRunner()


def test_surface_with_seeds_writes_each_member_and_an_aggregate(tmp_path):
    result = runner.invoke(app, ["surface", "--opt", "adam", "--opt", "sgd", "--fn", "bowl", "--noise", "0.05",
                                 "--seeds", "3", "--seed", "10", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "surface" / "bowl"
    summary = pd.read_csv(folder / "summary.csv")
    aggregate = pd.read_csv(folder / "aggregate.csv").set_index("optimizer")
    assert sorted(set(summary["seed"])) == [10, 11, 12] and len(summary) == 6
    assert (aggregate["seeds"] == 3).all()
    adam = summary[summary["optimizer"] == "adam"]
    assert aggregate.loc["adam", "final_loss_median"] == pytest.approx(adam["final_loss"].median())
    assert aggregate.loc["adam", "reached"] == adam["steps_to_tol"].notna().sum()
    assert (folder / "trajectories.png").exists()


@pytest.mark.parametrize("args, fragment", [(["--noise", "-1"], "--noise"), (["--noise", "nan"], "--noise"),
                                            (["--seeds", "0"], "--seeds")])
def test_bad_noise_or_seeds_are_refused(tmp_path, args, fragment):
    result = runner.invoke(app, ["surface", "--opt", "sgd", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
