"""CIFAR pickles are read without running code, and official archive names are MD5-pinned."""

import builtins
import hashlib
import importlib
import io
import os
import pickle
import pickletools
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import make_cifar
from safenet.data import DatasetError, load_dataset

cifar = importlib.import_module("safenet.data.cifar")


class _Payload:
    """Pickles as ``func(*args)``: what a crafted batch would run when loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _batch(data: object) -> bytes:
    return pickle.dumps({b"data": data, b"labels": [0]}, protocol=2)


def _write_archive(path: Path, folder: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for fn, blob in files.items():
            info = tarfile.TarInfo(f"{folder}/{fn}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _py2_batch(data: np.ndarray, labels: list[int], filenames: list[bytes]) -> bytes:
    """A batch as Python 2 cPickle (protocol 2) wrote the official ones: bytes are ``str``
    (BINSTRING) and the array comes from ``numpy.core.multiarray._reconstruct``."""

    def s(b: bytes) -> bytes:  # BINSTRING
        return b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", v)

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + i(0) + b"\x85" + s(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"  # dtype('u1', 0, 1)
        + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"  # dtype state
        + b"\x89" + s(data.tobytes()) + b"tb"  # array state: (1, shape, dtype, False, raw)
    )  # fmt: skip
    items = [
        s(b"batch_label") + s(b"testing batch 1 of 1"),
        s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e",
        s(b"data") + array,
        s(b"filenames") + b"](" + b"".join(s(f) for f in filenames) + b"e",
    ]
    return b"\x80\x02}(" + b"".join(items) + b"u."


def test_genuine_python2_format_batch_loads(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    blob = _py2_batch(data, labels, [b"a_1.png", b"b_2.png", b"c_3.png", b"d_4.png"])
    ops = {op.name for op, _arg, _pos in pickletools.genops(blob)}
    assert {"BINSTRING", "GLOBAL", "REDUCE", "BUILD"} <= ops  # the official archives' opcodes
    d = cifar._unpickle(blob, "py2")
    assert d[b"filenames"][0] == b"a_1.png" and d[b"labels"] == labels
    np.testing.assert_array_equal(d[b"data"], data)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    x, y = load_dataset("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(x.reshape(4, -1), data)
    np.testing.assert_array_equal(y, labels)


def test_python3_written_batches_still_load(tmp_path):
    expected = make_cifar(tmp_path, "cifar100", archive=False)  # protocol 2, _codecs.encode
    x, y = load_dataset("cifar100", "train", tmp_path)
    np.testing.assert_array_equal(x.reshape(len(x), -1), expected["train"][0])
    blob = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, protocol=4)
    assert cifar._unpickle(blob, "p4")[b"labels"] == [1]


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_malicious_batch_is_refused_and_never_runs(tmp_path, monkeypatch, how, archive):
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _Payload(os.system, f"touch {marker}")
    else:
        payload = _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")
    blob = _batch(payload)
    if archive:
        monkeypatch.setattr(cifar, "OFFICIAL_MD5", {})  # reach the unpickler, past the pin
        _write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                       {"test_batch": blob})  # fmt: skip
    else:
        (tmp_path / "cifar-10-batches-py").mkdir()
        (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    refused = rf"refused pickle global \w+\.{payload.func.__name__}$"  # posix, __builtin__
    with pytest.raises(DatasetError, match=rf"test_batch .*{refused}"):
        load_dataset("cifar10", "test", tmp_path, system=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [("numpy", "load"), ("subprocess", "Popen"), ("numpy.core.numeric", "_frombuffer"),
     ("builtins", "getattr"), ("numpy.core.multiarray", "scalar")],
)  # fmt: skip
def test_any_other_global_is_refused(module, name):
    blob = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(DatasetError, match=rf"refused pickle global {module}\.{name}$"):
        cifar._unpickle(blob, "x")


def test_codecs_encode_is_latin1_only():
    blob = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00hiX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DatasetError, match="not allowed"):
        cifar._unpickle(blob, "x")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_archive_name_with_other_content_is_refused(tmp_path, monkeypatch, name):
    expected = make_cifar(tmp_path, name, archive=True)  # well-formed, but not the official file
    with pytest.raises(DatasetError, match="not the official archive .*MD5"):
        load_dataset(name, "test", tmp_path, system=False)
    archive = tmp_path / cifar.ARCHIVES[name]
    digest = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    monkeypatch.setitem(cifar.OFFICIAL_MD5, archive.name, digest)  # the pin is all that refused
    x, _ = load_dataset(name, "test", tmp_path, system=False)
    np.testing.assert_array_equal(x.reshape(len(x), -1), expected["test"][0])


def test_official_digests_are_pinned():
    assert cifar.OFFICIAL_MD5 == {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    }
