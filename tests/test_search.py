"""The planner's search (BTPBT and Delphi's baseline) on a tiny model: mechanics, not quality."""

import json

import pytest

from safenet.approx.cost import Calibration
from safenet.approx.search import RATIOS, SearchConfig, layer_tree, search
from safenet.checkpoint import load
from safenet.cli import main
from safenet.data.torchdata import ImageDataset
from safenet.nn.surgery import activations


def test_layer_tree_halves_down_to_single_layers():
    levels = layer_tree(5)
    assert levels[0] == [[0, 1, 2, 3, 4]]
    assert levels[1] == [[0, 1, 2], [3, 4]]
    assert levels[-1] == [[i] for i in range(5)]
    for level in levels:
        assert sorted(i for g in level for i in g) == list(range(5))


def test_config_validation():
    with pytest.raises(ValueError, match="method"):
        SearchConfig(method="random")
    with pytest.raises(ValueError, match="population"):
        SearchConfig(population=1)


def _cfg(**kw):
    base = dict(population=2, generations_per_level=1, steps=3, eval_images=100)
    return SearchConfig(**(base | kw))


def test_safenet_search_runs_checkpoints_and_resumes(tiny_lenet, data_dir, tmp_path):
    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    cal = Calibration.nominal()
    logs = []
    cfg = _cfg(max_drop=100.0)  # any accuracy is acceptable: the search must cut latency
    rep = search(ck.build(), ds, cfg, tmp_path, cal, log=logs.append)
    levels = len(layer_tree(len(rep["layers"])))
    assert rep["generations"] == levels and (tmp_path / "search.pt").exists()
    assert set(rep["config"]) == set(rep["layers"])
    for ratio, degree in rep["config"].values():
        assert ratio in RATIOS and degree in (2, 3)
    assert rep["feasible"] and rep["predicted_online_s"] < rep["teacher_online_s"]
    model = rep["model"]
    assert set(activations(model)) == set(rep["layers"])
    # a finished search resumes as finished
    again = search(ck.build(), ds, cfg, tmp_path, cal, log=logs.append)
    assert again["generations"] == levels and any("resuming" in m for m in logs)
    with pytest.raises(ValueError, match="other settings"):
        search(ck.build(), ds, _cfg(steps=4), tmp_path, cal, log=logs.append)


def test_time_budget_stops_and_a_rerun_resumes(tiny_lenet, data_dir, tmp_path):
    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    cfg = _cfg(max_drop=100.0, time_budget_s=1e-9)  # stop after every generation
    logs = []
    first = search(ck.build(), ds, cfg, tmp_path, Calibration.nominal(), log=logs.append)
    assert first["generations"] == 1
    second = search(ck.build(), ds, cfg, tmp_path, Calibration.nominal(), log=logs.append)
    assert second["generations"] == 2
    assert "resuming at generation 1" in " ".join(logs)


def test_delphi_planner_keeps_first_and_last_layers(tiny_lenet, data_dir, tmp_path):
    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    rep = search(ck.build(), ds, _cfg(method="delphi", population=3), tmp_path,
                 Calibration.nominal(), log=lambda _m: None)  # fmt: skip
    names = rep["layers"]
    assert rep["config"][names[0]][0] == 0.0 and rep["config"][names[-1]][0] == 0.0
    assert all(r in (0.0, 1.0) for r, _ in rep["config"].values())


@pytest.mark.parametrize("method", ["safenet", "delphi"])
def test_latency_budget_is_respected(tiny_lenet, data_dir, tmp_path, method):
    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    cal = Calibration.nominal()
    free = search(ck.build(), ds, _cfg(method=method, population=3), tmp_path / "free", cal,
                  log=lambda _m: None)  # fmt: skip
    budget = 0.7 * free["teacher_online_s"]
    rep = search(ck.build(), ds, _cfg(method=method, population=3, latency_budget=budget),
                 tmp_path / "b", cal, log=lambda _m: None)  # fmt: skip
    if rep["feasible"]:
        assert rep["predicted_online_s"] <= budget
    else:  # only possible for Delphi, whose random starts may all be over the budget
        assert method == "delphi" and rep["predicted_online_s"] > budget
    if method == "safenet":  # starts from the smallest uniform ratio that fits: feasible at once
        assert rep["feasible"] and all(r > 0 for r, _ in rep["config"].values())


def test_approximate_cli(tiny_lenet, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no calibration file: nominal costs, with a note
    rc = main(["approximate", "--model", str(tiny_lenet), "--out", str(tmp_path / "s"),
               "--population", "2", "--generations-per-level", "1", "--steps", "2",
               "--eval-images", "100", "--limit", "600", "--max-drop", "100",
               "--final-epochs", "1", "--data-dir", str(data_dir), "--json"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "nominal unit costs" in captured.err
    out = json.loads(captured.out.strip().splitlines()[-1])
    best = load(out["checkpoint"])
    assert best.activation is not None and best.parent == str(tiny_lenet)
    # the winner was fine-tuned on the full train set and measured on the test set
    assert out["complete"] and 0.0 < out["test_accuracy"] <= 1.0
    assert best.metrics["accuracy"] == out["test_accuracy"]
    assert best.training["finetune"]["epochs"] == 1 and "search" in best.training
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["calibration"].startswith("nominal")
    layers = json.loads((tmp_path / "s" / "layers.json").read_text())
    assert set(layers) == set(report["layers"]) and all("ratio" in v for v in layers.values())
