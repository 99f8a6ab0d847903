"""The benchmark harness runs and reports sensible records (no assertions on speed)."""

from __future__ import annotations

import pytest

from optbench import bench
from optbench.backend import select_device


def test_flops_per_step_by_hand():
    # 784-100-10, batch 2: forward 2*2*(784*100 + 100*10); weight gradients the same again;
    # input gradient only for the second layer: 2*2*100*10.
    forward = 2 * 2 * (784 * 100 + 100 * 10)
    assert bench.flops_per_step((784, 100, 10), 2) == 2 * forward + 2 * 2 * 100 * 10


def test_run_bench_records(monkeypatch):
    device = select_device("cpu")
    steps, updates, facts = bench.run_bench(device, repeats=2, steps=2, nets=[("tiny", (784, 16, 10), 32)],
                                            optimizers=["sgd", "adam"], pause=0.0)
    ours = [r for r in steps if r["impl"] == "optbench"]
    assert [r["optimizer"] for r in ours] == ["sgd", "adam"]
    for row in steps:
        assert row["ms_q1"] <= row["ms_per_step"] <= row["ms_q3"] and row["samples_per_s"] > 0
        assert row["of_bound"] > 0 and row["gemm_gflops"] > 0
    assert {r["optimizer"] for r in updates} == {"sgd", "adam"} and all(r["us_per_update"] > 0 for r in updates)
    assert facts["bandwidth_gb_per_s"] > 0
    if facts["torch"]:
        theirs = [r for r in steps if r["impl"].startswith("torch")]
        assert len(theirs) == 2 and all(r["vs_torch"] == 1.0 for r in theirs)


def test_torch_in_its_fastest_form():
    pytest.importorskip("torch")
    forms = bench.torch_forms("adam")
    assert {"foreach": True} in forms and {"fused": True} in forms
