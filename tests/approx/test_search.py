"""The planner's search (BTPBT and Delphi's baseline) on a tiny model: mechanics, not quality."""

import json
import math
import sys
from dataclasses import replace

import pytest
import torch

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


def test_epoch_budget_counts_across_resumes_and_can_be_raised(tiny_lenet, data_dir, tmp_path):
    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    # _cfg trains 2 members x 3 steps x 64 images = 384 images per generation on 500 images
    per_gen = 2 * 3 * 64 / 500
    logs = []
    first = search(ck.build(), ds, _cfg(max_drop=100.0, epoch_budget=1.5 * per_gen), tmp_path,
                   Calibration.nominal(), log=logs.append)  # fmt: skip
    assert first["generations"] == 2 and not first["complete"]
    assert first["epochs_trained"] == pytest.approx(2 * per_gen)
    assert any("epoch budget reached" in m for m in logs)
    # the same budget again: nothing more to do; a larger one (other settings equal) goes on
    same = search(ck.build(), ds, _cfg(max_drop=100.0, epoch_budget=1.5 * per_gen), tmp_path,
                  Calibration.nominal(), log=logs.append)  # fmt: skip
    assert same["generations"] == 2
    more = search(ck.build(), ds, _cfg(max_drop=100.0, epoch_budget=2.5 * per_gen), tmp_path,
                  Calibration.nominal(), log=logs.append)  # fmt: skip
    assert more["generations"] == 3 and more["epochs_trained"] == pytest.approx(3 * per_gen)


def test_delphi_planner_keeps_first_and_last_layers(tiny_lenet, data_dir, tmp_path):
    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    rep = search(ck.build(), ds, _cfg(method="delphi", population=3), tmp_path,
                 Calibration.nominal(), log=lambda _m: None)  # fmt: skip
    names = rep["layers"]
    assert rep["config"][names[0]][0] == 0.0 and rep["config"][names[-1]][0] == 0.0
    assert all(r in (0.0, 1.0) for r, _ in rep["config"].values())
    # as many generations (training steps) as BTPBT gets on the same network
    assert rep["generations"] == len(layer_tree(len(names)))


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
               "--final-epochs", "1", "--data-dir", str(data_dir), "--json",
               "--runner", "sequential"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "nominal unit costs" in captured.err
    out = json.loads(captured.out.strip().splitlines()[-1])
    best = load(out["checkpoint"])
    assert best.activation is not None and best.parent == str(tiny_lenet)
    # the winner was fine-tuned on the full train set and measured on the test set
    assert out["complete"] and 0.0 < out["test_accuracy"] <= 1.0
    assert best.metrics["accuracy"] == out["test_accuracy"]
    # exact truncation: no secure inference of the winner leaves the error bound
    assert out["failure_rate"] == 0.0 and out["final_failure_rate"] == 0.0
    assert out["final_float_failures"] == 0  # the float check on every test image
    assert best.training["finetune"]["epochs"] == 1 and "search" in best.training
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["calibration"].startswith("nominal")
    layers = json.loads((tmp_path / "s" / "layers.json").read_text())
    assert set(layers) == set(report["layers"]) and all("ratio" in v for v in layers.values())


def test_ray_runner_trains_resumes_across_runners_and_matches_sequential(
    tiny_lenet, data_dir, tmp_path
):
    import ray  # in the dev extra

    from safenet.approx.runners import RayRunner, TrialFailed

    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    cal = Calibration.nominal()
    logs = []
    seq = search(ck.build(), ds, _cfg(max_drop=100.0), tmp_path / "seq", cal, log=logs.append)
    assert any(m.startswith("runner: sequential") for m in logs)
    gens = seq["generations"]
    cfg = _cfg(max_drop=100.0, time_budget_s=1e-9)  # one generation per call, then resume
    with RayRunner(cpus_per_trial=1) as runner:
        # one search: sequential first generation, then Ray; the other: Ray first, then sequential
        for path, runners in (("a", [None] + [runner] * (gens - 1)),
                              ("b", [runner] + [None] * (gens - 1))):  # fmt: skip
            for r in runners:
                rep = search(ck.build(), ds, cfg, tmp_path / path, cal, log=logs.append, runner=r)
            if path == "a":
                saved = torch.load(tmp_path / "a" / "search.pt", weights_only=False)
                for m in saved["members"]:  # members trained on Ray came back to the driver
                    assert math.isfinite(m["accuracy"]) and math.isfinite(m["latency"])
                    assert m["state"] and set(m["state_config"]) == set(m["config"])
                    assert all(torch.isfinite(v.float()).all() for v in m["state"].values())
                assert saved["members"][0]["state_config"] == saved["members"][0]["config"]
            # the seeds are drawn in the driver: every mix of runners gives the same search
            assert rep["complete"] and rep["generations"] == gens
            assert rep["config"] == seq["config"]
            assert [h["rewards"] for h in rep["history"]] == [h["rewards"] for h in seq["history"]]
            assert rep["accuracy"] == pytest.approx(seq["accuracy"], abs=0.02)
        assert any(m.startswith("runner: ray") for m in logs)
        assert "resuming at generation 1" in " ".join(logs)

        def boom(x):
            if x == 1:
                raise ValueError("member 1 is broken")
            return 2 * x

        with pytest.raises(TrialFailed, match="member 1 is broken"):
            runner.map(boom, [(0,), (1,)])
        assert ray.is_initialized()
    assert not ray.is_initialized()  # the runner started Ray, so it shut it down


def test_runner_ray_without_ray_is_a_clear_error(tiny_lenet, tmp_path, capsys, monkeypatch):
    from safenet.approx.runners import RayUnavailable, make_runner

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'safenet\[ray\]'"):
        make_runner("ray")
    assert make_runner("auto").describe().startswith("sequential")
    rc = main(["approximate", "--model", str(tiny_lenet), "--out", str(tmp_path / "s"),
               "--runner", "ray"])  # fmt: skip
    assert rc == 2 and "pip install 'safenet[ray]'" in capsys.readouterr().err


def test_a_diverging_trial_returns_its_last_finite_weights(tiny_lenet, data_dir):
    from safenet.approx.search import _Member, _Search

    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    s = _Search(ck.build(), ds, _cfg(lr=1e12, steps=6), Calibration.nominal())
    m = _Member({n: [1.0, 3] for n in s.layers})  # all polynomial, at a ruinous rate
    trial = s.train(m, seed=1)
    assert all(bool(torch.isfinite(v).all()) for v in trial.state.values()
               if v.is_floating_point())  # fmt: skip
    assert 0.0 <= trial.accuracy <= 1.0


def test_changed_layers_blend_in_from_relu(tiny_lenet, data_dir, monkeypatch):
    from safenet.approx import search as search_mod
    from safenet.approx.search import _Member, _Search

    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    s = _Search(ck.build(), ds, _cfg(steps=4), Calibration.nominal())
    first, *rest = s.layers
    old = {n: [0.5, 2] for n in s.layers}
    state = s.train(_Member(dict(old)), seed=1).state
    seen = []
    real = search_mod.distillation_loss

    def spy(student_out, *args):
        seen.append({n: float(a.blend) for n, a in spy.acts.items()})
        return real(student_out, *args)

    build = s.build

    def build_and_watch(m):
        model = build(m)
        spy.acts = activations(model)
        return model

    monkeypatch.setattr(search_mod, "distillation_loss", spy)
    monkeypatch.setattr(s, "build", build_and_watch)
    new = {n: list(v) for n, v in old.items()} | {first: [1.0, 2]}
    s.train(_Member(new, state=state, state_config=old), seed=2)
    assert [b[first] for b in seen] == [0.5, 1.0, 1.0, 1.0]  # ramp over half the steps
    assert all(b[n] == 1.0 for b in seen for n in rest)  # unchanged layers stay as trained


def test_trials_measure_truncation_failures_and_the_reward_charges_them(tiny_lenet, data_dir):
    from safenet.approx.search import _Member, _Search

    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    s = _Search(ck.build(), ds, _cfg(steps=2, latency_budget=10.0), Calibration.nominal())
    relu = s.train(_Member({n: [0.0, 2] for n in s.layers}), seed=1)
    poly = s.train(_Member({n: [1.0, 3] for n in s.layers}), seed=1)
    assert relu.failure_rate == 0.0  # nothing is opened or truncated locally without polynomials
    assert poly.failure_rate == 0.0  # on real images every degree-3 sum stays below B
    k = min(s.cfg.wrap_images, len(s.eval_x))
    s.eval_x[k + 10 : k + 12] *= 1000  # out of range, but past the reference's images
    poly = s.train(_Member({n: [1.0, 3] for n in s.layers}), seed=1)
    assert poly.failure_rate == pytest.approx(2 / len(s.eval_x))  # the float check sees them
    s.eval_x[:8] *= 1000  # inputs far out of range: degree-3 sums pass B on those 8 images
    poly = s.train(_Member({n: [1.0, 3] for n in s.layers}), seed=1)
    assert poly.failure_rate == pytest.approx(8 / k)  # the reference's count, the larger
    m = _Member({n: [1.0, 3] for n in s.layers}, accuracy=0.9, latency=1.0,
                failure_rate=0.25)  # fmt: skip
    assert not s.feasible(m) and -2.0 < s.reward(m) < -1.0  # fails too often: infeasible
    s.cfg.max_failure_rate = 1.0  # tolerated failures are charged to accuracy, weighted
    assert s.feasible(m) and s.reward(m) == 0.0  # 0.9 - 20 x 0.25, floored at 0
    m.failure_rate = 0.001
    assert s.reward(m) == pytest.approx(0.88)  # one in 1,000 costs 2 points
    learning, broken = replace(m, accuracy=0.45, failure_rate=5e-4), replace(m, accuracy=0.1)
    broken.failure_rate = 0.0
    assert s.reward(learning) > s.reward(broken)  # a rare blow-up does not lose to a 10 % net
    s.cfg.failure_weight, m.failure_rate = 1.0, 0.25
    assert s.feasible(m) and s.reward(m) == pytest.approx(0.65)  # under a budget: accuracy
    m.latency = 20.0
    assert not s.feasible(m) and s.reward(m) < -2.0  # over the budget ranks lower still
    s.cfg.latency_budget, m.latency = None, 1.0
    s.threshold, m.failure_rate = 0.8, 0.05
    assert s.feasible(m) and s.reward(m) > -1.0
    m.failure_rate = 0.15  # 0.9 - 0.15 misses the 0.8 bar although the float accuracy clears it
    assert not s.feasible(m) and s.reward(m) < -1.0


def test_equal_rewards_rank_the_faster_member_first():
    from safenet.approx.search import _Member, _rank

    slow = _Member({}, accuracy=0.94, latency=1.04, reward=0.9436)
    fast = _Member({}, accuracy=0.94, latency=0.75, reward=0.9436)
    better = _Member({}, accuracy=0.95, latency=1.04, reward=0.95)
    assert sorted([slow, fast, better], key=_rank, reverse=True) == [better, fast, slow]


def test_a_search_saved_before_a_setting_existed_resumes():
    from dataclasses import asdict

    from safenet.approx.search import _fixed, _member

    old = asdict(_cfg())
    del old["wrap_images"]  # saved by a version without it: counts as the default
    assert _fixed(old) == _fixed(asdict(_cfg()))
    assert _fixed(old) != _fixed(asdict(_cfg(wrap_images=0)))
    m = _member({"config": {"a": [0.5, 2]}, "accuracy": 0.9, "wraps": 0.1, "gone": 1})
    assert m.accuracy == 0.9 and m.failure_rate == pytest.approx(1 - math.exp(-0.1))


def test_report_round_trips_through_its_json():
    from safenet.approx.search import SearchReport
    from safenet.nn.surgery import LayerSpec

    rep = SearchReport(
        method="safenet", config={"a": LayerSpec(0.5, 2), "b": LayerSpec(1.0, 3)}, accuracy=0.9,
        predicted_online_s=1.5, failure_rate=0.0, teacher_accuracy=0.92, teacher_online_s=2.0,
        threshold=0.915, feasible=False, generations=3, complete=True, epochs_trained=1.25,
        history=[{"generation": 0, "rewards": [0.5]}], layers=["a", "b"],
    )  # fmt: skip
    data = rep.to_dict()
    assert list(data)[:3] == ["method", "config", "accuracy"] and "model" not in data
    assert data["config"] == {"a": [0.5, 2], "b": [1.0, 3]} and rep["config"] == data["config"]
    text = json.dumps(data | {"test_accuracy": 0.91, "checkpoint": "best.pt"}, indent=1)
    again = SearchReport.from_dict(json.loads(text))
    assert again.config == rep.config and again.extra == {"test_accuracy": 0.91,
                                                          "checkpoint": "best.pt"}  # fmt: skip
    assert json.dumps(again.to_dict(), indent=1) == text and "test_accuracy" in again
    assert rep.layers_json() == {"a": {"ratio": 0.5, "degree": 2}, "b": {"ratio": 1.0, "degree": 3}}


def test_a_member_whose_configuration_changed_keeps_its_fitted_range(tiny_lenet, data_dir):
    """The refit bound survives loading the member's other weights (it was zeroed, silently
    turning the range penalty off for every member that had explored)."""
    from safenet.approx.search import _Member, _Search
    from safenet.nn.surgery import activations

    ck = load(tiny_lenet)
    ds = ImageDataset("fashion-mnist", "train", data_dir, 600)
    s = _Search(ck.build(), ds, _cfg(steps=2, latency_budget=10.0), Calibration.nominal())
    m = _Member({n: [1.0, 2] for n in s.layers})
    t = s.train(m, seed=1)
    moved = _Member({n: [1.0, 3] for n in s.layers}, state=t.state, state_config=dict(m.config))
    bounds = [float(a.input_bound) for a in activations(s.build(moved)).values()]
    assert all(b > 0 for b in bounds)
