"""The MNIST figures and tables over many members (optimizer × lr × seed), and over old runs.

Figures are checked on the matplotlib objects they were drawn from (caught before `_save`
closes them): which series have a band, what the legend says, where the median line lies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from rich.console import Console

from optbench import plots, tables
from optbench.spread import aggregate

ITERATIONS = 60  # 3 epochs of 20 iterations


def population():
    """curves, epochs, summary of: adam at two lrs × 3 seeds, sgd at one lr × 1 seed."""
    rng = np.random.default_rng(0)
    members = [("adam", 0.001, s) for s in range(3)] + [("adam", 0.01, s) for s in range(3)] + [("sgd", 0.1, 0)]
    curves, epochs, summary = [], [], []
    for k, (optimizer, lr, seed) in enumerate(members):
        it = np.arange(1, ITERATIONS + 1)
        loss = 2.0 * np.exp(-it / (20 + 5 * k)) + 0.05 * rng.random(ITERATIONS)
        curves.append(pd.DataFrame({"optimizer": optimizer, "device": "cpu", "lr": lr, "seed": seed,
                                    "epoch": (it - 1) // 20 + 1, "iteration": it, "train_loss": loss}))
        # Accuracy of seed s at epoch e: 0.80 + 0.05 e + 0.01 s (adam), so the median over seeds is seed 1's.
        acc = [0.80 + 0.05 * e + 0.01 * seed for e in (1, 2, 3)]
        epochs.append(pd.DataFrame({
            "optimizer": optimizer, "device": "cpu", "lr": lr, "seed": seed, "epoch": [1, 2, 3],
            "iteration": [20, 40, 60], "train_loss": loss[[19, 39, 59]], "val_loss": np.nan, "val_acc": np.nan,
            "test_loss": 0.3, "test_acc": acc, "epoch_seconds": 1.0 + seed, "samples_per_s": 1000.0}))
        summary.append({"optimizer": optimizer, "device": "cpu", "lr": lr, "seed": seed, "epochs": 3,
                        "final_test_acc": acc[-1], "best_test_acc": acc[-1], "final_val_acc": np.nan,
                        "best_val_acc": np.nan, "final_train_loss": loss[-1], "mean_epoch_seconds": 1.0 + seed,
                        "samples_per_s": 1000.0, "diverged": False, "status": "finished"})
    return pd.concat(curves, ignore_index=True), pd.concat(epochs, ignore_index=True), pd.DataFrame(summary)


@pytest.fixture
def figures(monkeypatch):
    """The figures handed to `_save`, in order, still open."""
    caught = []
    save = plots._save

    def catch(fig, path):
        legend = fig.axes[0].get_legend()
        caught.append({"axes": fig.axes[0], "legend": [t.get_text() for t in legend.get_texts()] if legend else []})
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", catch)
    return caught


def bands(ax) -> int:
    return sum(isinstance(c, PolyCollection) for c in ax.collections)


def test_multi_seed_plots(tmp_path, figures):
    curves, epochs, summary = population()
    for path in (plots.save_loss_curves(curves, tmp_path / "loss.png"), plots.save_accuracy(epochs, tmp_path / "acc.png"),
                 plots.save_epoch_times(summary, tmp_path / "time.png")):
        assert path.stat().st_size > 10_000
    loss, accuracy, _ = figures
    expected = ["adam lr=0.001", "adam lr=0.01", "sgd lr=0.1"]  # adam has two lrs: every label shows its lr
    assert loss["legend"] == expected and accuracy["legend"] == expected
    # A band for each 3-seed series, none for sgd's single seed.
    assert bands(loss["axes"]) == 2 and bands(accuracy["axes"]) == 2
    # The median accuracy over seeds 0, 1, 2 is seed 1's: 100 * (0.81 + 0.05 e).
    line = accuracy["axes"].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), [86.0, 91.0, 96.0])
    # Three seeds: the band is min-max, seed 0 .. seed 2.
    vertices = accuracy["axes"].collections[0].get_paths()[0].vertices[:, 1]
    assert vertices.min() == pytest.approx(85.0) and vertices.max() == pytest.approx(97.0)


def test_epoch_times_bars_and_error_bars(tmp_path, figures):
    _, _, summary = population()
    plots.save_epoch_times(summary, tmp_path / "time.png")
    ax = figures[0]["axes"]
    # One bar per (optimizer, lr) on the single device; the height is the mean of 1, 2, 3 seconds.
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([2.0, 2.0, 1.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["adam lr=0.001", "adam lr=0.01", "sgd lr=0.1"]
    # Error bars (min 1 .. max 3) on the two 3-seed bars only.
    segments = [seg for c in ax.collections for seg in c.get_segments()]
    assert len(segments) == 2
    assert all(seg[:, 1].min() == pytest.approx(1.0) and seg[:, 1].max() == pytest.approx(3.0) for seg in segments)


def old_run():
    """A run written before populations: no lr or seed in curves/epochs, no val_*, no seed in the summary."""
    it = np.arange(1, 41)
    curves = pd.concat([pd.DataFrame({"optimizer": o, "device": "cpu", "epoch": (it - 1) // 20 + 1, "iteration": it,
                                      "train_loss": np.exp(-it / 30) + 0.01}) for o in ("adam", "sgd")], ignore_index=True)
    epochs = pd.DataFrame({"optimizer": ["adam", "adam", "sgd", "sgd"], "device": "cpu", "epoch": [1, 2, 1, 2],
                           "train_loss": 0.3, "test_loss": 0.3, "test_acc": [0.9, 0.95, 0.8, 0.85],
                           "epoch_seconds": 1.0, "samples_per_s": 1000.0, "iteration": [20, 40, 20, 40]})
    summary = pd.DataFrame({"optimizer": ["adam", "sgd"], "device": "cpu", "lr": [0.001, 0.01], "epochs": 2,
                            "final_test_acc": [0.95, 0.85], "best_test_acc": [0.95, 0.85], "final_train_loss": 0.3,
                            "mean_epoch_seconds": [1.0, 1.5], "samples_per_s": 1000.0, "diverged": False,
                            "status": "finished"})
    return curves, epochs, summary


def test_old_format_plots(tmp_path, figures):
    curves, epochs, summary = old_run()
    for path in (plots.save_loss_curves(curves, tmp_path / "loss.png"), plots.save_accuracy(epochs, tmp_path / "acc.png"),
                 plots.save_epoch_times(summary, tmp_path / "time.png")):
        assert path.stat().st_size > 10_000
    loss, accuracy, times = figures
    assert loss["legend"] == ["adam", "sgd"] and accuracy["legend"] == ["adam", "sgd"]
    assert bands(loss["axes"]) == 0 and bands(accuracy["axes"]) == 0
    np.testing.assert_allclose(accuracy["axes"].get_lines()[1].get_ydata(), [80.0, 85.0])
    assert [p.get_height() for p in times["axes"].patches] == pytest.approx([1.0, 1.5])


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_mnist_aggregate_spread_only_for_several_seeds():
    _, _, summary = population()
    text = render(tables.mnist_aggregate(aggregate(summary), "aggregate"))
    lines = {" ".join(line.split()[:2]): line for line in text.splitlines() if len(line.split()) > 3}
    # adam lr=0.001, 3 seeds: final accuracy 0.95, 0.96, 0.97 -> 96.00 ± 1.00 (std of 1, 0, -1 points).
    assert "96.00 ± 1.00" in lines["adam 0.001"]
    assert "±" not in lines["sgd 0.1"] and "95.00" in lines["sgd 0.1"]


def test_mnist_aggregate_fits_an_80_column_terminal_whole():
    _, _, summary = population()
    console = Console(record=True, width=80)
    console.print(tables.mnist_aggregate(aggregate(summary), "aggregate"))
    text = console.export_text()
    assert "…" not in text and "96.00 ± 1.00" in text


def test_mnist_aggregate_colours_and_escapes():
    frame = pd.DataFrame([
        {"optimizer": "adam [run1]", "device": "cpu", "lr": 0.001, "seeds": 2, "final_test_acc_mean": 0.9,
         "final_test_acc_std": 0.01, "best_test_acc_mean": 0.9, "best_test_acc_std": 0.01, "final_train_loss_mean": 0.1,
         "final_train_loss_std": 0.01, "mean_epoch_seconds": 1.0, "diverged": 1, "status": "1 diverged"},
        {"optimizer": "sgd", "device": "cpu", "lr": 10.0, "seeds": 2, "final_test_acc_mean": np.nan,
         "final_test_acc_std": np.nan, "best_test_acc_mean": 0.1, "best_test_acc_std": 0.0,
         "final_train_loss_mean": np.nan, "final_train_loss_std": np.nan, "mean_epoch_seconds": 1.0,
         "diverged": 2, "status": "2 diverged"},
    ])
    table = tables.mnist_aggregate(frame, "t")
    assert [row.style for row in table.rows] == ["yellow", "red"]
    text = render(table)
    assert "adam [run1]" in text and "2 diverged" in text


def test_mnist_summary_seed_column_only_for_several_seeds():
    _, _, summary = population()
    several = render(tables.mnist_summary(summary, "members"))
    one = render(tables.mnist_summary(summary[summary["seed"] == 0], "members"))
    header = lambda text: next(line for line in text.splitlines() if "optimizer" in line)  # noqa: E731
    assert "seed" in header(several) and "seed" not in header(one)
    assert "lr" in header(one)
    _, _, old = old_run()
    assert "seed" not in header(render(tables.mnist_summary(old, "old")))


def test_tuning_table():
    tuning = pd.DataFrame({
        "optimizer": ["adam"] * 3 + ["sgd"] * 2, "lr": [1e-4, 1e-3, 1e-2, 0.1, 1.0], "seed": 0,
        "final_val_acc": [0.90, 0.97, 0.30, 0.91, 0.1], "best_val_acc": [0.91, 0.975, 0.50, 0.92, 0.1],
        "final_val_loss": 0.3, "final_train_loss": 0.3,
        "diverged": [False, False, True, False, True], "chosen": [False, True, False, True, False]})
    text = render(tables.tuning_table(tuning, "tuning"))
    adam = next(line for line in text.splitlines() if "adam" in line)
    sgd = next(line for line in text.splitlines() if "sgd" in line)
    assert "0.001" in adam and "97.50" in adam and "1 of 3" in adam
    assert "0.1" in sgd and "92.00" in sgd and "1 of 2" in sgd


def test_the_tuning_table_counts_lrs_not_seeds():
    # Two seeds per lr: "diverged lrs" is over the grid's three lrs, an lr counted once however
    # many of its seeds diverged.
    tuning = pd.DataFrame({
        "optimizer": "adam", "lr": [1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2], "seed": [0, 1] * 3,
        "final_val_acc": 0.9, "best_val_acc": 0.9, "final_val_loss": 0.3, "final_train_loss": 0.3,
        "diverged": [False, False, False, False, True, True], "chosen": [False, False, True, True, False, False]})
    assert "1 of 3" in render(tables.tuning_table(tuning, "tuning"))


def test_two_seeds_show_mean_and_std():
    _, _, summary = population()
    two = summary[(summary["optimizer"] == "adam") & (summary["lr"] == 0.001) & (summary["seed"] < 2)]
    text = render(tables.mnist_aggregate(aggregate(two), "aggregate"))
    # final accuracy 0.95 and 0.96: mean 95.50, sample std 0.71 points.
    assert "95.50 ± 0.71" in text


def test_surface_tables_say_where_a_run_diverged_and_give_ranges_low_to_high():
    from optbench.optimizers import select_contenders
    from optbench.surface_run import run_surface
    from optbench.surfaces import get_surface

    result = run_surface(get_surface("rosenbrock"), select_contenders(["sgd", "adam"], [], points=True), lrs=[0.5],
                         steps=50)
    finite = result.trajectories.dropna(subset=["loss"])
    last = int(finite[finite["optimizer"] == "sgd"]["step"].max())  # its last finite step
    text = render(tables.surface_summary(result.summary, "t"))
    assert f"sgd (diverged at step {last + 1})" in text
    frame = pd.DataFrame([{"optimizer": "adam", "lr": 0.1, "seeds": 3, "final_loss_median": 2.0,
                           "final_loss_min": 1.0, "final_loss_max": 10.0, "reached": 1, "steps_to_tol_median": 40.0,
                           "diverged": 0}])
    assert "1–10" in render(tables.surface_aggregate(frame, "t"))
    # The steps column is the steps to the tolerance, not the steps run.
    summary = pd.DataFrame([{"optimizer": "adam", "lr": 0.1, "final_loss": 1e-5, "gap": 1e-5, "dist_to_min": 1e-3,
                             "steps_to_tol": 137, "steps": 500, "final_x": 1.0, "final_y": 1.0, "diverged": False,
                             "status": "finished"}])
    row = next(line for line in render(tables.surface_summary(summary, "t")).splitlines() if "adam" in line)
    assert "137" in row and "500" not in row


def test_sweep_tables_show_accuracy_in_percent_and_ranges_low_to_high():
    frame = pd.DataFrame([{"problem": "mnist", "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "seeds": 3,
                           "finished": 2, "metric": "final_test_acc", "metric_median": 0.9735, "metric_min": 0.9721,
                           "metric_max": 0.9749, "reached": 2, "steps_to_target_median": 900.0, "diverged": 0}])
    text = render(tables.sweep_aggregate(frame, "sweep"))
    assert "97.35%" in text and "97.21%–97.49%" in text
    assert "2/3" in text  # reached of all the cells, a diverged one included


def test_each_builtin_optimizer_keeps_its_style_from_figure_to_figure():
    from optbench.optimizers import OPTIMIZERS

    everyone = plots.optimizer_styles(list(OPTIMIZERS))
    assert len({(s["color"], s["linestyle"]) for s in everyone.values()}) == len(OPTIMIZERS)  # no two alike
    ranked = plots.optimizer_styles(["lion", "adam", "sgd"])  # another figure, another order
    assert all(ranked[name] == everyone[name] for name in ranked)
    mine = plots.optimizer_styles(["adam", "MyRule"])  # a user's class: a style no built-in has
    assert (mine["MyRule"]["color"], mine["MyRule"]["linestyle"]) not in {(s["color"], s["linestyle"]) for s in everyone.values()}
    lrs = plots.optimizer_styles([("adam", 0.01), ("adam", 0.1)])  # two series of one optimizer: told apart
    assert lrs[("adam", 0.01)] != lrs[("adam", 0.1)]


def test_a_path_far_outside_the_picture_draws_no_chord_across_it_and_its_end_is_marked_at_the_edge():
    from optbench.surfaces import get_surface

    bowl = get_surface("bowl")  # domain x in [-10, 10], y in [-5, 5]
    xs = np.array([-7.0, -20.0, 1e6, -1e6, 30.0])
    ys = np.array([2.0, 2.0, 0.0, 0.0, 0.0])
    vx, vy = plots._visible(bowl, xs, ys)
    # The start, and the step out of the picture beside it; the three far out on both sides go.
    assert vx[:2].tolist() == [-7.0, -20.0] and np.isnan(vx[2:]).all() and np.isnan(vy[2:]).all()
    x, y, outside = plots._end_point(bowl, xs, ys)
    # It left between (-7, 2) and (-20, 2): through the edge x = -10, at y = 2.
    assert outside and (x, y) == (-10.0, 2.0)
    assert plots._end_point(bowl, np.array([-7.0, 1.0]), np.array([2.0, 0.5])) == (1.0, 0.5, False)


def test_a_series_with_no_evaluation_shifts_no_style_and_the_legend_says_what_stopped():
    summary = pd.DataFrame({"optimizer": ["adam", "adam", "sgd", "sgd", "sgd"], "device": "cpu",
                            "lr": [0.1, 10.0, 0.1, 10.0, 10.0], "seed": [0, 0, 0, 0, 1],
                            "status": ["finished", "failed", "finished", "diverged", "finished"]})
    epochs = summary[~((summary["optimizer"] == "adam") & (summary["lr"] == 10.0))]  # it never reached an evaluation
    with_all, partial = plots._Series(summary), plots._Series(epochs, summary)
    for optimizer, lr in (("adam", 0.1), ("sgd", 0.1), ("sgd", 10.0)):
        assert partial.style(optimizer, lr, "cpu")["color"] == with_all.style(optimizer, lr, "cpu")["color"]
    assert plots._stopped(summary) == {("adam", 10.0, "cpu"): "failed", ("sgd", 10.0, "cpu"): "1/2 diverged"}
    assert partial.style("sgd", 10.0, "cpu", plots._stopped(summary))["label"] == "sgd lr=10 — 1/2 diverged"
