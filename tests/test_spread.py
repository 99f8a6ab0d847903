"""spread: aggregate.csv from a hand-built summary, bands over seeds, legend labels.

Every expected number is worked out by hand here, never by the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optbench import spread
from optbench.spread import AGGREGATE_COLUMNS, IQR_FROM_SEEDS, aggregate, band, series_label

SUMMARY_COLUMNS = ["optimizer", "device", "lr", "seed", "epochs", "final_test_acc", "best_test_acc", "final_val_acc",
                   "best_val_acc", "final_train_loss", "mean_epoch_seconds", "samples_per_s", "diverged", "status"]


def member(optimizer, lr, seed, final, best, loss, seconds, samples, diverged=False, status="finished"):
    return [optimizer, "cpu", lr, seed, 5, final, best, np.nan, np.nan, loss, seconds, samples, diverged, status]


@pytest.fixture
def summary():
    # Interleaved on purpose: aggregate must group and then sort, not keep the input order.
    return pd.DataFrame([
        member("sgd", 0.01, 0, 0.89, 0.90, 0.5, 4.0, 50.0),
        member("adam", 0.001, 0, 0.96, 0.97, 0.1, 1.0, 100.0),
        member("rmsprop", 0.01, 0, 0.99, 0.99, np.inf, 1.0, 10.0, diverged=True, status="diverged"),
        member("sgd", 0.01, 1, 0.91, 0.92, 0.7, 6.0, 70.0),
        member("adam", 0.001, 1, 0.97, 0.98, 0.2, 2.0, 200.0),
        # A diverged seed: its loss is inf, and inf is skipped like NaN.
        member("sgd", 0.01, 2, 0.098, 0.10, np.inf, 5.0, 60.0, diverged=True, status="diverged"),
        # An interrupted seed that never reached its final evaluation: NaN.
        member("adam", 0.001, 2, np.nan, 0.96, 0.3, 3.0, 300.0, status="interrupted"),
    ], columns=SUMMARY_COLUMNS)


def test_aggregate_columns_and_order(summary):
    agg = aggregate(summary)
    assert list(agg.columns) == AGGREGATE_COLUMNS
    assert AGGREGATE_COLUMNS[:4] == ["optimizer", "device", "lr", "seeds"]
    assert AGGREGATE_COLUMNS[4:8] == ["final_test_acc_mean", "final_test_acc_std", "final_test_acc_min", "final_test_acc_max"]
    assert AGGREGATE_COLUMNS[-10:-8] == ["mean_epoch_seconds", "samples_per_s"]
    assert AGGREGATE_COLUMNS[-2:] == ["diverged", "status"]
    # Time to target: the median over the seeds that reached it, and how many did.
    assert AGGREGATE_COLUMNS[-8:-2] == ["steps_to_target_median", "seconds_to_target_median", "reached_target",
                                        "steps_to_loss_median", "seconds_to_loss_median", "reached_loss"]
    # Best first by best_test_acc_mean (adam 0.97 > sgd 0.64); rmsprop, every seed diverged, last
    # although its accuracy is the highest.
    assert list(agg["optimizer"]) == ["adam", "sgd", "rmsprop"]
    assert list(agg["seeds"]) == [3, 3, 1]
    assert list(agg["diverged"]) == [0, 1, 1]
    assert list(agg["status"]) == ["1 interrupted", "1 diverged", "1 diverged"]


def test_aggregate_statistics_by_hand(summary):
    agg = aggregate(summary).set_index("optimizer")
    adam, sgd, rmsprop = agg.loc["adam"], agg.loc["sgd"], agg.loc["rmsprop"]
    # adam best: 0.97, 0.98, 0.96 -> mean 0.97, deviations 0, ±0.01 -> std sqrt(2e-4 / 2) = 0.01.
    assert adam["best_test_acc_mean"] == pytest.approx(0.97)
    assert adam["best_test_acc_std"] == pytest.approx(0.01)
    assert (adam["best_test_acc_min"], adam["best_test_acc_max"]) == (0.96, 0.98)
    # adam final: NaN skipped -> 0.96, 0.97: mean 0.965, std sqrt(2 * 0.005**2 / 1).
    assert adam["final_test_acc_mean"] == pytest.approx(0.965)
    assert adam["final_test_acc_std"] == pytest.approx(0.005 * math.sqrt(2))
    assert (adam["final_test_acc_min"], adam["final_test_acc_max"]) == (0.96, 0.97)
    assert adam["final_train_loss_mean"] == pytest.approx(0.2)
    assert adam["final_train_loss_std"] == pytest.approx(0.1)
    assert adam["mean_epoch_seconds"] == pytest.approx(2.0) and adam["samples_per_s"] == pytest.approx(200.0)
    # sgd best: 0.90, 0.92, 0.10 -> mean 0.64; deviations 0.26, 0.28, -0.54.
    assert sgd["best_test_acc_mean"] == pytest.approx(0.64)
    assert sgd["best_test_acc_std"] == pytest.approx(math.sqrt((0.26**2 + 0.28**2 + 0.54**2) / 2))
    assert (sgd["best_test_acc_min"], sgd["best_test_acc_max"]) == (0.10, 0.92)
    # sgd loss: the diverged seed's inf skipped -> 0.5, 0.7.
    assert sgd["final_train_loss_mean"] == pytest.approx(0.6)
    assert sgd["final_train_loss_std"] == pytest.approx(math.sqrt(0.02))
    assert sgd["final_train_loss_max"] == 0.7
    assert sgd["mean_epoch_seconds"] == pytest.approx(5.0)
    # One seed: std is NaN (ddof=1); no finite loss at all: every loss statistic NaN.
    assert np.isnan(rmsprop["best_test_acc_std"]) and rmsprop["best_test_acc_mean"] == 0.99
    assert np.isnan(rmsprop["final_train_loss_mean"]) and np.isnan(rmsprop["final_train_loss_min"])


def test_aggregate_status_strings():
    frame = pd.DataFrame([
        member("a", 0.1, 0, 0.5, 0.5, 1.0, 1.0, 1.0),
        member("a", 0.1, 1, 0.5, 0.6, 1.0, 1.0, 1.0),
        member("b", 0.1, 0, 0.5, 0.5, 1.0, 1.0, 1.0, status="interrupted"),
        member("b", 0.1, 1, 0.1, 0.1, np.inf, 1.0, 1.0, diverged=True, status="diverged"),
        member("b", 0.1, 2, 0.5, 0.5, 1.0, 1.0, 1.0),
        member("c", 0.1, 0, 0.1, 0.1, np.inf, 1.0, 1.0, diverged=True, status="diverged"),
        member("c", 0.1, 1, 0.1, 0.1, np.inf, 1.0, 1.0, diverged=True, status="diverged"),
    ], columns=SUMMARY_COLUMNS)
    agg = aggregate(frame).set_index("optimizer")
    assert agg.loc["a", "status"] == "finished"
    assert agg.loc["b", "status"] == "1 diverged, 1 interrupted"
    assert agg.loc["c", "status"] == "2 diverged" and agg.loc["c", "diverged"] == 2


def test_aggregate_keeps_lrs_and_devices_apart():
    frame = pd.DataFrame([
        member("adam", 0.001, 0, 0.9, 0.9, 1.0, 1.0, 1.0),
        member("adam", 0.01, 0, 0.8, 0.8, 1.0, 1.0, 1.0),
        member("adam", 0.001, 1, 0.7, 0.7, 1.0, 1.0, 1.0),
    ], columns=SUMMARY_COLUMNS)
    frame.loc[2, "device"] = "gpu"
    agg = aggregate(frame)
    assert list(zip(agg["device"], agg["lr"], agg["seeds"])) == [("cpu", 0.001, 1), ("cpu", 0.01, 1), ("gpu", 0.001, 1)]


def test_time_to_target_is_the_median_over_the_seeds_that_reached_it():
    frame = pd.DataFrame([member("adam", 0.001, s, 0.97, 0.97, 0.1, 1.0, 10.0) for s in range(4)], columns=SUMMARY_COLUMNS)
    frame["steps_to_target"] = [100, 200, 900, np.nan]  # the fourth never reached it
    frame["seconds_to_target"] = [1.0, 2.0, 9.0, np.nan]
    row = aggregate(frame).iloc[0]
    assert (row["steps_to_target_median"], row["seconds_to_target_median"], row["reached_target"]) == (200, 2.0, 3)


def test_a_failed_seed_counts_in_the_seeds_but_its_numbers_in_no_statistic():
    # A user's rule that raised: what it had reached before is no result (README, "Your own
    # optimizer"); the other seeds' statistics are those of the two that finished.
    frame = pd.DataFrame([
        member("mine", 0.01, 0, 0.90, 0.91, 0.4, 1.0, 10.0),
        member("mine", 0.01, 1, 0.94, 0.95, 0.2, 1.0, 10.0),
        member("mine", 0.01, 2, 0.99, 0.99, 0.01, 1.0, 10.0, status="failed"),
    ], columns=SUMMARY_COLUMNS)
    row = aggregate(frame).iloc[0]
    assert row["seeds"] == 3 and row["status"] == "1 failed"
    assert row["final_test_acc_mean"] == pytest.approx(0.92) and row["final_test_acc_max"] == 0.94
    assert row["best_test_acc_max"] == 0.95 and row["final_train_loss_min"] == 0.2


def test_aggregate_of_a_summary_without_status():
    frame = pd.DataFrame([member("a", 0.1, 0, 0.5, 0.5, 1.0, 1.0, 1.0),
                          member("a", 0.1, 1, 0.1, 0.1, np.inf, 1.0, 1.0, diverged=True)],
                         columns=SUMMARY_COLUMNS).drop(columns="status")
    assert aggregate(frame).loc[0, "status"] == "1 diverged"


def frame_of(values_by_x: dict, optimizer="adam") -> pd.DataFrame:
    return pd.DataFrame([{"optimizer": optimizer, "seed": seed, "epoch": x, "acc": v}
                         for x, values in values_by_x.items() for seed, v in enumerate(values)])


def test_band_min_max_below_five_seeds():
    assert IQR_FROM_SEEDS == 5
    b = band(frame_of({1: [3.0, 1.0, 10.0, 2.0], 2: [5.0, 7.0]}), "epoch", "acc", ["optimizer"])
    assert list(b.columns) == ["optimizer", "epoch", "n", "median", "lo", "hi"]
    first, second = b.iloc[0], b.iloc[1]
    # Sorted 1, 2, 3, 10: median (2 + 3) / 2, range 1 .. 10.
    assert (first["epoch"], first["n"], first["median"], first["lo"], first["hi"]) == (1, 4, 2.5, 1.0, 10.0)
    assert (second["n"], second["median"], second["lo"], second["hi"]) == (2, 6.0, 5.0, 7.0)


def test_band_interquartile_range_from_five_seeds():
    # Five seeds 1, 2, 3, 4, 100: the 25th percentile sits at position 0.25 * 4 = 1 -> 2, the 75th at 3 -> 4;
    # the outlier 100 stays out of the band.
    # Six seeds 0 .. 5: positions 1.25 and 3.75 -> 1.25 and 3.75 (linear interpolation).
    b = band(frame_of({1: [4.0, 100.0, 1.0, 3.0, 2.0], 2: [5.0, 0.0, 1.0, 2.0, 3.0, 4.0]}), "epoch", "acc", ["optimizer"])
    five, six = b.iloc[0], b.iloc[1]
    assert (five["n"], five["median"], five["lo"], five["hi"]) == (5, 3.0, 2.0, 4.0)
    assert (six["n"], six["median"], six["lo"], six["hi"]) == (6, 2.5, 1.25, 3.75)


def test_band_skips_nan_and_counts_what_is_left():
    # Five rows but one NaN: four seeds, so min-max, not the quartiles.
    b = band(frame_of({1: [1.0, np.nan, 2.0, 3.0, 9.0]}), "epoch", "acc", ["optimizer"])
    assert (b.loc[0, "n"], b.loc[0, "median"], b.loc[0, "lo"], b.loc[0, "hi"]) == (4, 2.5, 1.0, 9.0)


def test_band_keeps_groups_apart():
    frame = pd.concat([frame_of({1: [1.0, 3.0]}, "adam"), frame_of({1: [10.0, 30.0, 20.0]}, "sgd")])
    b = band(frame, "epoch", "acc", ["optimizer"]).set_index("optimizer")
    assert b.loc["adam", "median"] == 2.0 and b.loc["adam", "n"] == 2
    assert (b.loc["sgd", "median"], b.loc["sgd", "lo"], b.loc["sgd", "hi"]) == (20.0, 10.0, 30.0)


@pytest.mark.parametrize(("lrs", "devices", "expected"), [
    (False, False, "adam"),
    (True, False, "adam lr=0.001"),
    (False, True, "adam (gpu)"),
    (True, True, "adam lr=0.001 (gpu)"),
])
def test_series_label(lrs, devices, expected):
    assert series_label("adam", 0.001, "gpu", several_lrs=lrs, several_devices=devices) == expected


def test_series_label_formats_lr_with_g():
    assert series_label("sgd", 3e-5, "cpu", several_lrs=True, several_devices=False) == "sgd lr=3e-05"
    assert series_label("sgd", 0.1, "cpu", several_lrs=True, several_devices=False) == "sgd lr=0.1"
    # An old run's missing lr is left out rather than written 'lr=nan'.
    assert spread.series_label("sgd", float("nan"), "cpu", several_lrs=True, several_devices=False) == "sgd"
