"""`optbench sweep`: sweep files, cells named by their specification, a resumable store, and the
same results bitwise from every executor, a worker killed mid-sweep included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench import sweep
from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.optimizers import select_contenders
from optbench.surface_run import run_surface
from optbench.surfaces import get_surface

import realdata

runner = CliRunner()

SURFACES = """
name = "t"
optimizers = ["sgd", "adam", "momentum"]
hp = ["momentum.momentum=0.95"]  # sgd has `momentum` too: name the optimizer
lrs = [0.01, 0.1]
seeds = 2
population = 8

[[problems]]
kind = "surface"
surface = "rosenbrock"
starts = "grid:2"
noise = 0.1
steps = 300

[[problems]]
kind = "surface"
surface = "bowl"
"""


MNIST_PROBLEM = """
[[problems]]
kind = "mnist"
hidden = [16]
iterations = 10
train_size = 1000
test_size = 200
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# Wall-clock measurements: the only columns that differ from one run to the next.
TIMES = ["mean_epoch_seconds", "samples_per_s", "seconds_to_target", "seconds_to_loss", "epoch_seconds"]


def stored(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The store's cells and curves in a canonical order, without the population names (which
    depend on how the cells were cut into populations, not on the results) and the timings."""
    store = sweep.Store(folder)
    cells = store.cells().drop(columns=["population", *TIMES], errors="ignore").sort_values("cell").reset_index(drop=True)
    curves = store.curves().drop(columns=["population", *TIMES], errors="ignore")
    curves = curves.sort_values(["cell", *[c for c in ("step", "iteration") if c in curves.columns]]).reset_index(drop=True)
    return cells, curves


def assert_same_store(a: Path, b: Path) -> None:
    cells_a, curves_a = stored(a)
    cells_b, curves_b = stored(b)
    pd.testing.assert_frame_equal(cells_a, cells_b, check_exact=True)
    pd.testing.assert_frame_equal(curves_a, curves_b, check_exact=True)


# --- the sweep file -------------------------------------------------------------------------


def test_a_sweep_expands_to_every_cell_once_and_packs_populations(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    cells = sweep.expand(spec)
    # rosenbrock: 3 optimizers x 2 lrs x 4 starts x 2 seeds; bowl: 3 x 2 x 1 x 2.
    assert len(cells) == 48 + 12 and len({c.id for c in cells}) == 60
    momentum = next(c for c in cells if c.optimizer == "momentum")
    assert momentum.hparams == {"momentum": 0.95} and momentum.problem["noise"] == 0.1
    pops = sweep.populations(cells, 8)
    assert [len(p.cells) for p in pops] == [8] * 6 + [8, 4]
    assert all(len({c.problem_id for c in p.cells}) == 1 for p in pops)
    assert sorted(c.id for p in pops for c in p.cells) == sorted(c.id for c in cells)


def test_a_cell_is_named_by_its_whole_specification(tmp_path):
    before = {c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, SURFACES)))}
    assert before == {c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, SURFACES, "same.toml")))}
    # A changed momentum makes new momentum cells and leaves the others as they were.
    changed = sweep.expand(sweep.load_sweep(write(tmp_path, SURFACES.replace("momentum.momentum=0.95", "momentum.momentum=0.9"), "m.toml")))
    kept = {c.id for c in changed if c.optimizer != "momentum"}
    new = {c.id for c in changed if c.optimizer == "momentum"}
    assert kept <= before and not (new & before)


@pytest.mark.parametrize(("text", "message"), [
    ('optimizers = ["adam"]\nwarmup = 3\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:2: unknown key 'warmup'"),
    ('seeds = "three"\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:1: bad value for seeds"),
    ('seeds = 100000000000000000000\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:1: bad value for seeds"),
    ('seeds = [99999999999999999999]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:1: bad value for seeds"),
    ('optimizers = ["adam", "adamz"]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:1: .*adamz"),
    ('[[problems]]\nkind = "surface"\nsurface = "bowl"\n[[problems]]\nkind = "mnist"\nbatch_size = -4\n',
     r"sweep.toml:6: bad value for batch_size"),
    ('[[problems]]\nkind = "surface"\nsurface = "bowlz"\n', r"sweep.toml:2: unknown surface 'bowlz'"),
    ('hp = ["betaz=3"]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:1: --hp betaz"),
    ('lrs = [0.1, -1]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n', r"sweep.toml:1: bad value for lrs"),
    ('optimizers = ["adam"]\nhp = ["beta1=2"]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n',
     r"sweep.toml:2: adam: invalid beta1 2.0"),
    ('schedules = [{kind = "cosine", warmup = 50}]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\nsteps = 20\n',
     r"sweep.toml:1: --warmup of 50 steps is not shorter than the run \(20 steps\), in problem 1"),
    ('optimizers = ["sgd", "muon"]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\n',
     r"sweep.toml:1: muon updates weight matrices only"),
    ('name = "x"\n', r"needs at least one \[\[problems\]\]"),
    ('name = "x\n', r"not valid TOML"),
])
def test_bad_sweep_files_name_the_file_the_key_and_the_line_and_write_nothing(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(OptbenchError, match=message):
        sweep.load_sweep(path)
    out = tmp_path / "store"
    r = runner.invoke(app, ["sweep", str(path), "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output and not out.exists(), r.output


def test_a_sweep_file_that_cannot_be_read_is_named_in_one_line(tmp_path):
    for path, message in ((tmp_path / "none.toml", "sweep file not found"), (tmp_path, "cannot read sweep file")):
        r = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "store")])
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_gpu_sweep_without_a_gpu_stops_before_anything_is_written(tmp_path):
    from optbench.backend import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    path = write(tmp_path, SURFACES.replace('name = "t"', 'name = "t"\ndevice = "gpu"') + MNIST_PROBLEM)
    r = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "store")])
    assert r.exit_code == 2 and "--device gpu" in r.output and not (tmp_path / "store").exists(), r.output


def test_a_sweep_that_fails_is_marked_failed_not_interrupted(tmp_path, monkeypatch):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))

    def broken(population):
        raise RuntimeError("a bug in a worker")

    monkeypatch.setattr(sweep, "run_population", broken)
    with pytest.raises(RuntimeError):
        sweep.run_sweep(spec, tmp_path / "store")
    assert sweep.Store(tmp_path / "store").manifest()["status"] == "failed"


def test_bad_executor_options_are_refused_before_anything_is_written(tmp_path):
    path = write(tmp_path, SURFACES)
    for args, message in [(["--workers", "0"], "--workers 0"), (["--dask", "nowhere"], "--dask"),
                          (["--dask", "tcp://h:1", "--workers", "2"], "not with a scheduler address")]:
        r = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "store"), *args])
        assert r.exit_code == 2 and message in r.output and not (tmp_path / "store").exists(), r.output


def test_an_unreachable_scheduler_fails_in_one_line_within_ten_seconds(tmp_path):
    pytest.importorskip("distributed")
    started = time.monotonic()
    r = runner.invoke(app, ["sweep", str(write(tmp_path, SURFACES)), "--out", str(tmp_path / "store"),
                            "--dask", "tcp://127.0.0.1:9"])
    assert time.monotonic() - started < 10.5
    assert r.exit_code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in r.output, r.output
    assert "Traceback" not in r.output


# --- results --------------------------------------------------------------------------------


def test_a_surface_cell_is_the_run_optbench_surface_makes(tmp_path):
    # Oracle: the same member run by `optbench surface`'s core, from the same start and seed.
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    sweep.run_sweep(spec, tmp_path / "store")
    cells, curves = stored(tmp_path / "store")
    assert len(cells) == 60 and cells["status"].isin(["finished", "diverged"]).all()
    row = cells[(cells["optimizer"] == "adam") & (cells["lr"] == 0.1) & (cells["problem"].str.startswith("rosenbrock"))].iloc[0]
    alone = run_surface(get_surface("rosenbrock"), select_contenders(["adam"], [], points=True), steps=300, lrs=[0.1],
                        start=(row["start_x"], row["start_y"]), noise=0.1, seeds=[int(row["seed"])]).summary.iloc[0]
    assert row["final_loss"] == alone["final_loss"] and row["final_x"] == alone["final_x"]
    path = curves[curves["cell"] == row["cell"]]
    assert path["step"].tolist() == list(range(301)) and path["loss"].iloc[-1] == alone["final_loss"]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["cells"] == 60 and manifest["kind"] == "sweep"
    assert len(pd.read_parquet(tmp_path / "store" / "cells")) == 60  # pandas reads the store directly


def test_rerunning_skips_finished_cells_and_runs_only_what_is_missing(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    full = tmp_path / "full"
    sweep.run_sweep(spec, full)
    again = sweep.run_sweep(spec, full)
    assert (again.skipped, again.done) == (60, 0)
    # A crash after a population's curves but before its cells: the cells are missing, the curves
    # an orphan. The rerun drops the orphan, runs just those cells, and the store is whole again.
    parts = sorted((full / "cells").glob("part-*.parquet"))
    lost = len(pd.read_parquet(parts[0]))
    parts[0].unlink()
    resumed = sweep.run_sweep(spec, full)
    assert (resumed.skipped, resumed.done) == (60 - lost, lost)
    undisturbed = tmp_path / "undisturbed"
    sweep.run_sweep(spec, undisturbed)
    assert_same_store(full, undisturbed)
    assert sweep.Store(full).cells()["cell"].is_unique


def test_ctrl_c_keeps_every_finished_population_and_marks_the_sweep_interrupted(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))

    def interrupt(progress):
        if progress.done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, tmp_path / "store", on_population=interrupt)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["finished_cells"] == 16
    assert len(sweep.Store(tmp_path / "store").cells()) == 16
    assert sweep.run_sweep(spec, tmp_path / "store").done == 44


def test_every_executor_gives_the_same_store_bitwise(tmp_path):
    pytest.importorskip("distributed")
    path = write(tmp_path, SURFACES)
    for args, folder in [([], "inproc"), (["--workers", "2"], "procs"), (["--dask", "local", "--workers", "2"], "dask")]:
        r = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / folder), "-q", *args])
        assert r.exit_code == 0, r.output
    assert_same_store(tmp_path / "inproc", tmp_path / "procs")
    assert_same_store(tmp_path / "inproc", tmp_path / "dask")


def test_verbose_counts_the_cells_of_each_worker_process(tmp_path):
    r = runner.invoke(app, ["sweep", str(write(tmp_path, SURFACES)), "--out", str(tmp_path / "s"), "--workers", "2",
                            "--verbose"])
    assert r.exit_code == 0, r.output
    counts = {}
    for line in r.output.splitlines():
        if line.startswith("  ") and line.endswith(" cells"):
            worker, n = line.strip()[: -len(" cells")].rsplit(": ", 1)
            counts[worker] = int(n)
    assert 1 <= len(counts) <= 2 and sum(counts.values()) == len(sweep.Store(tmp_path / "s").cells()) == 60
    pids = {int(worker.rsplit(":", 1)[1]) for worker in counts}
    assert os.getpid() not in pids  # counted where they ran: in the worker processes


MNIST = """
optimizers = ["adam", "sgd"]
lrs = [0.001, 0.01]
seeds = 2
population = 4

[[problems]]
kind = "mnist"
hidden = [32]
batch_size = 64
iterations = 40
eval_every = 20
train_size = 2000
test_size = 500
target = 50
"""


def test_mnist_cells_train_alike_in_process_and_on_dask(tmp_path):
    pytest.importorskip("distributed")
    realdata.load("mnist")
    spec = sweep.load_sweep(write(tmp_path, MNIST))
    sweep.run_sweep(spec, tmp_path / "inproc")
    sweep.run_sweep(spec, tmp_path / "dask", sweep.Executor(workers=2, dask="local"))
    assert_same_store(tmp_path / "inproc", tmp_path / "dask")
    cells, curves = stored(tmp_path / "inproc")
    assert len(cells) == 8 and (cells["status"] == "finished").all()
    assert (cells[cells["optimizer"] == "adam"]["final_test_acc"] > 0.5).all()  # far above chance (10 %)
    assert sorted(curves["iteration"].unique()) == [20, 40] and len(curves) == 16


def _slow_sweep(tmp_path: Path, steps: int = 30000) -> Path:
    # Eight populations of about half a second each (at the default steps): long enough to kill a
    # worker in the middle.
    return write(tmp_path, f"""
        optimizers = ["sgd", "adam"]
        lrs = [0.0001, 0.0002]
        seeds = [0, 1]
        population = 1

        [[problems]]
        kind = "surface"
        surface = "rosenbrock"
        steps = {steps}
        noise = 0.01
    """)


def test_a_worker_killed_mid_sweep_has_its_populations_rerun_elsewhere(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = sweep.load_sweep(_slow_sweep(tmp_path))
    sweep.run_sweep(spec, tmp_path / "undisturbed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_one(progress):
            if progress.done and not killed:  # after the first population landed, others in flight
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        result = sweep.run_sweep(spec, tmp_path / "disturbed", sweep.Executor(client=client), kill_one)
    assert killed and result.done == 8
    cells = sweep.Store(tmp_path / "disturbed").cells()
    assert len(cells) == 8 and cells["cell"].is_unique  # every cell exactly once
    assert_same_store(tmp_path / "disturbed", tmp_path / "undisturbed")


def test_sigterm_stops_a_sweep_like_ctrl_c_and_the_rerun_finishes_it(tmp_path):
    path = _slow_sweep(tmp_path)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "optbench", "sweep", str(path), "--out", str(store), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((store / "cells").glob("part-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    manifest = json.loads((store / "manifest.json").read_text())
    kept = len(sweep.Store(store).cells())
    assert manifest["status"] == "interrupted" and 1 <= kept < 8
    assert sweep.run_sweep(sweep.load_sweep(path), store).done == 8 - kept


def test_ctrl_c_in_a_terminal_stops_a_local_cluster_quietly(tmp_path):
    # A terminal's Ctrl-C reaches the whole process group: the cluster's processes ignore it and
    # the client stops them, so the user reads the one-line message, not every worker's traceback.
    # Populations of about two seconds: the signal lands mid-sweep on a loaded machine too.
    path = _slow_sweep(tmp_path, steps=120000)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "optbench", "sweep", str(path), "--out", str(store), "-q",
                             "--dask", "local", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((store / "cells").glob("part-*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 4, err
    assert json.loads((store / "manifest.json").read_text())["status"] == "interrupted"


def test_report_and_profile_read_a_store(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    sweep.run_sweep(spec, tmp_path / "store")
    r = runner.invoke(app, ["report", str(tmp_path / "store")])
    assert r.exit_code == 0 and "60 of 60 cells (finished)" in r.output, r.output
    r = runner.invoke(app, ["report", str(tmp_path / "store"), "--out", str(tmp_path / "agg")])
    table = pd.read_csv(tmp_path / "agg" / "aggregate.csv")  # what the terminal showed, as a CSV
    assert r.exit_code == 0 and list(table.columns) == sweep.AGGREGATE_COLUMNS and table["seeds"].sum() == 60
    r = runner.invoke(app, ["profile", str(tmp_path / "store"), "--out", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    costs = pd.read_csv(tmp_path / "profile" / "costs.csv")
    # Four rosenbrock starts and the bowl's one; each optimizer at its best lr, median over seeds.
    assert len(costs) == 5 and set(costs.columns) == {"problem", "sgd", "adam", "momentum"}
    cells = sweep.Store(tmp_path / "store").cells()
    bowl = cells[cells["problem"].str.startswith("bowl") & (cells["optimizer"] == "momentum")]
    expected = bowl["steps_to_tol"].astype(float).groupby(bowl["lr"]).median().min()
    assert costs[costs["problem"].str.startswith("bowl")]["momentum"].iloc[0] == expected == 113
    assert costs[costs["problem"].str.startswith("bowl")]["sgd"].iloc[0] == np.inf  # never within tolerance
    r = runner.invoke(app, ["report", "--html", str(tmp_path / "store"), "--out", str(tmp_path)])
    assert r.exit_code == 0 and "By problem, optimizer, lr and schedule" in (tmp_path / "report.html").read_text()


def test_lrs_tune_expands_to_each_problems_tuning_grid(tmp_path):
    from optbench.experiment import TUNE_FACTORS, default_lr
    from optbench.optimizers import OPTIMIZERS
    from optbench.trajectories import TUNE_GRID

    spec = sweep.load_sweep(write(tmp_path, """
        optimizers = ["adam", "muon"]
        lrs = "tune"
        [[problems]]
        kind = "surface"
        surface = "bowl"
        [[problems]]
        kind = "mnist"
        epochs = 1
    """))
    cells = sweep.expand(spec)
    surface = [c for c in cells if c.problem["kind"] == "surface"]
    mnist = [c for c in cells if c.problem["kind"] == "mnist"]
    assert [c.lr for c in surface] == list(TUNE_GRID)  # muon updates matrices: no surface cells
    assert [c.lr for c in mnist if c.optimizer == "adam"] == [default_lr("adam", OPTIMIZERS["adam"]) * f for f in TUNE_FACTORS]
    assert {c.optimizer for c in mnist} == {"adam", "muon"}


def test_a_mixed_store_reads_whole_with_pandas_alone_and_keeps_different_settings_apart(tmp_path):
    realdata.load("mnist")
    spec = sweep.load_sweep(write(tmp_path, """
        optimizers = ["sgd"]
        lrs = [0.1]
        [[problems]]
        kind = "surface"
        surface = "bowl"
        [[problems]]
        kind = "surface"
        surface = "bowl"
        tol = 0.1
    """ + MNIST_PROBLEM))
    sweep.run_sweep(spec, tmp_path / "store")
    # pyarrow takes a folder's schema from one part: every part carries every column.
    cells = pd.read_parquet(tmp_path / "store" / "cells")
    assert len(cells) == 3 and cells["final_test_acc"].notna().sum() == 1 and cells["final_loss"].notna().sum() == 2
    curves = pd.read_parquet(tmp_path / "store" / "curves")
    assert curves["test_acc"].notna().any() and curves["x"].notna().any()
    # Two bowl problems that differ only in their tolerance stay two rows and two problems.
    table = sweep.aggregate(sweep.Store(tmp_path / "store").cells())
    bowls = table[table["problem"].str.startswith("bowl")]
    assert len(bowls) == 2 and bowls["problem"].nunique() == 2 and (bowls["seeds"] == 1).all()
    # From (-7, 2) SGD at lr 0.1 gets within 0.1 of the minimum in 200 steps, not within 1e-3:
    # x_t = 0.99^t x_0 leaves a gap of 0.043.
    assert bowls.sort_values("reached")["reached"].tolist() == [0, 1]


def test_a_part_encoded_in_arrow_reads_back_as_pandas_own_parquet_writer_gives_it(tmp_path):
    # Workers encode their parts column by column in Arrow; the oracle is pandas' to_parquet of
    # the same frame cast to the schema. Columns of the wrong type, missing values of every
    # kind, and columns the frame lacks.
    cells_schema, _ = sweep._schema()
    frame = pd.DataFrame({
        "cell": ["a", "b", None], "lr": [1, 2, 3], "seed": [0.0, np.nan, 2.0],
        "steps_to_tol": pd.array([1, None, 3], dtype="Int64"), "diverged": [True, False, None],
        "problem": [np.nan, np.nan, np.nan], "final_loss": ["1.5", None, "2"], "device": [1.0, 2.0, 3.0],
        "steps": [2.6, 3.0, 4.0],
    })
    sweep.conform(frame, cells_schema).to_parquet(tmp_path / "pandas.parquet", index=False)
    (tmp_path / "arrow.parquet").write_bytes(sweep.encode(frame, sweep._arrow_schemas()[0]))
    expected = pd.read_parquet(tmp_path / "pandas.parquet")
    got = pd.read_parquet(tmp_path / "arrow.parquet")
    pd.testing.assert_frame_equal(got, expected)
    assert list(got.columns) == list(cells_schema) and got["steps"].tolist() == [3, 3, 4]
    assert str(got["seed"].dtype) == "Int64" and str(got["cell"].dtype) == "string"


def test_equal_settings_written_differently_are_one_cell(tmp_path):
    base = 'optimizers = ["momentum"]\n{hp}\n[[problems]]\nkind = "mnist"\nweight_decay = {wd}\nepochs = 1\n'
    ids = [{c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, base.format(hp=hp, wd=wd), f"{k}.toml")))}
           for k, (hp, wd) in enumerate([("", "0"), ("", "0.0"), ('hp = ["momentum=0.9"]', "0")])]
    assert ids[0] == ids[1] == ids[2]  # momentum 0.9 is the default
    other = sweep.expand(sweep.load_sweep(write(tmp_path, base.format(hp="", wd="0") + 'data_dir = "/elsewhere"\n', "d.toml")))
    assert {c.id for c in other} == ids[0]  # where the data lies is not a setting
    gpu = sweep.expand(sweep.load_sweep(write(tmp_path, 'device = "gpu"\n' + base.format(hp="", wd="0"), "g.toml")))
    assert not ({c.id for c in gpu} & ids[0])


def test_an_option_a_rule_gained_later_keeps_the_ids_of_cells_written_before_it(tmp_path):
    # Adam's decoupled_weight_decay and LAMB's weight_decouple came after stores began naming
    # cells. At their defaults (the rules as they were) the ids are those the code before them
    # gave (commit ff41a2b, the same file), so finished cells stay finished; set, a new cell.
    text = ('optimizers = ["adam", "amsgrad", "lamb"]\nhp = ["lamb.weight_decay=0.1"]\nlrs = [0.01]\n'
            '[[problems]]\nkind = "surface"\nsurface = "bowl"\n')
    ids = {c.optimizer: c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, text)))}
    assert ids == {"adam": "b49159bf8d16d7da", "amsgrad": "9e21496dba4bb861", "lamb": "6714c69e43202a0b"}
    named = text.replace('hp = ["lamb.weight_decay=0.1"]', 'hp = ["lamb.weight_decay=0.1", "lamb.weight_decouple=true", '
                                                          '"adam.decoupled_weight_decay=false"]')
    assert {c.optimizer: c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, named, "named.toml")))} == ids
    changed = text.replace('hp = ["lamb.weight_decay=0.1"]', 'hp = ["lamb.weight_decay=0.1", "lamb.weight_decouple=false", '
                                                            '"decoupled_weight_decay=true"]')
    other = {c.optimizer: c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, changed, "changed.toml")))}
    assert all(other[name] != ids[name] for name in ids)


def test_an_unreachable_scheduler_writes_nothing_and_an_empty_store_reports_in_one_line(tmp_path):
    pytest.importorskip("distributed")
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    with pytest.raises(OptbenchError, match="cannot reach"):
        sweep.run_sweep(spec, tmp_path / "store", sweep.Executor(dask="tcp://127.0.0.1:9"))
    assert not (tmp_path / "store").exists()
    empty = tmp_path / "empty"
    sweep.Store(empty).prepare()
    sweep.Store(empty).write_manifest({"kind": "sweep", "status": "interrupted", "cells": 60})
    r = runner.invoke(app, ["report", str(empty)])
    assert r.exit_code == 0 and "0 of 60 cells (interrupted)" in r.output, r.output


def test_sigterm_stops_local_processes_at_once_keeping_what_finished(tmp_path):
    path = _slow_sweep(tmp_path)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "optbench", "sweep", str(path), "--out", str(store), "-q",
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((store / "cells").glob("part-*.parquet")):
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    # Workers are ended, not waited for: a bound that catches that hang, not a speed (a loaded
    # machine takes seconds to start and stop processes).
    assert proc.returncode == 130 and time.monotonic() - signalled < 20, err
    kept = len(sweep.Store(store).cells())
    assert 1 <= kept < 8 and json.loads((store / "manifest.json").read_text())["finished_cells"] == kept


def test_gpu_workers_need_a_gpu_each_and_the_device_names_the_cells(tmp_path, monkeypatch):
    from optbench import backend

    path = write(tmp_path, MNIST)
    r = runner.invoke(app, ["sweep", str(path), "--device", "gpu", "--workers", "64", "--out", str(tmp_path / "s")])
    if not backend.gpu_available():  # no GPU at all: that is what it says first
        assert r.exit_code == 2 and "--device gpu: " in r.output and not (tmp_path / "s").exists(), r.output
        monkeypatch.setattr(backend, "gpu_count", lambda: 2)  # a machine of two GPUs, as far as the count goes
        monkeypatch.setattr(backend, "select_device", lambda kind: None)
        r = runner.invoke(app, ["sweep", str(path), "--device", "gpu", "--workers", "64", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "one worker per GPU" in r.output and not (tmp_path / "s").exists(), r.output
    cpu = {c.id for c in sweep.expand(sweep.load_sweep(path))}
    spec = sweep.load_sweep(path)
    spec.data["device"] = "gpu"  # what --device gpu does
    assert not (cpu & {c.id for c in sweep.expand(spec)})


def test_a_store_with_no_cell_yet_reports_profiles_and_renders_in_one_line(tmp_path):
    # Interrupted before its first population landed: a manifest, empty parts folders.
    store = sweep.Store(tmp_path / "store")
    store.prepare()
    store.write_manifest({"kind": "sweep", "status": "interrupted", "cells": 4})
    r = runner.invoke(app, ["report", str(tmp_path / "store")])
    assert r.exit_code == 0 and "0 of 4 cells (interrupted)" in r.output, r.output
    r = runner.invoke(app, ["report", "--html", str(tmp_path / "store"), "--out", str(tmp_path / "html")])
    assert r.exit_code == 0 and (tmp_path / "html" / "report.html").exists(), r.output
    r = runner.invoke(app, ["profile", str(tmp_path / "store"), "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "a problem with a target" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_sweep_will_not_write_into_a_folder_that_is_not_a_store(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"kind": "mnist"}')
    r = runner.invoke(app, ["sweep", str(write(tmp_path, SURFACES)), "--out", str(run)])
    assert r.exit_code == 2 and "not a sweep store" in r.output, r.output
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"] and "mnist" in (run / "manifest.json").read_text()


def test_device_auto_names_cells_by_the_device_that_runs_them(tmp_path):
    from optbench.backend import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU: auto would be gpu here, another set of cells")
    realdata.load("mnist")
    text = 'optimizers = ["sgd"]\nlrs = [0.1]\n' + MNIST_PROBLEM
    assert sweep.run_sweep(sweep.load_sweep(write(tmp_path, 'device = "cpu"\n' + text, "cpu.toml")), tmp_path / "s").done == 1
    again = sweep.run_sweep(sweep.load_sweep(write(tmp_path, 'device = "auto"\n' + text, "auto.toml")), tmp_path / "s")
    assert again.done == 0 and again.skipped == 1  # auto ran on the CPU: the cpu cell, not a new one


def test_a_users_rule_from_a_file_runs_in_a_sweep_and_its_failures_are_its_own(tmp_path, monkeypatch):
    # The rule raises at its 5th step wherever its point starts left of x = 0: those cells are
    # marked failed, the rest of the sweep runs as it would without the rule.
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "mine.py").write_text(textwrap.dedent("""
        class Fragile:
            name = "fragile"

            def __init__(self, lr=0.01):
                self.lr = lr

            def init(self, p):
                return {"t": 0, "left": p[..., 0] < 0}

            def update(self, p, g, state):
                state["t"] += 1
                if state["t"] == 5 and state["left"].any():
                    raise ValueError("too far left")
                p -= self.lr * g
    """))
    monkeypatch.chdir(tmp_path)
    text = """
        optimizers = ["sgd", "rules/mine.py:Fragile"]
        lrs = [0.001]

        [[problems]]
        kind = "surface"
        surface = "rosenbrock"
        starts = "grid:2"
        steps = 50

        [[problems]]
        kind = "surface"
        surface = "bowl"
        steps = 50
    """
    progress = sweep.run_sweep(sweep.load_sweep(write(tmp_path, text)), tmp_path / "with")
    assert sweep.Store(tmp_path / "with").manifest()["status"] == "finished" and progress.done == 10
    # Said, as the surface command says it: one line per problem and lr, and in the manifest.
    assert len(progress.warnings) == 2 and all("fragile (lr 0.001)" in w and "too far left" in w for w in progress.warnings)
    assert sweep.Store(tmp_path / "with").manifest()["warnings"] == progress.warnings
    cells = sweep.Store(tmp_path / "with").cells()
    mine = cells[cells["optimizer"] == "fragile"]
    assert (mine["status"] == np.where(mine["start_x"] < 0, "failed", "finished")).all()
    assert (mine.loc[mine["status"] == "failed", "steps"] == 4).all()  # the steps before the one that raised
    assert sweep.run_sweep(sweep.load_sweep(write(tmp_path, text)), tmp_path / "with").skipped == 10  # resumable
    # A class is one cell however the file names it.
    ids = lambda t: sorted(c.id for c in sweep.expand(sweep.load_sweep(write(tmp_path, t, "other.toml"))))  # noqa: E731
    assert ids(text) == ids(text.replace("rules/mine.py", "./rules/mine.py"))
    assert ids(text) == ids(text.replace('"sgd"', '"optbench.optimizers:SGD"'))

    alone = write(tmp_path, text.replace(', "rules/mine.py:Fragile"', ""), "alone.toml")
    sweep.run_sweep(sweep.load_sweep(alone), tmp_path / "alone")
    with_cells, _ = stored(tmp_path / "with")
    alone_cells, _ = stored(tmp_path / "alone")
    pd.testing.assert_frame_equal(with_cells[with_cells["optimizer"] == "sgd"].reset_index(drop=True), alone_cells,
                                  check_exact=True)


def test_a_damaged_part_is_named_by_readers_and_set_aside_by_the_next_sweep(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    store = tmp_path / "store"
    sweep.run_sweep(spec, store)
    undisturbed = tmp_path / "undisturbed"
    sweep.run_sweep(spec, undisturbed)
    part = sorted((store / "curves").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])  # a copy cut short, a disk that filled
    r = runner.invoke(app, ["report", str(store)])
    assert r.exit_code == 0, r.output  # the report reads the cells, which are whole
    with pytest.raises(OptbenchError, match=f"{part.name}: a damaged part"):
        sweep.Store(store).curves()
    r = runner.invoke(app, ["sweep", str(tmp_path / "sweep.toml"), "--out", str(store), "-q"])
    assert r.exit_code == 0 and "1 damaged part(s)" in r.output, r.output
    assert (store / "curves" / f".damaged-{part.name}").exists() and (store / "cells" / f".damaged-{part.name}").exists()
    (store / "cells" / ".part-abc.x1y2.parquet").write_bytes(b"half")  # a write SIGKILL cut short
    sweep.run_sweep(spec, store)
    assert not (store / "cells" / ".part-abc.x1y2.parquet").exists() and (store / "cells" / f".damaged-{part.name}").exists()
    assert_same_store(store, undisturbed)  # its cells ran again, and the store is whole


def test_two_sweeps_cannot_write_one_store_at_once(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    store = sweep.Store(tmp_path / "store")
    with store.locked():  # as a sweep running in another process holds it
        with pytest.raises(OptbenchError, match="another sweep is writing"):
            sweep.run_sweep(spec, tmp_path / "store")
    assert sweep.run_sweep(spec, tmp_path / "store").done == 60


def test_a_report_or_profile_written_into_a_store_does_not_stop_it_growing(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SURFACES))
    store = tmp_path / "store"
    sweep.run_sweep(spec, store)
    assert runner.invoke(app, ["report", "--html", str(store)]).exit_code == 0 and (store / "report.html").exists()
    assert runner.invoke(app, ["report", str(store), "--out", str(store)]).exit_code == 0 and (store / "aggregate.csv").exists()
    (store / "manifest.json").write_text("[1, 2]")  # valid JSON, not an object: read as no manifest
    grown = write(tmp_path, SURFACES.replace("seeds = 2", "seeds = 3"), "grown.toml")
    assert sweep.run_sweep(sweep.load_sweep(grown), store).done == 30


def test_local_gpu_workers_are_pinned_one_gpu_each_with_device_auto_too(tmp_path, monkeypatch):
    from optbench import backend

    monkeypatch.setattr(backend, "gpu_available", lambda: True)  # "auto" finds a GPU ...
    monkeypatch.setattr(backend, "gpu_count", lambda: 2)  # ... of two
    monkeypatch.setattr(backend, "select_device", lambda kind: None)
    pinned = []
    monkeypatch.setattr(sweep.Executor, "map", lambda self, pops, done: pinned.append(list(self.gpus)))
    spec = sweep.load_sweep(write(tmp_path, MNIST))
    spec.data["device"] = "auto"
    sweep.run_sweep(spec, tmp_path / "store", sweep.Executor(workers=2))
    assert pinned == [["0", "1"]]
    with pytest.raises(OptbenchError, match="not with a scheduler address"):
        sweep.Executor(workers=2, dask="tcp://localhost:8786").check()


def test_gpu_workers_keep_within_the_gpus_this_process_may_use(monkeypatch):
    from optbench import backend

    monkeypatch.setattr(backend, "gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    executor = sweep.Executor(workers=2)
    executor.pin_gpus("gpu")
    assert executor.gpus == ["2", "3"]


def test_a_file_system_without_locks_still_runs_a_sweep(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre without -o flock

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert sweep.run_sweep(sweep.load_sweep(write(tmp_path, SURFACES)), tmp_path / "store").done == 60


def test_a_gpu_store_whose_cells_are_all_in_needs_no_gpu_to_be_rerun(tmp_path, monkeypatch):
    spec = sweep.load_sweep(write(tmp_path, MNIST))
    spec.data["device"] = "gpu"
    every = {c.id for c in sweep.expand(spec)}
    monkeypatch.setattr(sweep.Store, "finished", lambda self: every)  # as if a GPU machine had run them all
    (tmp_path / "store" / "cells").mkdir(parents=True)
    state = sweep.run_sweep(spec, tmp_path / "store")
    assert (state.done, state.skipped) == (0, len(every))


# --- reading a store: the tables, on hand-built cells -----------------------------------------


def _cells(rows: list[dict]) -> pd.DataFrame:
    """Cells as a store holds them, every column of the schema, from the few a test sets."""
    schema, _ = sweep._schema()
    base = {"problem_id": "p1", "problem": "bowl", "kind": "surface", "optimizer": "adam", "hparams": "{}",
            "schedule": "constant", "diverged": False, "status": "finished"}
    frame = pd.DataFrame([{**base, **row} for row in rows])
    return sweep.conform(frame, schema)


def test_aggregate_gives_median_and_range_of_the_runs_that_finished_and_ranks_by_reached_then_the_metric():
    cells = _cells([
        # adam on the bowl: five seeds, one diverged (its huge loss must count nowhere), one
        # failed (a user's rule raised: its numbers are none), three finished: 1, 2, 10.
        {"lr": 0.1, "seed": 0, "final_loss": 1.0, "steps_to_tol": 30},
        {"lr": 0.1, "seed": 1, "final_loss": 2.0, "steps_to_tol": 50},
        {"lr": 0.1, "seed": 2, "final_loss": 10.0},
        {"lr": 0.1, "seed": 3, "final_loss": 1e300, "diverged": True, "status": "diverged"},
        {"lr": 0.1, "seed": 4, "final_loss": -5.0, "status": "failed"},
        # sgd reaches the tolerance less often but with a lower loss: ranked after adam.
        {"optimizer": "sgd", "lr": 0.01, "seed": 0, "final_loss": 0.5, "steps_to_tol": 90},
        {"optimizer": "sgd", "lr": 0.01, "seed": 1, "final_loss": 0.7},
        # MNIST: accuracy, the higher the better.
        {"problem_id": "p2", "problem": "mnist", "kind": "mnist", "lr": 1e-3, "seed": 0, "final_test_acc": 0.90},
        {"problem_id": "p2", "problem": "mnist", "kind": "mnist", "lr": 1e-3, "seed": 1, "final_test_acc": 0.94},
        {"problem_id": "p2", "problem": "mnist", "kind": "mnist", "optimizer": "sgd", "lr": 0.1, "seed": 0,
         "final_test_acc": 0.97},
    ])
    table = sweep.aggregate(cells)
    bowl = table[table["problem"] == "bowl"].reset_index(drop=True)
    assert bowl["optimizer"].tolist() == ["adam", "sgd"]  # 2 reached against 1
    adam = bowl.iloc[0]
    assert (adam["seeds"], adam["finished"], adam["diverged"], adam["reached"]) == (5, 3, 1, 2)
    assert adam["metric"] == "final_loss"
    assert (adam["metric_median"], adam["metric_min"], adam["metric_max"]) == (2.0, 1.0, 10.0)
    assert adam["steps_to_target_median"] == 40.0
    mnist = table[table["problem"] == "mnist"].reset_index(drop=True)
    assert mnist["optimizer"].tolist() == ["sgd", "adam"]  # neither reached a target: higher accuracy first
    assert mnist.loc[1, "metric"] == "final_test_acc" and mnist.loc[1, "metric_median"] == pytest.approx(0.92)
    assert (mnist.loc[1, "metric_min"], mnist.loc[1, "metric_max"]) == (0.90, 0.94)


def test_labelled_names_apart_only_what_ran_differently():
    cells = _cells([
        {"problem_id": "aaaaaa11", "problem": "bowl", "lr": 0.1, "seed": 0},
        {"problem_id": "bbbbbb22", "problem": "bowl", "lr": 0.1, "seed": 0},  # same name, another problem
        {"problem_id": "cccccc33", "problem": "booth", "lr": 0.1, "seed": 0},
        {"problem_id": "cccccc33", "problem": "booth", "optimizer": "momentum", "hparams": '{"momentum": 0.9}',
         "lr": 0.1, "seed": 0},
        {"problem_id": "cccccc33", "problem": "booth", "optimizer": "momentum", "hparams": '{"momentum": 0.5}',
         "lr": 0.1, "seed": 0},
    ])
    named = sweep.labelled(cells)
    assert named["problem"].tolist() == ["bowl [aaaaaa]", "bowl [bbbbbb]", "booth", "booth", "booth"]
    assert named["optimizer"].tolist() == ["adam", "adam", "adam", 'momentum {"momentum": 0.9}',
                                           'momentum {"momentum": 0.5}']


def test_a_store_reports_the_cells_of_its_last_sweep_and_counts_the_others(tmp_path):
    text = ('name = "t"\noptimizers = ["sgd"]\nlrs = {lrs}\n'
            '[[problems]]\nkind = "surface"\nsurface = "bowl"\nsteps = 20\n')
    store = tmp_path / "s"
    sweep.run_sweep(sweep.load_sweep(write(tmp_path, text.format(lrs="[0.01, 0.02]"), "one.toml")), store)
    sweep.run_sweep(sweep.load_sweep(write(tmp_path, text.format(lrs="[0.02, 0.05]"), "two.toml")), store)
    cells, others = sweep.current_cells(sweep.Store(store))
    assert sorted(cells["lr"]) == [0.02, 0.05] and others == 1  # lr 0.01 is the first file's alone
    assert len(sweep.Store(store).cells()) == 3


def test_populations_never_mix_schedules_and_lr_precedence_is_the_command_lines(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, """
        optimizers = ["sgd", "adam"]
        hp = ["adam.lr=0.05"]
        lrs = [0.1, 0.2]
        schedules = ["constant", "cosine"]

        [[problems]]
        kind = "surface"
        surface = "bowl"
        steps = 20
        """))
    cells = sweep.expand(spec)
    # --hp adam.lr= wins over the lr list, as on the command line; sgd runs the list.
    assert sorted({c.lr for c in cells if c.optimizer == "adam"}) == [0.05]
    assert sorted({c.lr for c in cells if c.optimizer == "sgd"}) == [0.1, 0.2]
    pops = sweep.populations(cells, size=64)
    assert len(pops) == 2  # one problem, two schedules: a population's members share one schedule
    for pop in pops:
        assert len({json.dumps(c.schedule, sort_keys=True) for c in pop.cells}) == 1
