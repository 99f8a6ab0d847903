"""results.write_json writes strict JSON: non-finite floats become "inf", "-inf", "nan", which
JSON.parse and other strict parsers accept (bare Infinity and NaN they reject)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from optbench import results
from optbench.cli import app

NODE = shutil.which("node") or shutil.which("/usr/bin/node")


def strict_loads(text: str):
    """json.loads that refuses Infinity, -Infinity and NaN, as RFC 8259 does."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_at_any_depth_are_written_as_strings(tmp_path):
    data = {"growth_rate": math.inf, "nested": {"low": -math.inf, "values": [1.5, math.nan, (np.float32("inf"), 2)]},
            "numpy": np.float64("-inf"), "finite32": np.float32(0.5), "count": np.int64(3), "ok": True, "name": "adam"}
    path = results.write_json(data, tmp_path / "manifest.json")
    parsed = strict_loads(path.read_text())
    assert parsed == {"growth_rate": "inf", "nested": {"low": "-inf", "values": [1.5, "nan", ["inf", 2]]},
                      "numpy": "-inf", "finite32": 0.5, "count": 3, "ok": True, "name": "adam"}
    assert float(parsed["growth_rate"]) == math.inf and math.isnan(float(parsed["nested"]["values"][1]))


def test_strict_parsing_refuses_what_json_dumps_writes_by_default():
    # The oracle above is really strict: it rejects Python's own default output.
    with pytest.raises(ValueError, match="Infinity"):
        strict_loads(json.dumps({"growth_rate": math.inf}))


@pytest.fixture(scope="module")
def prodigy_manifest(tmp_path_factory):
    """manifest.json of a real `optbench surface` run of Prodigy (its growth_rate is inf)."""
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(app, ["surface", "--opt", "prodigy", "--steps", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / "surface" / "bowl" / "manifest.json"


def test_a_real_prodigy_manifest_is_strict_json(prodigy_manifest):
    manifest = strict_loads(prodigy_manifest.read_text())
    assert manifest["config"]["optimizers"]["prodigy"]["growth_rate"] == "inf"


@pytest.mark.skipif(NODE is None, reason="Node.js not found (PATH, /usr/bin/node): JSON.parse not checked")
def test_javascript_json_parse_reads_a_prodigy_manifest(prodigy_manifest):
    script = ("const m = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'));"
              "console.log(m.config.optimizers.prodigy.growth_rate);")
    node = subprocess.run([NODE, "-e", script, str(prodigy_manifest)], capture_output=True, text=True, timeout=60)
    assert node.returncode == 0, node.stderr
    assert node.stdout.strip() == "inf"


def test_a_write_that_fails_is_one_line_and_leaves_no_temporary_file(tmp_path):
    import errno

    from optbench.errors import OptbenchError

    target = tmp_path / "summary.csv"
    with pytest.raises(OptbenchError, match=r"cannot write .*summary.csv: No space left on device"):
        with results.atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # a disk that filled mid-write
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OptbenchError, match="cannot write"):
        results.write_csv(__import__("pandas").DataFrame({"a": [1]}), tmp_path / "no-such-folder" / "x.csv")


def test_a_full_disk_while_a_surface_is_drawn_is_one_line_and_exit_2(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from optbench import plots
    from optbench.cli import app

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots.plt.Figure, "savefig", lambda *a, **k: full())
    result = CliRunner().invoke(app, ["surface", "--opt", "sgd", "--fn", "bowl", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "trajectories.png: No space left on device" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not plots.plt.get_fignums()


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "{not json", ""])
def test_a_manifest_that_is_not_a_json_object_reads_as_none_and_the_readers_go_on(tmp_path, text):
    assert CliRunner().invoke(app, ["surface", "--opt", "sgd", "--fn", "bowl", "--out", str(tmp_path), "-q"]).exit_code == 0
    folder = tmp_path / "surface" / "bowl"
    (folder / "manifest.json").write_text(text)
    assert results.read_manifest(folder) == {}
    for args in (["profile", str(folder), "--out", str(tmp_path), "-q"], ["report", "--html", str(folder)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)


def test_the_temporary_files_of_a_killed_write_are_cleared_and_nothing_else(tmp_path):
    import tempfile

    fd, left = tempfile.mkstemp(prefix=".summary.", suffix=".csv", dir=tmp_path)  # as atomic_path names them
    __import__("os").close(fd)
    kept = [tmp_path / ".optbench-keep", tmp_path / "summary.csv", tmp_path / ".damaged-part-abc.parquet"]
    for path in kept:
        path.write_text("x")
    results.clear_temporaries(tmp_path)
    assert not __import__("os").path.exists(left) and all(path.exists() for path in kept)
