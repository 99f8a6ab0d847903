"""Learning-rate schedules: equal to PyTorch's compositions step by step, hand-checked shapes,
and applied per step to every member on surfaces and on MNIST."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.optimizers import make_optimizer
from optbench.schedules import Schedule
from optbench.surfaces import get_surface
from optbench.trajectories import run

CASES = [(50, 10, 0.1, 0.3), (40, 0, 0.0, 0.2), (30, 5, 0.5, 0.5), (200, 0.05, 0.01, 0.1), (12, 2, 0.0, 0.5), (10, 0, 0.0, 1.0)]


def torch_factors(kind: str, total: int, warmup: int, min_ratio: float, decay: int) -> np.ndarray:
    """The lr at each update of an SGD with lr 1 under PyTorch's schedulers."""
    torch = pytest.importorskip("torch")
    S = torch.optim.lr_scheduler
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0)
    parts, milestones = [], []
    if warmup:
        parts.append(S.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1))
        milestones.append(warmup)
    if kind == "cosine":
        parts.append(S.CosineAnnealingLR(opt, T_max=total - warmup - 1, eta_min=min_ratio))
    elif kind == "linear":
        parts.append(S.LinearLR(opt, start_factor=1.0, end_factor=min_ratio, total_iters=total - warmup - 1))
    elif kind == "constant":
        parts.append(S.ConstantLR(opt, factor=1.0, total_iters=0))
    else:  # wsd
        parts.append(S.ConstantLR(opt, factor=1.0, total_iters=0))
        milestones.append(total - decay)
        parts.append(S.LinearLR(opt, start_factor=1.0, end_factor=min_ratio, total_iters=decay - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation chatter
        scheduler = parts[0] if len(parts) == 1 else S.SequentialLR(opt, parts, milestones=milestones)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear", "wsd"])
@pytest.mark.parametrize(("total", "warmup", "min_ratio", "decay_fraction"), CASES)
def test_each_schedule_equals_its_pytorch_composition(kind, total, warmup, min_ratio, decay_fraction):
    schedule = Schedule(kind, warmup, min_ratio, decay_fraction)
    expected = torch_factors(kind, total, schedule.warmup_steps(total), min_ratio, schedule.decay_steps(total))
    np.testing.assert_allclose(schedule.factors(total), expected, rtol=1e-14, atol=1e-15)


def test_shapes_by_hand():
    t = np.arange(1, 102)
    np.testing.assert_allclose(Schedule("linear").factors(101), 1 - (t - 1) / 100, atol=1e-15)
    cosine = Schedule("cosine", min_lr_ratio=0.2).factors(101)
    assert cosine[0] == 1 and math.isclose(cosine[50], 0.6) and math.isclose(cosine[-1], 0.2)
    warm = Schedule("constant", warmup=4).factors(10)
    np.testing.assert_allclose(warm, [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1])
    wsd = Schedule("wsd", warmup=0.1, min_lr_ratio=0.0, decay_fraction=0.5).factors(20)
    np.testing.assert_allclose(wsd[:2], [0.5, 1.0])
    assert (wsd[2:10] == 1).all() and wsd[-1] == 0 and np.all(np.diff(wsd[10:]) < 0)
    assert Schedule(warmup=0.25).warmup_steps(40) == 10  # a fraction of the run


def test_a_decay_of_one_step_ends_at_the_minimum_and_a_warmup_fraction_rounds_halves_up():
    # PyTorch's compositions divide by zero here; the docstring's promise is the oracle: the
    # last step of a decaying schedule is at min_lr_ratio x peak.
    np.testing.assert_array_equal(Schedule("wsd", min_lr_ratio=0.1).factors(7), [1, 1, 1, 1, 1, 1, 0.1])
    np.testing.assert_array_equal(Schedule("cosine", warmup=1).factors(2), [1, 0])
    np.testing.assert_array_equal(Schedule("linear", warmup=2, min_lr_ratio=0.5).factors(3), [0.5, 1, 0.5])
    np.testing.assert_array_equal(Schedule("cosine").factors(1), [1])  # a run of one step moves at the peak
    # 10 % of 25 steps is 2.5: three steps of warmup, as of 35 (3.5) it is four.
    assert [Schedule(warmup=0.1).warmup_steps(t) for t in (15, 25, 35, 45)] == [2, 3, 4, 5]


def test_a_decay_fraction_rounds_to_the_nearest_step_halves_up_as_the_warmup_does():
    # wsd decays over the last round(D x T) steps: 0.1 x 27 = 2.7 and 0.1 x 25 = 2.5 are both 3,
    # a straight line from the peak to the minimum over them.
    for total in (27, 25):
        factors = Schedule("wsd", min_lr_ratio=0.0, decay_fraction=0.1).factors(total)
        np.testing.assert_array_equal(factors[-4:], [1, 1, 0.5, 0])
    assert Schedule("wsd", decay_fraction=0.1).decay_steps(24) == 2  # 2.4


def test_a_constant_schedule_with_a_warmup_is_not_the_constant_lr():
    from optbench.schedules import ScheduledLRs

    schedule = Schedule("constant", warmup=4)
    assert not schedule.is_constant and schedule.label() == "constant, warmup 4"
    opt = make_optimizer("sgd", lr=1.0)
    lrs = ScheduledLRs([opt], schedule, 10)
    seen = []
    for t in range(1, 11):
        lrs.at(t)
        seen.append(opt.lr)
    lrs.restore()
    np.testing.assert_allclose(seen, [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1])
    assert opt.lr == 1.0


def test_sgd_on_a_bowl_takes_the_scheduled_step_sizes():
    # On f = x^2/20 + y^2 an SGD step multiplies each coordinate by (1 - lr_t * a): the product
    # of those factors is the closed form.
    surface = get_surface("bowl")
    schedule = Schedule("cosine", warmup=5, min_lr_ratio=0.1)
    steps, lr = 40, 0.3
    batch = run(surface, make_optimizer("sgd", lr=lr), [(2.0, 1.0)], steps, schedule)
    lrs = lr * schedule.factors(steps)
    expected = np.array([2.0 * np.prod(1 - lrs * (2 / 20)), 1.0 * np.prod(1 - lrs * 2)])
    np.testing.assert_allclose(batch.final_positions[0], expected, rtol=1e-12)


runner = CliRunner()


@pytest.mark.parametrize("args, fragment", [
    (["--schedule", "step"], "unknown schedule"),
    (["--schedule", "cosine", "--warmup", "500"], "not shorter than the run"),
    (["--schedule", "wsd", "--decay-fraction", "1.5"], "--decay-fraction"),
    (["--schedule", "wsd", "--decay-fraction", "0"], "--decay-fraction"),
    (["--schedule", "linear", "--min-lr-ratio", "2"], "--min-lr-ratio"),
    (["--warmup", "2.5"], "--warmup"),
])
@pytest.mark.parametrize("command", ["surface", "mnist"])
def test_bad_schedules_are_refused_in_one_line_with_nothing_written(tmp_path, command, args, fragment):
    size = ["--iterations", "100"] if command == "mnist" else ["--steps", "100"]
    result = runner.invoke(app, [command, "--opt", "sgd", *size, *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_scheduled_mnist_run_records_its_schedule(tmp_path):
    result = runner.invoke(app, [
        "mnist", "--opt", "sgd", "--opt", "adam", "--iterations", "60", "--eval-every", "30", "--train-size", "2000",
        "--test-size", "500", "--schedule", "cosine", "--warmup", "0.1", "--min-lr-ratio", "0.01", "--no-plot",
        "--name", "run", "--out", str(tmp_path), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "mnist" / "run"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["schedule"] == {"kind": "cosine", "warmup": 0.1, "min_lr_ratio": 0.01,
                                              "decay_fraction": 0.2}
    import pandas as pd

    summary = pd.read_csv(folder / "summary.csv")
    assert set(summary["schedule"]) == {"cosine, warmup 0.1, min 0.01"}
    assert set(summary["lr"]) == {0.01, 0.001}  # the peaks: what --lr and --tune set


def test_a_schedule_changes_the_training_and_leaves_the_peak_lr_on_the_optimizer():
    from optbench.mlp import Population
    from optbench.training import train_population

    rng = np.random.default_rng(0)
    x = rng.random((512, 784), dtype=np.float32)
    y = rng.integers(0, 10, 512)
    logs = []
    for schedule in (Schedule(), Schedule("linear", warmup=4)):
        pop = Population((784, 16, 10), [0])
        opt = make_optimizer("sgd", lr=0.1)
        logs.append(train_population(pop, [opt], x, y, {}, iterations=16, batch_size=32, schedule=schedule).losses[0])
        assert opt.lr == 0.1
    assert logs[0][0] == logs[1][0]  # the first loss comes before any update
    assert not np.array_equal(logs[0][1:], logs[1][1:])


def test_schedule_check_refuses_a_warmup_into_the_decay():
    with pytest.raises(OptbenchError, match="runs into the decay"):
        Schedule("wsd", warmup=9, decay_fraction=0.5).check(16)


def test_tuning_under_a_schedule_tunes_the_peak_and_keeps_the_schedule(tmp_path):
    result = runner.invoke(app, [
        "mnist", "--opt", "sgd", "--tune", "--iterations", "40", "--train-size", "3000", "--validation", "1000",
        "--test-size", "500", "--schedule", "wsd", "--warmup", "4", "--no-plot", "--name", "run", "--out",
        str(tmp_path), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    import pandas as pd

    folder = tmp_path / "mnist" / "run"
    tuning = pd.read_csv(folder / "tuning.csv")
    summary = pd.read_csv(folder / "summary.csv")
    assert len(tuning) == 7 and tuning["chosen"].sum() == 1
    assert summary["lr"].iloc[0] == tuning.loc[tuning["chosen"], "lr"].iloc[0]  # the peak lr chosen
    assert summary["schedule"].iloc[0] == "wsd, warmup 4, min 0, decay 0.2"
    assert json.loads((folder / "manifest.json").read_text())["config"]["schedule"]["kind"] == "wsd"


def test_the_python_api_takes_a_schedule():
    import optbench

    problem = optbench.MnistProblem(iterations=20, train_size=1000, test_size=200,
                                    schedule=optbench.Schedule("cosine", warmup=0.2))
    assert problem.total_steps == 20
    with pytest.raises(OptbenchError, match="not shorter"):
        optbench.MnistProblem(iterations=20, train_size=1000, schedule=optbench.Schedule(warmup=20)).check()


def test_a_schedule_too_long_for_one_surface_stops_before_any_is_written(tmp_path):
    result = runner.invoke(app, ["surface", "--opt", "sgd", "--fn", "rosenbrock", "--fn", "bowl", "--warmup", "300",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not shorter" in result.output
    assert not (tmp_path / "out").exists()
