"""The problem set of `optbench profile` run from scratch: every surface with a minimum from a
grid of starts, and MNIST and Fashion-MNIST, each optimizer at its tuned lr.

    folders = ProblemSet(optimizers=["adam", "sgd"], grid=5, datasets=["mnist"]).run(Path("results/profile-set"))

Each problem writes the run folder its own command would (`optbench surface --starts grid:N
--tune`, `optbench mnist --tune --seeds N`), so the set is read back by `profiles.read_costs` as
any folders are, and every folder can be looked at, reported and profiled again on its own.
Knows nothing of the terminal: a `reporter` hears what runs (see `Experiment.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from optbench import surface_run
from optbench.errors import OptbenchError
from optbench.experiment import Experiment, MnistProblem
from optbench.optimizers import select_contenders
from optbench.surfaces import SURFACES

DATASETS = ("mnist", "fashion")


def bounded_surfaces() -> list[str]:
    """The surfaces a target exists on: those with a known minimum (not the saddles)."""
    return [name for name, s in SURFACES.items() if s.bounded]


@dataclass
class ProblemSet:
    optimizers: Sequence[str] = ("all",)
    surfaces: Sequence[str] = field(default_factory=bounded_surfaces)
    grid: int = 5  # starts per surface: grid x grid
    tune: bool = True
    datasets: Sequence[str] = DATASETS
    seeds: int = 5  # MNIST seeds at the tuned lr
    epochs: int = 5
    eval_every: int | None = 100  # the resolution of MNIST's time to target
    train_size: int | None = None
    test_size: int | None = None
    device: str = "cpu"

    def check(self) -> None:
        for name in self.surfaces:
            if not surface_run.get_surface(name).bounded:
                raise OptbenchError(f"surface {name!r} has no minimum, so no target: it cannot be a problem of a profile")
        for name in self.datasets:
            if name not in DATASETS:
                raise OptbenchError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)})")
        if not self.surfaces and not self.datasets:
            raise OptbenchError("the problem set is empty: give surfaces or data sets")
        surface_run.parse_starts(f"grid:{self.grid}")
        if self.surfaces:  # Muon named with surfaces in the set stops here, not after the folder is made
            select_contenders(list(self.optimizers), [], points=True)
        for experiment in self.experiments():
            experiment.check()

    def experiments(self) -> list[Experiment]:
        # Tuning holds out 10,000 training images for validation; from a smaller slice, a fifth.
        validation = self.train_size // 5 if self.tune and self.train_size and self.train_size <= 50_000 else None
        return [Experiment(optimizers=list(self.optimizers), seeds=self.seeds, tune=self.tune, device=self.device,
                           problem=MnistProblem(dataset=name, epochs=self.epochs, eval_every=self.eval_every,
                                                train_size=self.train_size, test_size=self.test_size,
                                                validation=validation))
                for name in self.datasets]

    def run(self, out: Path, reporter_for: Callable[[Path], object] | None = None,
            on_surface: Callable[[str], None] | None = None, device=None,
            warn: Callable[[str], None] | None = None) -> list[Path]:
        """Run every problem, writing its folder under `out` (surface/<name>, mnist/<data set>);
        return the folders, in order. `reporter_for(folder)` gives each MNIST run its reporter
        (`Experiment.run`), `on_surface(name)` hears of each surface as it starts, `warn` of each
        user's rule that raised on a surface (its runs are marked failed). An interrupted set
        keeps the folders written so far."""
        self.check()
        folders = []
        contenders = select_contenders(list(self.optimizers), [], points=True) if self.surfaces else []
        for name in self.surfaces:
            if on_surface:
                on_surface(name)
            surface = surface_run.get_surface(name)
            result = surface_run.run_surface(surface, contenders, starts=surface_run.grid_starts(surface, self.grid),
                                             tune=self.tune, trajectories=False)
            for line in result.failures if warn else ():
                warn(line)
            folders.append(surface_run.write_surface_result(result, out, trajectories=False)[0].parent)
        for experiment in self.experiments():
            folder = Path(out) / "mnist" / experiment.problem.dataset
            result = experiment.run(reporter_for(folder) if reporter_for else None, device=device)
            result.write(folder)
            folders.append(folder)
            if result.status == "interrupted":
                raise KeyboardInterrupt
        return folders
