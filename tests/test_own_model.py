"""Your own model and your own pictures, end to end: a network defined in this file (not in the
zoo, with max pooling), trained here on a folder of PNG/JPEG pictures, imported with
``safenet import``, approximated with ``safenet approximate``, served over TCP, and asked with
``safenet infer --image`` about a picture file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import serve_cli
from safenet import checkpoint
from safenet.cli import main
from safenet.data import DatasetError, ImageDataset, dataset_info
from safenet.data.images import load_image, parse_folder

CLASSES = ("checks", "horizontal", "vertical")


class TinyNet(nn.Module):
    """A user's network: conv, max pool, ReLU, conv, adaptive max pool, linear."""

    def __init__(self, num_classes: int = 3, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.bn1(self.conv1(x)), 2))
        x = F.adaptive_max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(torch.flatten(x, 1))


def build(num_classes: int = 3, width: int = 6) -> nn.Module:
    """The function ``safenet import --model-def tests/test_own_model.py:build`` calls."""
    return TinyNet(num_classes, width)


def _picture(kind: int, rng: np.random.Generator, h: int = 20, w: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(3, 6))
    pattern = [((yy // period + xx // period) % 2), (yy // period) % 2, (xx // period) % 2][kind]
    colour = rng.uniform(80, 255, size=3)
    img = pattern[..., None] * colour + rng.normal(0, 20, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of 20 x 24 pictures, one sub-folder per class, PNG and JPEG mixed."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(40):
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(_picture(k, rng)).save(root / name / f"{i:03d}{suffix}")
    return root


def test_an_image_folder_is_a_dataset(folder):
    name = f"folder:{folder}:16"
    info = dataset_info(name)
    assert info.classes == CLASSES and info.channels == 3 and info.image_size == 16
    assert info.sizes == (96, 24)  # every fifth picture of a class is the test split
    ds = ImageDataset(name, "test")
    assert tuple(ds.images.shape) == (24, 3, 16, 16) and set(ds.labels.tolist()) == {0, 1, 2}
    assert parse_folder(f"folder:{folder}") == (folder.resolve(), 32)
    with pytest.raises(DatasetError, match="does not exist"):
        dataset_info(f"folder:{folder}/nowhere")


def test_a_picture_is_prepared_as_the_training_images(folder):
    name = f"folder:{folder}:16"
    ds = ImageDataset(name, "train")
    prep = checkpoint.import_model(f"{__file__}:build", None, name).preprocess()
    first = sorted((folder / CLASSES[0]).iterdir())[0]
    x = load_image(first, prep)
    assert np.allclose(x, ds.normalize(ds.images[:1])[0].numpy(), atol=1e-6)


def _train(name: str, out) -> None:
    torch.manual_seed(0)
    model = build()
    ds = ImageDataset(name, "train")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(15):
        for x, y in ds.batches(32, shuffle=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    torch.save(model.state_dict(), out)


def test_own_model_approximate_serve_and_infer_a_picture(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # nominal costs, no calibration file
    name = f"folder:{folder}:16"
    _train(name, tmp_path / "w.pt")
    # import: the user's file and weights become a checkpoint every command takes
    assert main(["import", "--model-def", f"{__file__}:build", "--weights",
                 str(tmp_path / "w.pt"), "--dataset", name, "--out",
                 str(tmp_path / "m.pt")]) == 0  # fmt: skip
    assert "next: safenet eval" in capsys.readouterr().out
    assert main(["eval", "--model", str(tmp_path / "m.pt"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] > 0.8 and ev["agreement"] > 0.9
    # compile, fine-tune and bench take it like a zoo model
    assert main(["compile", "--model", str(tmp_path / "m.pt")]) == 0
    assert "maxpool" in capsys.readouterr().out
    assert main(["finetune", "--model", str(tmp_path / "m.pt"), "--ratio", "0.5", "--epochs",
                 "1", "--out", str(tmp_path / "ft.pt")]) == 0  # fmt: skip
    assert checkpoint.load(tmp_path / "ft.pt").data["classes"] == list(CLASSES)
    assert main(["bench", "--model", str(tmp_path / "ft.pt"), "--json"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bench["maxpool_outputs"] == 6 * 8 * 8 + 12 * 2 * 2 and bench["poly_count"] > 0
    # approximate: the search and the final fine-tune on the folder's pictures
    rc = main(["approximate", "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "s"),
               "--population", "2", "--generations-per-level", "1", "--steps", "3",
               "--eval-images", "24", "--wrap-images", "8", "--max-drop", "100",
               "--final-epochs", "1", "--runner", "sequential", "--json"])  # fmt: skip
    assert rc == 0
    best = tmp_path / "s" / "best.pt"
    ck = checkpoint.load(best)
    assert ck.activation is not None and ck.arch.endswith("test_own_model.py:build")
    assert ck.data["classes"] == list(CLASSES)
    plan = ck.plan()
    assert plan.public().info["preprocess"]["classes"] == list(CLASSES)
    # serve it and ask about one picture file over TCP
    proc, port = serve_cli("--model", best, "--max-sessions", "1")
    picture = sorted((folder / CLASSES[1]).iterdir())[4]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "safenet.cli", "infer", "--server", f"127.0.0.1:{port}",
             "--image", str(picture), "--top-k", "2", "--json"],
            capture_output=True, text=True, timeout=120, env=os.environ,
        )  # fmt: skip
    finally:
        proc.wait(timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert [t["name"] for t in res["top"]][0] in CLASSES and len(res["top"]) == 2
    assert res["top"][0]["score"] >= res["top"][1]["score"]
    # what the server computed is the plan's reference on the picture prepared the same way
    ref = plan.reference(load_image(picture, plan.info["preprocess"]))
    assert np.abs(np.array(res["logits"]) - ref).max() < 0.05
    assert CLASSES[int(np.argmax(ref))] == res["top"][0]["name"]


def test_import_errors_say_what_to_fix(tmp_path, folder):
    name = f"folder:{folder}:16"
    with pytest.raises(ValueError, match="has no function 'nope'"):
        checkpoint.import_model(f"{__file__}:nope", None, name)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.import_model(f"{__file__}:build", tmp_path / "bad.pt", name)
    with pytest.raises(ValueError, match="3 classes"):
        checkpoint.import_model(f"{__file__}:build", None, name, kwargs={"num_classes": 5})
    assert main(["import", "--model-def", "nowhere.py:build", "--dataset", name,
                 "--out", str(tmp_path / "x.pt")]) == 2  # fmt: skip


def test_approximate_any_module_from_python(folder, tmp_path, monkeypatch):
    import safenet

    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(1)
    net = build().eval()
    rep = safenet.approximate(
        net, f"folder:{folder}:16", tmp_path / "search", population=2, generations_per_level=1,
        steps=2, eval_images=24, wrap_images=8, max_drop=100, log=lambda _m: None,
    )  # fmt: skip
    student = rep["model"]
    assert any(isinstance(m, safenet.ChannelActivation) for m in student.modules())
    plan = safenet.compile(student.eval(), (3, 16, 16))
    assert plan.counts()["poly_count"] > 0  # the search replaced channels
    with pytest.raises(TypeError, match="unknown search settings: populations"):
        safenet.approximate(net, f"folder:{folder}:16", tmp_path / "x", populations=2)


def test_a_folder_named_relative_is_stored_absolute(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    ck = checkpoint.import_model(f"{__file__}:build", None, f"folder:{folder.name}:16")
    assert ck.dataset == f"folder:{folder.resolve()}:16"


def test_a_train_folder_alone_is_split_and_a_shape_that_differs_is_refused(folder, tmp_path):
    import shutil

    only = tmp_path / "only"
    shutil.copytree(folder, only / "train")
    info = dataset_info(f"folder:{only}:16")
    assert info.classes == CLASSES and info.sizes == (96, 24)
    with pytest.raises(ValueError, match="differs from"):
        checkpoint.import_model(f"{__file__}:build", None, f"folder:{folder}:16", (3, 8, 8))
    few = tmp_path / "few"
    (few / "a").mkdir(parents=True)
    shutil.copy(next((folder / CLASSES[0]).iterdir()), few / "a")
    with pytest.raises(DatasetError, match="no test pictures"):
        dataset_info(f"folder:{few}")
