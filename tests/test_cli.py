"""The `safenet` command: the eval contract, errors, compile, info."""

import json
import subprocess
import sys

import pytest

from safenet.cli import main
from safenet.training import TrainConfig, train


@pytest.fixture(scope="module")
def lenet(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("cli") / "lenet.pt"
    train(TrainConfig(arch="lenet5", epochs=1, batch_size=64, limit=600), out, data_dir,
          log=lambda _m: None)  # fmt: skip
    return out


def test_eval_json_contract(lenet, data_dir, capsys):
    rc = main(["eval", "--model", str(lenet), "--dataset", "fashion-mnist", "--split", "test",
               "--limit", "50", "--json", "--data-dir", str(data_dir)])  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "accuracy_fixed_point", "agreement", "relu_count", "poly_count"):
        assert key in report
    assert report["images"] == 50
    assert 0.9 <= report["agreement"] <= 1.0
    assert report["relu_count"] == 6 * 28 * 28 + 16 * 10 * 10 + 120 + 84
    assert report["poly_count"] == 0
    assert report["overflows"] == 0
    assert report["expected_wraps_per_inference"] == 0.0  # all ReLU: nothing truncated locally
    assert report["secure_failure_rate"] == 0.0
    assert report["leak_bound_per_inference"] == 0.0  # nothing is opened outside a circuit


def test_eval_bad_model_is_a_clear_error(capsys):
    assert main(["eval", "--model", "no/such/model.pt"]) == 2
    assert "no model at" in capsys.readouterr().err


def test_missing_dataset_says_how_to_fix(lenet, tmp_path, capsys, monkeypatch):
    from safenet.data import registry

    monkeypatch.setattr(registry, "SYSTEM_DIRS", {})  # this machine may have a system copy
    rc = main(["eval", "--model", str(lenet), "--limit", "5", "--data-dir", str(tmp_path)])
    assert rc == 2
    assert "safenet data fetch fashion-mnist" in capsys.readouterr().err


def test_compile_writes_plan(lenet, tmp_path, capsys):
    out = tmp_path / "lenet.plan"
    assert main(["compile", "--model", str(lenet), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fingerprint" in text and out.is_file()
    from safenet.plan import Plan

    assert Plan.load(out).fingerprint() in text


def test_info_and_entry_point(lenet):
    out = subprocess.run([sys.executable, "-m", "safenet.cli", "info", "--model", str(lenet),
                          "--json"], capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads(out.stdout)
    assert info["arch"] == "lenet5" and info["dataset"] == "fashion-mnist"


def test_finetune_rejects_bad_layer_json(lenet, tmp_path, capsys):
    rc = main(["finetune", "--model", str(lenet), "--layers", "{not json", "--out",
               str(tmp_path / "x.pt")])  # fmt: skip
    assert rc == 2
    assert "--layers must be JSON" in capsys.readouterr().err


def test_plot_writes_png(lenet, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curve.png"
    assert main(["plot", "--model", str(lenet), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_flags_default_to_the_config_dataclasses():
    """The train, finetune and approximate flags are read from their configs' fields."""
    from safenet.approx.finetune import FinetuneConfig
    from safenet.approx.search import SearchConfig
    from safenet.cli import _FINETUNE, _SEARCH, _TRAIN, _config, build_parser
    from safenet.training import TrainConfig

    parse = build_parser().parse_args
    assert _config(TrainConfig, parse(["train", "--out", "x"]), _TRAIN) == TrainConfig()
    args = parse(["finetune", "--model", "m", "--out", "x"])
    assert _config(FinetuneConfig, args, _FINETUNE) == FinetuneConfig()
    assert _config(SearchConfig, parse(["approximate", "--out", "x"]), _SEARCH) == SearchConfig()
    args = parse(["approximate", "--out", "x", "--time-budget", "5", "--method", "delphi",
                  "--min-accuracy", "0.9", "--steps", "3"])  # fmt: skip
    cfg = _config(SearchConfig, args, _SEARCH)
    assert (cfg.time_budget_s, cfg.method, cfg.min_accuracy, cfg.steps) == (5.0, "delphi", 0.9, 3)
    with pytest.raises(SystemExit):
        parse(["approximate", "--out", "x", "--method", "random"])


def test_harden_writes_a_hardened_checkpoint_or_refuses(lenet, tmp_path, data_dir, capsys):
    """``safenet harden`` on a fine-tune written without hardening: every training image is
    checked, the report and the output bound land in the checkpoint, and the exit status
    says whether training images still fail."""
    from safenet import checkpoint

    raw, out = tmp_path / "raw.pt", tmp_path / "hard.pt"
    assert main(["finetune", "--model", str(lenet), "--ratio", "1", "--degree", "3",
                 "--epochs", "1", "--limit", "600", "--harden-rounds", "0", "--out", str(raw),
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    assert "hardening" not in checkpoint.load(raw).metrics
    capsys.readouterr()
    rc = main(["harden", "--model", str(raw), "--out", str(out), "--rounds", "2", "--steps", "30",
               "--data-dir", str(data_dir)])  # fmt: skip
    hard = checkpoint.load(out).metrics["hardening"]
    assert hard["images"] == 600 and len(hard["failures"]) >= 1
    assert rc == (0 if hard["ok"] else 4)
    captured = capsys.readouterr()
    if rc == 0:
        assert json.loads(captured.out.strip().splitlines()[-1])["hardening"] == hard
        assert checkpoint.load(out).plan().public().info["output_bound"] > 0
    else:
        assert "still fail" in captured.err
    assert main(["harden", "--model", str(lenet), "--out", str(out)]) == 2  # a ReLU model
    assert "not an approximated checkpoint" in capsys.readouterr().err
