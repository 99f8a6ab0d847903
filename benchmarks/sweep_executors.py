"""Throughput of `optbench sweep` in-process against Dask (a LocalCluster), and Dask's overhead per task.

    python benchmarks/sweep_executors.py [--workers 2] [--repeats 5]

The sweep: 48 surface cells at the default sizes (every surface with a minimum but one, each at
its default steps, 4 optimizers; one population per surface). Interleaved repeats, medians:
- in-process: `run_sweep` with no executor, into a fresh store each time;
- dask: the same through a LocalCluster of `--workers` processes started once beforehand (its
  start-up, a few seconds, is reported apart: a cluster is started once for a long sweep);
- the overhead per task: a population of one cell of one step, run 60 times through one Dask
  worker and in-process; the difference per population is what Dask adds to each task.
Both write the same store bitwise (the test suite checks it); here only the times are compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from optbench import sweep

SWEEP = """
name = "bench"
optimizers = ["sgd", "momentum", "adam", "rmsprop"]
seeds = 1

{problems}
"""
SURFACES = ["bowl", "rosenbrock", "beale", "himmelblau", "rastrigin", "ackley", "booth", "goldstein_price",
            "six_hump_camel", "styblinski_tang", "branin", "double_well"]


def sweep_file(folder: Path, problems: list[str], steps: int | None = None) -> sweep.SweepFile:
    tables = "\n".join(f'[[problems]]\nkind = "surface"\nsurface = "{s}"\n' + (f"steps = {steps}\n" if steps else "")
                       for s in problems)
    path = folder / "sweep.toml"
    path.write_text(textwrap.dedent(SWEEP.format(problems=tables)))
    return sweep.load_sweep(path)


def timed(spec, folder: Path, executor=None) -> float:
    started = time.perf_counter()
    sweep.run_sweep(spec, folder, executor)
    return time.perf_counter() - started


def side_by_side(spec, folder: Path, workers: int, repeats: int) -> tuple[list[float], list[float], float]:
    """Interleaved in-process and Dask runs of `spec` through a LocalCluster of `workers`,
    both warmed first (the workers import optbench and compile once); and the cluster's start-up."""
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        startup = time.perf_counter() - started
        executor = sweep.Executor(client=client)
        timed(spec, folder / "warm-dask", executor)
        timed(spec, folder / "warm-local")
        local, dask = [], []
        for k in range(repeats):
            local.append(timed(spec, folder / f"local-{k}"))
            dask.append(timed(spec, folder / f"dask-{k}", executor))
    return local, dask, startup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = sweep_file(tmp, SURFACES)
        cells = len(sweep.expand(spec))
        pops = len(sweep.populations(sweep.expand(spec), spec.data.get("population", sweep.DEFAULT_POPULATION)))
        local, dask, startup = side_by_side(spec, tmp, args.workers, args.repeats)

        # Overhead per task: 60 one-cell, one-step populations through one worker.
        (tmp / "tiny").mkdir()
        text = SWEEP.format(problems="[[problems]]\nkind = \"surface\"\nsurface = \"bowl\"\nsteps = 1\n")
        text = text.replace('seeds = 1', 'seeds = 60\npopulation = 1').replace(
            '["sgd", "momentum", "adam", "rmsprop"]', '["sgd"]')
        (tmp / "tiny" / "sweep.toml").write_text(text)
        tiny = sweep.load_sweep(tmp / "tiny" / "sweep.toml")
        tiny_local, tiny_dask, _ = side_by_side(tiny, tmp / "tiny", 1, args.repeats)

    m_local, m_dask = statistics.median(local), statistics.median(dask)
    per_task = (statistics.median(tiny_dask) - statistics.median(tiny_local)) / 60
    per_population = m_local / pops
    print(f"{cells} cells in {pops} populations, {args.repeats} interleaved repeats (medians)")
    print(f"in-process          {m_local:8.3f} s   {cells / m_local:8.1f} cells/s")
    print(f"dask, {args.workers} workers     {m_dask:8.3f} s   {cells / m_dask:8.1f} cells/s   "
          f"throughput x{m_local / m_dask:.2f} (cluster start-up {startup:.1f} s, apart)")
    print(f"dask overhead per task {1e3 * per_task:.2f} ms = {100 * per_task / per_population:.1f} % of a population's "
          f"run time here ({1e3 * per_population:.1f} ms), {100 * per_task / (per_population / (cells / pops)):.1f} % "
          f"of a cell's share")


if __name__ == "__main__":
    main()
