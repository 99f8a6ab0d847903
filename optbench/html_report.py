"""`optbench report --html`: run folders as one self-contained HTML page to send to a colleague.

Every picture is inlined as a data URI, every table is sortable by a few lines of inline script,
and nothing is fetched from elsewhere (no external scripts, styles or fonts), so the file opens
anywhere, offline, as it was written. Knows nothing of the terminal.

    html = build_report([Path("results/surface/bowl"), Path("results/mnist/m")])
    write_report(folders, Path("results/report/report.html"))
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from optbench import __version__, results
from optbench.errors import OptbenchError

IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif"}
# Pictures in the order a reader wants them; any others after, by name.
IMAGE_ORDER = ["trajectories.png", "robustness.png", "profile.png", "accuracy.png", "loss.png", "time.png",
               "lr_sensitivity.png", "trajectories.gif"]
MAX_ROWS = 2000  # a table longer than this is cut, and says so: the CSV beside it has every row

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var up = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    var key = function (row) {
      var cell = row.cells[col], v = cell.getAttribute("data-v");
      return v === null ? cell.textContent : v;
    };
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.every(function (r) { var k = key(r); return k === "" || isFinite(Number(k)); });
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") { return (x === "") - (y === ""); }  // empty cells last either way
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.text { text-align: left; } tr.bad td { color: #b00; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: 12px; } .status { padding: 1px 6px; border-radius: 3px; background: #eee; }
.status.finished { background: #e7f4e7; } .status.partial, .status.interrupted, .status.running { background: #fbe9c5; }
.status.failed { background: #f6d0d0; } .note { color: #666; } .wide { overflow-x: auto; }
details { margin: .5em 0 1em; } summary { cursor: pointer; color: #335; }
"""


def folder_kind(folder: Path) -> str:
    """'mnist', 'surface', 'profile' or 'sweep': what wrote the folder, from the files in it."""
    from optbench.sweep import is_store

    folder = Path(folder)
    if is_store(folder):
        return "sweep"
    if (folder / "scores.csv").exists() and (folder / "costs.csv").exists():
        return "profile"
    path = folder / "summary.csv"
    if not path.exists():
        raise OptbenchError(f"{folder} is not an optbench run folder (no summary.csv, no scores.csv)")
    columns = results.read_csv(path).columns
    if "surface" in columns:
        return "surface"
    if "final_test_acc" in columns:
        return "mnist"
    raise OptbenchError(f"{path}: neither a surface nor an MNIST summary")


def build_report(folders: list[Path], title: str | None = None) -> str:
    """The whole page: a section per folder (status, pictures, tables, configuration and
    environment), then, over two or more problems, their performance profile."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise OptbenchError("no run folders given")
    kinds = [folder_kind(f) for f in folders]
    names = short_names(folders)
    title = title or f"optbench report: {', '.join(names)}"
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="note">Written {datetime.now().isoformat(timespec="seconds")} by optbench {__version__} from '
             f'{len(folders)} folder(s). Click a column header to sort a table.</p>']
    parts += _contents(folders, kinds)
    for i, (folder, kind, name) in enumerate(zip(folders, kinds, names)):
        parts.append(_section(i, folder, kind, name))
    problems = [f for f, k in zip(folders, kinds) if k in ("surface", "mnist", "sweep")]
    if len(problems) >= 2 or "sweep" in kinds:
        parts.append(_profile_section(problems))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n")


def write_report(folders: list[Path], path: Path, title: str | None = None) -> Path:
    """Build the page and write it atomically to `path`."""
    page = build_report(folders, title)
    path = Path(path)
    results.prepare_dir(path.parent)
    with results.atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _contents(folders, kinds) -> list[str]:
    items = "".join(f'<li><a href="#run-{i}">{_e(name)}</a> ({k})</li>'
                    for i, (name, k) in enumerate(zip(short_names(folders), kinds)))
    return [f"<ul>{items}</ul>"]


def short_names(folders) -> list[str]:
    """Each folder by its name, or by as many of its last path parts as tell it from the others
    (`a/surface/rosenbrock` and `b/surface/rosenbrock`)."""
    parts = [Path(f).resolve().parts for f in folders]
    names = []
    for mine in parts:
        k = 1
        while k < len(mine) and sum(other[-k:] == mine[-k:] for other in parts) > 1:
            k += 1
        names.append("/".join(mine[-k:]))
    return names


def _section(index: int, folder: Path, kind: str, name: str | None = None) -> str:
    manifest = _manifest(folder)
    status = manifest.get("status", "finished" if kind == "profile" else "unknown")
    parts = [f'<h2 id="run-{index}">{_e(kind)}: {_e(name or folder.name)} <span class="status {_e(status)}">{_e(status)}</span></h2>',
             f'<p class="note">{_e(str(folder))}</p>']
    parts += [_figure(p) for p in _images(folder)]
    parts += _tables(folder, kind)
    if manifest:
        parts.append(_manifest_tables(manifest))
    return "\n".join(parts)


def _tables(folder: Path, kind: str) -> list[str]:
    def csv(name):
        path = folder / name
        return results.read_csv(path) if path.exists() else None

    parts = []
    if kind == "sweep":
        from optbench import sweep

        cells, older = sweep.current_cells(sweep.Store(folder))
        if older:
            parts.append(f'<p class="note">{older} cells of earlier versions of the sweep file are in the store too, left out.</p>')
        parts.append(_table(sweep.aggregate(cells), "By problem, optimizer, lr and schedule, over seeds and starts"))
        parts.append(_details(_table(cells, None, "the store"), f"Every cell ({len(cells)} rows)"))
        return parts
    if kind == "profile":
        scores = csv("scores.csv")
        parts.append(_table(scores, "Integrated score (area under the profile on [1, r_max], normalised)"))
        parts.append(_table(csv("costs.csv"), "Cost per problem (steps or seconds to the target; inf: never reached)"))
        parts.append(_details(_table(csv("ratios.csv"), None), "Performance ratios (cost over the best on the problem)"))
        return parts
    aggregate, summary = csv("aggregate.csv"), csv("summary.csv")
    if kind == "mnist":
        parts.append(_table(aggregate, "By optimizer and lr, over seeds (mean, std, min and max)"))
        target = _time_to_target(aggregate)
        if target is not None:
            parts.append(_table(target, "Time to target (median over the seeds that reached it)"))
        parts.append(_details(_table(summary, None), f"Every member ({len(summary)} rows)"))
    else:
        robustness = csv("robustness.csv")
        if robustness is not None:
            parts.append(_table(robustness, "Robustness over the grid of starts"))
        if aggregate is not None:
            parts.append(_table(aggregate, "By optimizer and lr, over seeds"))
        table = _table(summary, "Every member: time to target is steps_to_tol")
        parts.append(table if robustness is None and len(summary) <= 60 else _details(table, f"Every member ({len(summary)} rows)"))
    tuning = csv("tuning.csv")
    if tuning is not None:
        parts.append(_details(_table(tuning, None), f"Learning-rate tuning grid ({len(tuning)} rows)"))
    return parts


def _time_to_target(aggregate: pd.DataFrame | None) -> pd.DataFrame | None:
    if aggregate is None:
        return None
    wanted = ["optimizer", "lr", "seeds"] + [c for c in aggregate.columns if "target" in c or c.endswith("to_loss_median")
                                             or c == "reached_loss"]
    present = [c for c in wanted if c in aggregate.columns]
    if len(present) <= 3:
        return None
    return aggregate[present]


def _profile_section(problems: list[Path]) -> str:
    from optbench import plots, profiles

    parts = ['<h2 id="profile">Performance profile over these runs</h2>']
    try:
        built = profiles.build(problems)
    except OptbenchError as exc:
        return "\n".join(parts + [f'<p class="note">No profile: {_e(str(exc))}.</p>'])
    costs, scores, curves, left_out, no_target = built.costs, built.scores, built.curves, built.left_out, built.no_target
    with tempfile.TemporaryDirectory() as tmp:
        image = plots.save_profile(curves, scores, Path(tmp) / "profile.png", "steps")
        parts.append(_figure(image))
    parts.append(f'<p class="note">{len(costs)} problems, by steps to each one\'s target; each optimizer at its best lr '
                 f"there (the median over seeds).{' Left out (not run on every problem): ' + _e(', '.join(left_out)) + '.' if left_out else ''}"
                 f"{' Left out (no minimum, so no target): ' + _e(', '.join(no_target)) + '.' if no_target else ''}</p>")
    parts.append(_table(scores.rename_axis("optimizer").reset_index(), f"Integrated score on [1, {built.r_max:g}]"))
    parts.append(_table(costs.reset_index(), "Steps to the target per problem (inf: never reached)"))
    return "\n".join(parts)


def _images(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if p.suffix in IMAGE_TYPES and not p.name.startswith(".")]
    rank = {name: i for i, name in enumerate(IMAGE_ORDER)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def _figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    mime = IMAGE_TYPES[Path(path).suffix]
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{_e(path.name)}">'
            f"<figcaption>{_e(path.name)}</figcaption></figure>")


def _table(frame: pd.DataFrame | None, caption: str | None, source: str = "the CSV") -> str:
    """A sortable table: each cell shows a rounded number and keeps the exact one to sort by."""
    if frame is None:
        return ""
    cut = len(frame) > MAX_ROWS
    shown = frame.head(MAX_ROWS)
    head = "".join(f"<th>{_e(str(c))}</th>" for c in shown.columns)
    rows = []
    bad = shown["status"].isin(["diverged", "failed", "interrupted"]) if "status" in shown.columns else (
        shown["diverged"].astype(str).str.lower().isin(["true", "1"]) if "diverged" in shown.columns else None)
    for i, record in enumerate(shown.itertuples(index=False)):
        cells = "".join(_cell(v) for v in record)
        rows.append(f'<tr class="bad">{cells}</tr>' if bad is not None and bool(bad.iloc[i]) else f"<tr>{cells}</tr>")
    note = f'<p class="note">First {MAX_ROWS} of {len(frame)} rows; {source} has them all.</p>' if cut else ""
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    # A table wider than the page (a summary's 20-odd columns) scrolls inside its own box.
    return (f'<div class="wide"><table class="sortable">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table></div>{note}')


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f'<td class="text">{str(bool(value)).lower()}</td>'
    if isinstance(value, (int, np.integer)):
        return f'<td data-v="{int(value)}">{int(value)}</td>'
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return '<td data-v=""></td>'
        if math.isinf(value):
            return f'<td data-v="{"1e308" if value > 0 else "-1e308"}">{"inf" if value > 0 else "-inf"}</td>'
        shown = f"{value:.4g}" if value != int(value) or abs(value) >= 1e15 else f"{int(value)}"
        return f'<td data-v="{float(value)!r}">{shown}</td>'
    if value is None or value is pd.NA:
        return '<td data-v=""></td>'
    return f'<td class="text">{_e(str(value))}</td>'


def _details(inner: str, label: str) -> str:
    return f"<details><summary>{_e(label)}</summary>{inner}</details>" if inner else ""


def _manifest(folder: Path) -> dict:
    return results.read_manifest(folder)


def _manifest_tables(manifest: dict) -> str:
    """Configuration, optimizers' hyperparameters and the environment, from manifest.json."""
    config = manifest.get("config") or manifest.get("sweep") or {}
    optimizers = manifest.get("optimizers") or config.get("optimizers") or {}
    if not isinstance(optimizers, dict):  # a sweep file's list of names: shown with its configuration
        optimizers = {}
    facts = {k: v for k, v in manifest.items() if k in ("optbench", "started", "written", "git_commit")}
    facts["command"] = " ".join(map(str, manifest.get("command") or []))
    parts = [_pairs({k: v for k, v in config.items() if k != "optimizers" or not isinstance(v, dict)}, "Configuration")]
    if optimizers:
        parts.append(_pairs({name: ", ".join(f"{k}={v}" for k, v in hp.items()) for name, hp in optimizers.items()},
                            "Optimizers and their hyperparameters"))
    parts.append(_pairs({**facts, **(manifest.get("device") or {})}, "Environment"))
    if manifest.get("populations"):
        parts.append(_details(_table(pd.DataFrame(manifest["populations"]), None), "Populations"))
    return _details("\n".join(parts), "Configuration and environment (manifest.json)")


def _pairs(mapping: dict, caption: str) -> str:
    rows = "".join(f'<tr><td class="text">{_e(str(k))}</td><td class="text">{_e(_text(v))}</td></tr>'
                   for k, v in mapping.items())
    return f'<table class="sortable"><caption>{_e(caption)}</caption><thead><tr><th>name</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>'


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _e(text: str) -> str:
    return html.escape(text, quote=True)
