"""`optbench report --html`: one self-contained page, checked by parsing it here and, where the
system has Chromium, in a real headless browser (images decode, tables sort)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.html_report import build_report, folder_kind, write_report

import realdata

runner = CliRunner()
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")


class Page(HTMLParser):
    """What the tests look for: images, tables (caption, header, rows), scripts, outside links."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tables, self.scripts, self.external = [], [], [], []
        self._cell = None
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[name])
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self.tables.append({"class": attrs.get("class"), "caption": "", "header": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th", "caption"):
            self._cell = tag
            self._text = ""
        elif tag == "script":
            self._in_script = True
            self.scripts.append(attrs)
        elif tag == "link":
            self.external.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell == tag:
            table = self.tables[-1]
            (table["header"] if tag == "th" else table["rows"][-1]).append(self._text)
            self._cell = None
        elif tag == "caption" and self._cell == "caption":
            self.tables[-1]["caption"] = self._text
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell:
            self._text += data


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tuned surface run, a robustness grid and the profile over them, written by the CLI."""
    out = tmp_path_factory.mktemp("runs")
    for args in (["--fn", "bowl", "--tune"], ["--fn", "double_well", "--starts", "grid:3", "--no-trajectories"]):
        r = runner.invoke(app, ["surface", "--opt", "sgd", "--opt", "adam", "--steps", "150", *args, "--out", str(out), "-q"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["profile", str(out / "surface" / "bowl"), str(out / "surface" / "double_well"),
                            "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return [out / "surface" / "bowl", out / "surface" / "double_well", out / "profile"]


def test_the_page_holds_every_picture_decoded_and_every_table(folders, tmp_path):
    path = write_report(folders, tmp_path / "report.html")
    page = Page(path.read_text())
    pictures = sum(len(list(f.glob("*.png"))) for f in folders)
    # Each folder's pictures, then the profile drawn over the two surface problems.
    assert len(page.images) == pictures + 1
    for src in page.images:
        mime, data = re.fullmatch(r"data:(image/png);base64,(.+)", src).groups()
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    captions = [t["caption"] for t in page.tables]
    assert "Robustness over the grid of starts" in captions
    assert any(c.startswith("Integrated score") for c in captions)
    robustness = next(t for t in page.tables if t["caption"] == "Robustness over the grid of starts")
    csv = pd.read_csv(folders[1] / "robustness.csv")
    assert robustness["header"] == list(csv.columns) and len(robustness["rows"]) - 1 == len(csv)
    assert all(t["class"] == "sortable" for t in page.tables)
    # Self-contained: one inline script, nothing fetched from elsewhere.
    assert page.external == [] and page.scripts == [{}]
    # The configuration and environment of each run come from its manifest.
    text = path.read_text()
    assert "Configuration and environment (manifest.json)" in text and "numpy" in text and "double_well" in text


def test_a_diverged_member_is_marked_and_numbers_keep_their_exact_value_to_sort_by(tmp_path):
    out = tmp_path / "runs"
    r = runner.invoke(app, ["surface", "--opt", "sgd", "--lr", "0.1", "--lr", "3", "--fn", "bowl", "--steps", "900",
                            "--no-plot", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    page = build_report([out / "surface" / "bowl"])
    assert page.count('<tr class="bad">') == 1  # lr 3 diverges along y
    final = pd.read_csv(out / "surface" / "bowl" / "summary.csv")["final_loss"].iloc[0]
    assert f'data-v="{float(final)!r}"' in page


def test_infinite_numbers_sort_beyond_every_finite_one_and_say_what_they_are():
    from optbench.html_report import _cell

    # The sort script reads data-v as a number: +inf as the largest double, -inf as the smallest.
    assert _cell(float("inf")) == '<td data-v="1e308">inf</td>'
    assert _cell(float("-inf")) == '<td data-v="-1e308">-inf</td>'
    assert _cell(float("nan")) == '<td data-v=""></td>'  # empty: sorted last either way
    assert _cell(2.5) == '<td data-v="2.5">2.5</td>' and _cell(3.0) == '<td data-v="3.0">3</td>'


def test_rows_that_did_not_finish_are_marked_whatever_stopped_them():
    from optbench.html_report import _table

    frame = pd.DataFrame({"optimizer": ["a", "b", "c", "d"], "status": ["finished", "diverged", "failed", "interrupted"]})
    page = _table(frame, "t")
    assert page.count('<tr class="bad">') == 3 and "<tr><td" in page


def test_pictures_come_in_a_fixed_order_and_a_grid_s_members_fold_away(folders, tmp_path):
    from optbench.html_report import _images, _time_to_target

    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("zeta.png", "time.png", "accuracy.png", "loss.png", ".hidden.png", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in _images(folder)] == ["accuracy.png", "loss.png", "time.png", "zeta.png"]
    # The grid of starts has hundreds of members: their table is folded, the small tuned run's is not.
    page = build_report(folders[:2])
    bowl, grid = page.split('<h2 id="run-0"', 1)[1].split('<h2 id="run-1"', 1)
    assert "<details><summary>Every member (" in grid and "<details><summary>Every member (" not in bowl
    assert "Every member: time to target is steps_to_tol</caption>" in bowl
    # An aggregate without targets (an old run) has no time-to-target table, not an empty one.
    assert _time_to_target(pd.DataFrame({"optimizer": ["a"], "lr": [0.1], "seeds": [2]})) is None
    with_target = pd.DataFrame({"optimizer": ["a"], "lr": [0.1], "seeds": [2], "steps_to_target_median": [40.0]})
    assert list(_time_to_target(with_target).columns) == ["optimizer", "lr", "seeds", "steps_to_target_median"]


def test_a_sweep_store_alone_gets_its_profile(tmp_path):
    from optbench import sweep

    text = ('name = "t"\noptimizers = ["sgd", "adam"]\n[[problems]]\nkind = "surface"\nsurface = "bowl"\nsteps = 60\n'
            '[[problems]]\nkind = "surface"\nsurface = "booth"\nsteps = 60\n')
    (tmp_path / "s.toml").write_text(text)
    sweep.run_sweep(sweep.load_sweep(tmp_path / "s.toml"), tmp_path / "store")
    page = build_report([tmp_path / "store"])
    assert "Integrated score" in page


def test_bad_folders_are_refused_in_one_line(tmp_path):
    with pytest.raises(OptbenchError, match="not an optbench run folder"):
        folder_kind(tmp_path)
    r = runner.invoke(app, ["report", "--html", str(tmp_path)])
    assert r.exit_code == 2 and "not an optbench run folder" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "report.html").exists()


def test_report_html_from_the_cli_writes_one_file(folders, tmp_path):
    r = runner.invoke(app, ["report", "--html", *map(str, folders), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.html").exists() and "report.html" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left beside it


def test_an_mnist_run_has_its_time_to_target_table(tmp_path):
    realdata.load("mnist")
    r = runner.invoke(app, ["mnist", "--opt", "adam", "--train-size", "2000", "--test-size", "500", "--hidden", "32",
                            "--epochs", "1", "--eval-every", "5", "--target", "0.5", "--out", str(tmp_path), "--name", "m", "-q"])
    assert r.exit_code == 0, r.output
    page = Page(build_report([tmp_path / "mnist" / "m"]))
    target = next(t for t in page.tables if t["caption"].startswith("Time to target"))
    assert "steps_to_target_median" in target["header"] and len(target["rows"]) == 2
    assert len(page.images) >= 3  # loss, accuracy, time


def _browser() -> str | None:
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def test_in_a_real_headless_browser_images_decode_and_tables_sort(folders, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser on this system (looked for {', '.join(BROWSERS)}): "
                    "the page is checked by parsing only")
    path = write_report(folders, tmp_path / "report.html")
    # A probe appended to a copy of the page: after load it counts decoded images, clicks the
    # first numeric header of the robustness table twice and records the order it produced.
    probe = """<script>
    window.addEventListener("load", function () {
      var imgs = Array.from(document.images), ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
      var table = Array.from(document.querySelectorAll("table")).find(function (t) {
        return t.caption && t.caption.textContent === "Robustness over the grid of starts"; });
      var col = Array.from(table.tHead.rows[0].cells).findIndex(function (c) { return c.textContent === "reached"; });
      var th = table.tHead.rows[0].cells[col]; th.click();
      var up = Array.from(table.tBodies[0].rows).map(function (r) { return r.cells[col].textContent; }).join(",");
      th.click();
      var down = Array.from(table.tBodies[0].rows).map(function (r) { return r.cells[col].textContent; }).join(",");
      var out = document.createElement("pre"); out.id = "probe";
      out.textContent = [imgs.length, ok.length, up, down].join("|"); document.body.appendChild(out);
    });
    </script>"""
    page = tmp_path / "probe.html"
    page.write_text(path.read_text().replace("</body>", probe + "</body>"))
    done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">([^<]*)</pre>', done.stdout)
    assert found, done.stderr[-2000:]
    total, decoded, up, down = found.group(1).split("|")
    assert int(total) > 0 and decoded == total
    assert up.split(",") == sorted(up.split(","), key=float) and down.split(",") == up.split(",")[::-1]


NODE_STUB = r"""
// The page's sort script against a stub of the few DOM calls it makes.
function cell(text, v) { return {textContent: text, getAttribute: (n) => n === "data-v" ? (v === undefined ? null : v) : null}; }
const data = JSON.parse(process.argv[2]);
const rows = data.map(([t, v]) => ({cells: [cell(t), cell(v, v === "" ? "" : v)]}));
const body = {rows: rows.slice(), appendChild(r) { this.rows.splice(this.rows.indexOf(r), 1); this.rows.push(r); }};
const heads = [0, 1].map(i => ({cellIndex: i, attrs: {}, getAttribute(n) { return n in this.attrs ? this.attrs[n] : null; },
  setAttribute(n, v) { this.attrs[n] = v; }, removeAttribute(n) { delete this.attrs[n]; },
  addEventListener(e, f) { this.click = f; }, closest() { return table; }}));
const table = {tBodies: [body], querySelectorAll() { return heads; }};
global.document = {querySelectorAll() { return heads; }};
eval(require("fs").readFileSync(process.argv[3], "utf8"));
const out = [];
for (const col of [1, 1, 0]) { heads[col].click(); out.push(body.rows.map(r => r.cells[col].textContent)); }
console.log(JSON.stringify(out));
"""


def test_the_sort_script_orders_numbers_by_value_text_as_text_and_empty_cells_last(tmp_path):
    import json

    from optbench.html_report import SORT_SCRIPT

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no Node.js here to run the page's sort script outside a browser")
    (tmp_path / "sort.js").write_text(SORT_SCRIPT)
    (tmp_path / "stub.js").write_text(NODE_STUB)
    # Column 0 holds hex ids (text that parseFloat would read as numbers), column 1 numbers
    # whose text and value orders differ, an empty cell and an inf.
    data = [["9ab01", "3"], ["10cd2", ""], ["20ff", "10"], ["1e5aa", "1e308"], ["b", "-2.5"]]
    done = subprocess.run([node, str(tmp_path / "stub.js"), json.dumps(data), str(tmp_path / "sort.js")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    up, down, ids = json.loads(done.stdout)
    assert up == ["-2.5", "3", "10", "1e308", ""]
    assert down == ["1e308", "10", "3", "-2.5", ""]
    assert ids == sorted(ids) == ["10cd2", "1e5aa", "20ff", "9ab01", "b"]


def test_folders_of_one_name_are_told_apart_by_their_paths():
    from optbench.html_report import short_names

    folders = [Path("/r/a/surface/rosenbrock"), Path("/r/b/surface/rosenbrock"), Path("/r/a/surface/bowl")]
    assert short_names(folders) == ["a/surface/rosenbrock", "b/surface/rosenbrock", "bowl"]
