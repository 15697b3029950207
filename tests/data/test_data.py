"""safenet.data: IDX and CIFAR readers, the registry, torch batches and fetching."""

import gzip
import importlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_cifar
from safenet.data import (
    DATASETS,
    ENV_VAR,
    DatasetError,
    ImageDataset,
    cifar,
    default_data_dir,
    fetch,
    load_dataset,
    make_loader,
)
from safenet.data.idx import read_idx, write_idx
from safenet.data.torchdata import augment_batch

# `safenet.data.fetch` the attribute is the function; the module must be imported by name.
fetch_mod = importlib.import_module("safenet.data.fetch")
registry = importlib.import_module("safenet.data.registry")

IDX_STEMS = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture(autouse=True)
def no_system_copies(monkeypatch):
    """Keep the tests hermetic: a machine may have /usr/share/datasets/fashion-mnist."""
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {})
    monkeypatch.setattr(fetch_mod, "SYSTEM_DIRS", {})


@pytest.fixture
def fmnist(data_dir) -> Path:
    return data_dir / "fashion-mnist"


def _gunzip(src: Path, dest: Path) -> Path:
    dest.write_bytes(gzip.decompress(src.read_bytes()))
    return dest


# --------------------------------------------------------------------------- IDX


def test_read_idx_gzip(fmnist):
    x = read_idx(fmnist / "train-images-idx3-ubyte.gz")
    y = read_idx(fmnist / "train-labels-idx1-ubyte.gz")
    assert x.shape == (600, 28, 28) and x.dtype == np.uint8
    assert y.shape == (600,) and y.dtype == np.uint8
    assert y.min() >= 0 and y.max() <= 9
    assert len(np.unique(y)) == 10
    assert x.max() > 200 and x.min() == 0  # real images, not blank


def test_read_idx_plain_matches_gzip(fmnist, tmp_path):
    gz = fmnist / "t10k-images-idx3-ubyte.gz"
    plain = _gunzip(gz, tmp_path / "t10k-images-idx3-ubyte")
    a, b = read_idx(gz), read_idx(plain)
    assert a.shape == (400, 28, 28)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["arr.idx", "arr.idx.gz"])
def test_write_idx_roundtrip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, arr)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    # magic 0x00000803 (uint8, 3 dims), then big-endian dimensions, then the data
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [3, 4, 5]
    assert len(raw) == 16 + arr.size
    back = read_idx(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([[1, -2], [70000, -300000]], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") * 2 + values.tobytes()
    (tmp_path / "ints.idx").write_bytes(raw)
    out = read_idx(tmp_path / "ints.idx")
    assert out.dtype == np.dtype("int32") and out.dtype.isnative
    np.testing.assert_array_equal(out, [[1, -2], [70000, -300000]])


def test_truncated_data_raises(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError, match="truncated") as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "100" in msg and "93" in msg  # promised vs found bytes


def test_trailing_bytes_raise(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros((2, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x01")
    with pytest.raises(DatasetError, match="promises 6 bytes of data, found 8"):
        read_idx(path)


def test_truncated_header_raises(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (4).to_bytes(4, "big"))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def test_truncated_gzip_raises(fmnist, tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = (fmnist / path.name).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cannot read IDX file") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "raw", [b"", b"\x00\x00", b"\x01\x00\x08\x01" + bytes(8), b"\x00\x00\x42\x01" + bytes(8)]
)
def test_bad_magic_raises(tmp_path, raw):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(DatasetError, match="not an IDX file") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_not_gzip_raises_dataset_error(tmp_path):
    path = tmp_path / "plain-named.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(path)


def test_missing_file_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "nope.idx")


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("split,n", [("train", 600), ("test", 400)])
def test_load_fashion_mnist(data_dir, fmnist, split, n):
    x, y = load_dataset("fashion-mnist", split, data_dir)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < DATASETS["fashion-mnist"].num_classes
    stem = "train" if split == "train" else "t10k"
    np.testing.assert_array_equal(x[:, 0], read_idx(fmnist / f"{stem}-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(y, read_idx(fmnist / f"{stem}-labels-idx1-ubyte.gz"))
    assert x.flags.writeable  # torch.from_numpy needs no copy/warning


def test_load_from_dataset_folder_directly_and_plain_files(fmnist, tmp_path):
    for stem in IDX_STEMS:
        _gunzip(fmnist / f"{stem}.gz", tmp_path / stem)
    x, y = load_dataset("fashion-mnist", "test", tmp_path)  # no fashion-mnist/ sub-folder
    ref_x, ref_y = load_dataset("fashion-mnist", "test", fmnist.parent)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)


def test_load_uses_env_var(data_dir, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(data_dir))
    assert default_data_dir() == data_dir
    x, _ = load_dataset("fashion-mnist", "test")
    assert x.shape == (400, 1, 28, 28)
    monkeypatch.delenv(ENV_VAR)
    assert default_data_dir() == Path.home() / ".cache" / "safenet" / "data"


def test_missing_dataset_says_how_to_fetch(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist", "train", tmp_path)
    msg = str(e.value)
    assert "safenet data fetch fashion-mnist" in msg
    assert str(tmp_path) in msg


def test_missing_cifar_says_how_to_fetch(tmp_path):
    with pytest.raises(DatasetError, match="safenet data fetch cifar10"):
        load_dataset("cifar10", "test", tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'") as e:
        load_dataset("svhn", "train", tmp_path)
    for name in DATASETS:
        assert name in str(e.value)


def test_unknown_split(data_dir):
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("fashion-mnist", "val", data_dir)


def test_label_out_of_range(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 10, 2], np.uint8))
    with pytest.raises(DatasetError, match="out of range"):
        load_dataset("fashion-mnist", "test", tmp_path)


def test_images_and_labels_disagree(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1], np.uint8))
    with pytest.raises(DatasetError, match="disagree"):
        load_dataset("fashion-mnist", "test", tmp_path)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar(tmp_path, name, archive, monkeypatch):
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", {})  # synthetic archives under official names
    expected = make_cifar(tmp_path / name, name, archive)
    for split, n in [("train", 15 if name == "cifar10" else 3), ("test", 3)]:
        x, y = load_dataset(name, split, tmp_path)
        data, labels = expected[split]
        assert x.shape == (n, 3, 32, 32) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        # official row layout: 1024 red, then 1024 green, then 1024 blue values, row-major
        np.testing.assert_array_equal(x[:, 0].reshape(n, -1), data[:, :1024])
        np.testing.assert_array_equal(x[:, 2, 31], data[:, 3072 - 32 :])
        np.testing.assert_array_equal(y, labels)


def test_load_cifar_directly_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", {})
    expected = make_cifar(tmp_path, "cifar10", archive=True)
    x, _ = load_dataset("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(x.reshape(len(x), -1), expected["test"][0])


def test_cifar_corrupt_pickle(tmp_path):
    make_cifar(tmp_path, "cifar10", archive=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(DatasetError, match="test_batch is not a CIFAR pickle"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_pickle_without_data(tmp_path):
    make_cifar(tmp_path, "cifar100", archive=False)
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"labels": [1]}))
    with pytest.raises(DatasetError, match="no 'data' entry"):
        load_dataset("cifar100", "test", tmp_path)


def test_cifar_bad_shape(tmp_path):
    make_cifar(tmp_path, "cifar10", archive=False)
    blob = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    with pytest.raises(DatasetError, match="unexpected shape"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_missing_batch(tmp_path):
    make_cifar(tmp_path, "cifar10", archive=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3 is missing"):
        load_dataset("cifar10", "train", tmp_path)


def test_cifar_corrupt_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball" * 100)
    with pytest.raises(DatasetError, match="corrupt"):
        load_dataset("cifar10", "test", tmp_path)


# --------------------------------------------------------------------------- torch side


def test_image_dataset_normalisation(data_dir):
    ds = ImageDataset("fashion-mnist", "train", data_dir)
    assert len(ds) == 600
    (x, y), *_ = ds.batches(16)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    expected = (ds.images[:16].float() / 255.0 - 0.2860) / 0.3530
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, ds.labels[:16])
    # the dataset's own statistics standardise the real images
    z = ds.normalize(ds.images)
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05


def test_image_dataset_limit(data_dir):
    full = ImageDataset("fashion-mnist", "test", data_dir)
    ds = ImageDataset("fashion-mnist", "test", data_dir, limit=50)
    assert len(ds) == 50
    assert torch.equal(ds.images, full.images[:50])
    assert torch.equal(ds.labels, full.labels[:50])
    assert ds.labels.dtype == torch.int64
    assert sum(len(y) for _, y in ds.batches(16)) == 50
    assert [len(y) for _, y in ds.batches(16)] == [16, 16, 16, 2]


def test_image_dataset_cifar_normalises_per_channel(tmp_path):
    make_cifar(tmp_path, "cifar10", archive=False)
    ds = ImageDataset("cifar10", "test", tmp_path)
    x, _ = next(ds.batches(8))
    mean = torch.tensor(DATASETS["cifar10"].mean).view(1, 3, 1, 1)
    std = torch.tensor(DATASETS["cifar10"].std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ds.images.float() / 255 - mean) / std)


def _shifts(out: torch.Tensor, img: torch.Tensor, pad: int) -> set[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) for which ``out`` is that crop of zero-padded ``img``."""
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    found = set()
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[..., dy : dy + h, dx : dx + w]
            for flipped in (False, True):
                if torch.equal(out, crop.flip(-1) if flipped else crop):
                    found.add((dy, dx, flipped))
    return found


def test_augment_batch_shape_and_content(data_dir):
    ds = ImageDataset("fashion-mnist", "test", data_dir, limit=32)
    x = ds.normalize(ds.images)
    out = augment_batch(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    found = [_shifts(out[i], x[i], pad=28 // 8) for i in range(len(x))]
    assert all(found)  # every image is a shifted (maybe flipped) copy of its original
    # flips and shifts are drawn per image, independently
    assert any(all(f for *_, f in s) for s in found)
    assert any(not any(f for *_, f in s) for s in found)
    assert any(all(dy != dx for dy, dx, _ in s) for s in found)
    assert len({min(s) for s in found}) > 3


def test_augment_batch_deterministic_under_seed(data_dir):
    ds = ImageDataset("fashion-mnist", "test", data_dir, limit=32)
    x = ds.normalize(ds.images)
    a = augment_batch(x, torch.Generator().manual_seed(7))
    b = augment_batch(x, torch.Generator().manual_seed(7))
    c = augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_make_loader_train_is_seeded_shuffled_and_augmented(data_dir):
    ds = ImageDataset("fashion-mnist", "train", data_dir, limit=100)
    a = list(make_loader(ds, 32, train=True, seed=5))
    b = list(make_loader(ds, 32, train=True, seed=5))
    c = list(make_loader(ds, 32, train=True, seed=6))
    assert [len(y) for _, y in a] == [32, 32, 32, 4]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][1], c[0][1]) or not torch.equal(a[0][0], c[0][0])
    labels = torch.cat([y for _, y in a])
    assert not torch.equal(labels, ds.labels)  # shuffled
    assert torch.equal(labels.sort().values, ds.labels.sort().values)  # a permutation
    x0 = a[0][0]
    assert x0.shape == (32, 1, 28, 28)
    plain = ds.normalize(ds.images)
    # augmented: the batch is not just a reordering of the normalised images
    assert not all(any(torch.equal(img, p) for p in plain) for img in x0)


def test_make_loader_eval_is_plain_and_ordered(data_dir):
    ds = ImageDataset("fashion-mnist", "test", data_dir, limit=40)
    batches = list(make_loader(ds, 16, train=False))
    x = torch.cat([b for b, _ in batches])
    y = torch.cat([b for _, b in batches])
    torch.testing.assert_close(x, ds.normalize(ds.images))
    assert torch.equal(y, ds.labels)


# --------------------------------------------------------------------------- fetch


def _boom(name, dest):
    raise AssertionError(f"source called for {name} although it should not be")


def test_fetch_from_system_copy(fmnist, tmp_path, monkeypatch):
    # Only the 'system copy' source sees the test data; the registry's loader must find the
    # fetched files in tmp_path itself (so the registry's SYSTEM_DIRS stays empty here).
    monkeypatch.setattr(fetch_mod, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "no", fmnist]})
    monkeypatch.setattr(
        fetch_mod,
        "SOURCES",
        [("system copy", fetch_mod._from_system), ("official source", _boom)],
    )
    log = []
    dest = fetch("fashion-mnist", tmp_path / "data", log=log.append)
    assert dest == tmp_path / "data" / "fashion-mnist"
    assert len(log) == 1 and "fetched from system copy" in log[0]
    for stem in IDX_STEMS:
        copied = dest / f"{stem}.gz"
        assert copied.read_bytes() == (fmnist / f"{stem}.gz").read_bytes()
    for split in ("train", "test"):
        x, y = load_dataset("fashion-mnist", split, tmp_path / "data")
        ref_x, ref_y = load_dataset("fashion-mnist", split, fmnist.parent)
        np.testing.assert_array_equal(x, ref_x)
        np.testing.assert_array_equal(y, ref_y)

    # a second fetch finds the data and calls no source at all
    monkeypatch.setattr(fetch_mod, "SOURCES", [("system copy", _boom)])
    log.clear()
    assert fetch("fashion-mnist", tmp_path / "data", log=log.append) == dest
    assert len(log) == 1 and "already present" in log[0] and str(dest) in log[0]


def test_fetch_system_copy_lacking_a_file_falls_through(fmnist, tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(fmnist / "train-images-idx3-ubyte.gz", partial)
    monkeypatch.setattr(fetch_mod, "SYSTEM_DIRS", {"fashion-mnist": [partial]})

    def second(name, dest):
        dest.mkdir(parents=True, exist_ok=True)
        for stem in IDX_STEMS:
            shutil.copy(fmnist / f"{stem}.gz", dest)

    monkeypatch.setattr(
        fetch_mod, "SOURCES", [("system copy", fetch_mod._from_system), ("mirror", second)]
    )
    log = []
    fetch("fashion-mnist", tmp_path / "data", log=log.append)
    assert "fetched from mirror" in log[-1]


def test_fetch_all_sources_fail(tmp_path, monkeypatch):
    def fail_dataset(name, dest):
        raise DatasetError("no system copy here")

    def fail_os(name, dest):
        raise OSError("network unreachable")

    def writes_nothing(name, dest):
        pass  # "succeeds" but the verification must still reject it

    monkeypatch.setattr(
        fetch_mod,
        "SOURCES",
        [("alpha", fail_dataset), ("beta", fail_os), ("gamma", writes_nothing)],
    )
    with pytest.raises(DatasetError) as e:
        fetch("fashion-mnist", tmp_path, log=lambda _: None)
    msg = str(e.value)
    assert "could not fetch fashion-mnist" in msg
    assert "alpha: no system copy here" in msg
    assert "beta: network unreachable" in msg
    assert "gamma:" in msg and "not found" in msg


def test_fetch_unknown_dataset_calls_no_source(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "SOURCES", [("system copy", _boom)])
    with pytest.raises(DatasetError, match="unknown dataset"):
        fetch("imagenet", tmp_path, log=lambda _: None)


def test_fetch_copies_a_system_copy_even_though_it_is_loadable(fmnist, tmp_path, monkeypatch):
    """A system copy must be copied into the data dir, not merely found (regression)."""
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {"fashion-mnist": [fmnist]})
    monkeypatch.setattr(fetch_mod, "SYSTEM_DIRS", {"fashion-mnist": [fmnist]})
    dest = fetch_mod.fetch("fashion-mnist", tmp_path, log=lambda _m: None)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in fmnist.glob("*.gz"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {})
    x, _ = registry.load_dataset("fashion-mnist", "test", tmp_path)
    assert len(x) == 400
