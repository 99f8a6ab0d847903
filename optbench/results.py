"""Results on disk: records -> DataFrame -> CSV, written atomically, and read back.

Every file is written to a temporary name in its own folder and renamed into place, so a
reader never sees half a file, even when a run is interrupted.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from optbench.errors import OptbenchError


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` on success. A
    write that fails (a full disk, a folder made read-only meanwhile) is one line: OptbenchError."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OptbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OptbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What `atomic_path` names its temporary files: ".<stem>.<mkstemp's 8 characters><suffix>".
_TEMPORARY = re.compile(r"^\.[^.].*\.[A-Za-z0-9_]{8}\.[A-Za-z0-9]+$")


def clear_temporaries(folder: Path) -> None:
    """Remove what a write killed mid-way (SIGKILL, a power cut) left in `folder`: the
    temporary files of `atomic_path`, hidden, never renamed into place."""
    for path in Path(folder).glob(".*"):
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_json(data, path: Path) -> Path:
    """Strict JSON: non-finite floats are written as the strings "inf", "-inf", "nan"."""
    text = json.dumps(strict_json(data), indent=2, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def read_manifest(folder: Path) -> dict:
    """A folder's manifest.json as a dict; {} where there is none, or it is not a JSON object
    (cut short, edited by hand): a manifest says what ran, and readers go on without it."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def strict_json(value):
    """`value` with every non-finite float, at any depth, replaced by "inf", "-inf" or "nan".

    json.dumps would write bare Infinity and NaN, which JSON.parse and other strict parsers
    reject (Prodigy's growth_rate defaults to inf). float() reads the strings back.
    """
    if isinstance(value, np.generic):  # NumPy scalars as Python ones, so float32 stays a number
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {strict_json(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise OptbenchError(f"no such file: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise OptbenchError(f"cannot read {path}: {exc}") from None


def read_toml(path: Path, what: str) -> tuple[str, dict]:
    """The text and the data of a TOML file (`what` names it in the one-line error: "suite",
    "sweep file")."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise OptbenchError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, not text
        raise OptbenchError(f"cannot read {what} {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OptbenchError(f"{what} {path}: not valid TOML ({exc})") from None


def prepare_dir(path: Path) -> Path:
    """Create an output folder, or explain in one line why it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".optbench-write-test-")
        probe.close()
    except OSError as exc:
        raise OptbenchError(f"cannot write to output folder {str(path)!r}: {exc.strerror or exc}") from None
    return path
