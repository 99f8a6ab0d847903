"""Saved MNIST runs read back for `optbench report`: old folders completed, several runs
combined, CPU against GPU. Every expected value is set by hand here."""

from __future__ import annotations

import numpy as np
import pandas as pd

from optbench import runs


def test_an_old_summary_gets_the_status_its_diverged_column_says():
    old = pd.DataFrame({"optimizer": ["adam", "sgd"], "lr": [1e-3, 10.0], "diverged": [False, True]})
    completed = runs._complete(old, 0, old)
    assert completed["status"].tolist() == ["finished", "diverged"]
    assert completed["seed"].tolist() == [0, 0] and completed["final_val_acc"].isna().all()


def _summary(rows):
    base = {"optimizer": "adam", "device": "cpu", "lr": 1e-3, "seed": 0, "epochs": 1, "final_test_acc": 0.9,
            "best_test_acc": 0.9, "final_val_acc": np.nan, "best_val_acc": np.nan, "final_train_loss": 0.3,
            "mean_epoch_seconds": 1.0, "samples_per_s": 100.0, "diverged": False, "status": "finished"}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_runs_combined_are_finished_only_when_every_one_is():
    summary = _summary([{}])
    empty = pd.DataFrame()
    assert runs.combined(empty, empty, summary, [{"status": "finished"}, {}]).manifest["status"] == "finished"
    partial = runs.combined(empty, empty, summary, [{"status": "finished"}, {"status": "interrupted"}])
    assert partial.manifest["status"] == "partial"


def test_the_device_comparison_puts_the_largest_gpu_speedup_first():
    summary = _summary([
        {"optimizer": "adam", "device": "cpu", "samples_per_s": 100.0},
        {"optimizer": "adam", "device": "gpu", "samples_per_s": 150.0},  # 1.5x
        {"optimizer": "sgd", "device": "cpu", "samples_per_s": 100.0},
        {"optimizer": "sgd", "device": "gpu", "samples_per_s": 400.0},  # 4x
        {"optimizer": "lion", "device": "cpu", "samples_per_s": 200.0},
        {"optimizer": "lion", "device": "gpu", "samples_per_s": 100.0},  # 0.5x: slower on the GPU
    ])
    table = runs.device_comparison(summary)
    assert table["optimizer"].tolist() == ["sgd", "adam", "lion"]
    np.testing.assert_allclose(table["gpu_speedup"], [4.0, 1.5, 0.5])
    assert runs.device_comparison(summary[summary["device"] == "cpu"]) is None
