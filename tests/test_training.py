"""Training from scratch: checkpoints carry metadata, metrics are logged, resume continues."""

import json

import pytest
import torch

from safenet import checkpoint
from safenet.training import TrainConfig, lr_at, train


def test_lr_schedule_warms_up_then_decays():
    base = 0.1
    lrs = [lr_at(s, 100, 10, base) for s in range(100)]
    assert lrs[0] == pytest.approx(base / 10)
    assert lrs[9] == pytest.approx(base)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 0.01 * base


def test_train_writes_checkpoint_metrics_and_resumes(tmp_path, data_dir):
    cfg = TrainConfig(arch="minionn", width=8, epochs=2, batch_size=32, limit=600, seed=1)
    out = tmp_path / "minionn.pt"
    ck = train(cfg, out, data_dir, log=lambda _m: None)
    assert out.is_file()
    assert ck.arch == "minionn" and ck.dataset == "fashion-mnist"
    assert ck.arch_kwargs == {"in_channels": 1, "image_size": 28, "num_classes": 10, "width": 8}
    assert ck.activation is None
    assert ck.metrics["evaluated_on"] == 400
    assert ck.metrics["accuracy"] > 0.3, "two epochs on 600 images should beat chance clearly"
    log = (tmp_path / "minionn.pt.metrics.jsonl").read_text()
    rows = [json.loads(line) for line in log.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert ck.training["epoch"] == 2

    more = train(
        TrainConfig(arch="minionn", width=8, epochs=3, batch_size=32, limit=600, seed=1),
        out, data_dir, resume=True, log=lambda _m: None,
    )  # fmt: skip
    assert more.training["epoch"] == 3
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    model = checkpoint.load(out).build()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resume_refuses_other_architecture(tmp_path, data_dir):
    out = tmp_path / "m.pt"
    train(TrainConfig(arch="lenet5", epochs=1, limit=128, eval_limit=64), out, data_dir,
          log=lambda _m: None)  # fmt: skip
    with pytest.raises(ValueError, match="another architecture"):
        train(TrainConfig(arch="minionn", epochs=2, limit=128), out, data_dir, resume=True)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="default, default-approx"):
        checkpoint.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safenet checkpoint"):
        checkpoint.load(bad)
    torch.save({"hello": 1}, bad)
    with pytest.raises(ValueError, match="not a safenet checkpoint"):
        checkpoint.load(bad)
