"""The benchmark harness runs and reports sensible records (no assertions on speed)."""

from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench import bench
from optbench.backend import select_device
from optbench.cli import app

TINY_NET = ("tiny", (784, 16, 10), 32)
TINY_POPULATION = ("tiny", (784, 16, 16, 10), 32, 3)


def test_flops_per_step_by_hand():
    # 784-100-10, batch 2: forward 2*2*(784*100 + 100*10); weight gradients the same again;
    # input gradient only for the second layer: 2*2*100*10.
    forward = 2 * 2 * (784 * 100 + 100 * 10)
    assert bench.flops_per_step((784, 100, 10), 2) == 2 * forward + 2 * 2 * 100 * 10
    assert bench.gemm_shapes((784, 100, 10), 2) == [(2, 784, 100), (784, 2, 100), (2, 100, 10), (100, 2, 10), (2, 10, 100)]


@pytest.fixture(scope="module")
def records():
    device = select_device("cpu")
    return bench.run_bench(device, repeats=2, steps=2, nets=[TINY_NET], optimizers=["sgd", "adam"],
                           populations=[TINY_POPULATION], population_optimizers=["adam", "sgd"], pause=0.0)


def test_run_bench_records(records):
    steps, updates, facts = records
    ours = [r for r in steps if r["impl"] == "optbench"]
    assert [r["optimizer"] for r in ours] == ["sgd", "adam"]
    for row in steps:
        assert row["ms_q1"] <= row["ms_per_step"] <= row["ms_q3"] and row["samples_per_s"] > 0
        assert row["ms_best"] <= row["ms_q1"]
        assert row["of_bound"] > 0 and row["gemm_peak_gflops"] > 0
    assert all(r["gemm_gflops"] > 0 for r in steps if r["kind"] == "step")
    assert {r["optimizer"] for r in updates} == {"sgd", "adam"} and all(r["us_per_update"] > 0 for r in updates)
    assert facts["bandwidth_gb_per_s"] > 0
    if facts["torch"]:
        theirs = [r for r in steps if r["kind"] == "step" and r["impl"].startswith("torch")]
        assert len(theirs) == 2 and all(r["vs_torch"] == 1.0 for r in theirs)


def test_population_rows(records):
    steps, _, facts = records
    _, sizes, batch, members = TINY_POPULATION
    rows = [r for r in steps if r["kind"] == "population"]
    assert [r["optimizer"] for r in rows if r["impl"] == bench.POPULATION_LABEL] == ["adam", "sgd"]
    for opt in ("adam", "sgd"):
        by_impl = {r["impl"]: r for r in rows if r["optimizer"] == opt}
        expected = {bench.POPULATION_LABEL, bench.SINGLE_LABEL}
        if facts["torch"]:
            torch_labels = [label for label in by_impl if label.startswith("torch (stacked, ")]
            assert len(torch_labels) == 1 and torch_labels[0].removeprefix("torch (stacked, ")[:-1] in ("fused", "foreach")
            expected.add(torch_labels[0])
            assert by_impl[torch_labels[0]]["members"] == members
            assert by_impl[torch_labels[0]]["vs_torch"] == 1.0
        assert set(by_impl) == expected
        population, single = by_impl[bench.POPULATION_LABEL], by_impl[bench.SINGLE_LABEL]
        assert population["members"] == members and single["members"] == 1
        assert population["layers"] == "-".join(map(str, sizes)) and population["batch"] == batch
        assert single["vs_single"] == 1.0
        for row in by_impl.values():
            assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("ms_per_step", "ms_q1", "ms_q3", "ms_best"))
            # samples/s count members × batch per step
            assert row["samples_per_s"] == pytest.approx(row["members"] * batch / (1e-3 * row["ms_per_step"]))
        assert population["flops"] == members * bench.flops_per_step(sizes, batch)
        # ours vs ours single is the samples/s ratio: K × t_single / t_population
        assert population["vs_single"] == pytest.approx(members * single["ms_per_step"] / population["ms_per_step"])
        if not facts["torch"]:
            assert math.isnan(population["vs_torch"])


def test_population_step_trains_every_member_on_one_batch():
    """The harness's population step is training's (`train_population`): every member's row
    moves, members with the same seed and optimizer stay identical (they read the one shared
    batch), and the time per step is positive and finite."""
    step = bench.PopulationStep((784, 8, 10), 16, 3, "adam", select_device("cpu"))
    before = step.pop.rows.copy()
    seconds = step(2)
    # Positive and finite is what the docstring promises; how fast is the benchmark's to say.
    assert math.isfinite(seconds) and seconds > 0
    assert (step.pop.rows != before).any(axis=1).all()
    assert (step.pop.rows == step.pop.rows[0]).all()


def test_torch_stacked_members_are_independent():
    """Summing the members' mean losses gives each member its own gradient: the stacked
    gradient of member k equals that of member k trained alone."""
    torch = pytest.importorskip("torch")
    step = bench.TorchStackedStep((784, 8, 10), 16, 3, "sgd", select_device("cpu"), {"foreach": True})
    step._loss().backward()
    stacked = [p.grad.clone() for p in step.weights]
    for p in step.weights + step.biases:
        p.grad = None
    x, y = step.x[step.index], step.y[step.index]
    h = x
    for i, (W, b) in enumerate(zip(step.weights, step.biases)):
        h = h @ W[1] + b[1]
        if i < len(step.weights) - 1:
            h = torch.relu(h)
    torch.nn.functional.cross_entropy(h, y).backward()
    for grad, p in zip(stacked, step.weights):
        assert torch.allclose(grad[1], p.grad[1], rtol=1e-5, atol=1e-7)
        assert p.grad[0].abs().sum() == 0  # member 0 not in the single-member loss


def test_bound_holds_by_construction(records, monkeypatch):
    """Every row's "of GEMM peak" is at most 100 %: with the measured peak forced far too low,
    the steps' own rate (FLOPs / fastest repeat) sets the peak, and no row passes 100 %."""
    steps, _, facts = records
    assert all(0 < r["of_bound"] <= 1 for r in steps)
    assert facts["gemm_peak_gflops"] >= facts["gemm_peak_measured_gflops"] > 0
    monkeypatch.setattr(bench, "gemm_peak", lambda device, shapes, repeats: (1.0, "a broken measurement"))
    device = select_device("cpu")
    steps, _, facts = bench.run_bench(device, repeats=3, steps=2, nets=[TINY_NET], optimizers=["sgd"],
                                      populations=[TINY_POPULATION], population_optimizers=["sgd"], pause=0.0)
    assert facts["gemm_peak_source"].startswith("step ") and facts["gemm_peak_gflops"] > 1e-9
    assert all(r["of_bound"] <= 1 + 1e-12 for r in steps)
    # The row that set the peak sits at its fastest repeat over its median.
    witness = max(steps, key=lambda r: r["flops"] / r["ms_best"])
    assert witness["of_bound"] == pytest.approx(witness["ms_best"] / witness["ms_per_step"])


def test_gemm_peak_covers_thread_counts_and_shapes():
    device = select_device("cpu")
    counts = bench.thread_counts(device)
    configured = device.facts.get("blas_threads")
    if configured and counts != [None]:
        assert counts[0] == 1 and counts[-1] == configured
    peak, where = bench.gemm_peak(device, [(32, 64, 16)], repeats=2)
    assert peak > 0 and "x" in where


def test_bench_without_torch_names_the_extra(tmp_path, monkeypatch):
    """rich would eat '[bench]' in "pip install 'optbench[bench]'" as markup."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.setattr(bench, "NETS", (TINY_NET,))
    monkeypatch.setattr(bench, "OPTIMIZERS", ("sgd",))
    monkeypatch.setattr(bench, "POPULATIONS", (TINY_POPULATION,))
    monkeypatch.setattr(bench, "POPULATION_OPTIMIZERS", ("adam",))
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "pip install 'optbench[bench]'" in result.output
    population = pd.read_csv(tmp_path / "bench" / "population.csv")
    assert set(population["impl"]) == {bench.POPULATION_LABEL, bench.SINGLE_LABEL}
    assert "optbench (population)" in result.output and "vs single" in result.output


def test_repeats_and_steps_reach_every_measurement_and_the_machine_record(tmp_path, monkeypatch):
    seen = []
    original = bench._interleaved

    def counting(impls, repeats, steps, pause):
        seen.append((repeats, steps))
        return original(impls, repeats, steps, pause)

    monkeypatch.setattr(bench, "_interleaved", counting)
    monkeypatch.setitem(sys.modules, "torch", None)  # ours alone: quicker
    monkeypatch.setattr(bench, "NETS", (TINY_NET,))
    monkeypatch.setattr(bench, "OPTIMIZERS", ("sgd",))
    monkeypatch.setattr(bench, "POPULATIONS", (TINY_POPULATION,))
    monkeypatch.setattr(bench, "POPULATION_OPTIMIZERS", ("adam",))
    result = CliRunner().invoke(app, ["bench", "--repeats", "2", "--steps", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {(2, 3)}
    machine = json.loads((tmp_path / "bench" / "machine.json").read_text())
    assert (machine["repeats"], machine["steps"]) == (2, 3) and "median of 2 × 3 steps" in result.output


def test_torch_in_its_fastest_form():
    pytest.importorskip("torch")
    forms = bench.torch_forms("adam")
    assert {"foreach": True} in forms and {"fused": True} in forms
