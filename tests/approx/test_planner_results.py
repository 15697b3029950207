"""bench/planner_results.py's summaries (targets, table, plots) on hand-made result rows."""

import importlib.util
import json

import pytest

from helpers import REPO

_PATH = REPO / "bench" / "planner_results.py"
_spec = importlib.util.spec_from_file_location("planner_results", _PATH)
pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pr)


def _row(label, method, acc, online, relus=100, polys=0):
    return {"label": f"r20/{label}", "arch": "r20", "method": method, "accuracy_float": acc,
            "float_images": 10000, "accuracy_fixed_point": acc, "test_images": 2000,
            "float_fixed_agreement": 0.998, "secure_accuracy": 1.0, "secure_images": 10,
            "online_s": online, "predicted_online_s": online, "online_bytes": 2**20 * online,
            "offline_s": 5.0, "relu_count": relus, "poly_count": polys,
            "layers": [{"layer": "a", "channels": 8, "relu_fraction": 0.5,
                        "degree": 2}]}  # fmt: skip


RESULTS = {r["label"]: r for r in [
    _row("all-relu", "all-relu", 0.936, 1.0),
    _row("safenet-b0.5", "safenet", 0.934, 0.45),
    _row("safenet-b0.3", "safenet", 0.925, 0.30),  # more than 0.5 pt lost: not the pick
    _row("delphi-b0.5", "delphi", 0.920, 0.48),
    _row("delphi-b0.3", "delphi", 0.900, 0.31),
    _row("delphi-b0.8", "delphi", 0.935, 0.80),  # the cheapest Delphi plan as accurate
]}  # fmt: skip


def test_targets_pick_fastest_safenet_within_half_a_point_and_pair_budgets():
    lines = pr.targets(RESULTS)
    assert "r20/safenet-b0.5" in lines[0] and "0.45x all-ReLU" in lines[0]
    assert "r20/delphi-b0.8" in lines[0] and "0.56x" in lines[0]  # 0.45 / 0.80
    at = {ln.split("'s accuracy")[0]: ln for ln in lines if "'s accuracy" in ln}
    assert "r20/safenet-b0.3 92.50 % at 0.300 s -> 0.97x" in at["r20 at r20/delphi-b0.3"]
    assert "r20/safenet-b0.3 92.50 % at 0.300 s -> 0.62x" in at["r20 at r20/delphi-b0.5"]
    assert "r20 at r20/delphi-b0.8" not in at  # no SAFENet plan is as accurate
    by_budget = {ln.split(" s:")[0]: ln for ln in lines[1:] if "budget" in ln}
    assert "+1.40 pt" in by_budget["r20 budget 0.5"]
    assert "+2.50 pt" in by_budget["r20 budget 0.3"]


def test_a_plan_whose_truncations_fail_does_not_qualify():
    rows = dict(RESULTS)
    rows["r20/safenet-b0.5"] = rows["r20/safenet-b0.5"] | {"failure_rate": 0.2}
    first = pr.targets(rows)[0]
    assert "no SAFENet model within 0.5 pt" in first  # b0.5 drops to 73.4 %, b0.3 is 1.1 pt off
    assert "-18.60 pt" in " ".join(pr.targets(rows))  # 0.934 - 0.2 against Delphi's 0.920


def test_targets_fall_back_to_all_relu_when_no_delphi_plan_is_as_accurate():
    rows = {k: v for k, v in RESULTS.items() if "delphi-b0.8" not in k}
    assert "r20/all-relu 1.000 s -> 0.45x" in pr.targets(rows)[0]


def test_frontier_keeps_only_undominated_points():
    pts = [(1.0, 0.9), (0.5, 0.8), (0.7, 0.7), (2.0, 0.95)]
    assert pr._frontier(pts) == [(0.5, 0.8), (1.0, 0.9), (2.0, 0.95)]


def test_table_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "planner.json"
    path.write_text(json.dumps(RESULTS))
    args = type("A", (), {"results": str(path), "out": str(tmp_path / "png")})
    assert pr.cmd_table(args) == 0
    table = capsys.readouterr().out
    assert table.count("| r20/") == len(RESULTS) and "| 0.45 |" in table
    assert pr.cmd_plot(args) == 0
    assert (tmp_path / "png" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "png" / "layers-r20.png").stat().st_size > 1000


def test_degree_summary_counts_polynomial_layers_and_channels_on_degree_3():
    row = _row("safenet-b0.4", "safenet", 0.93, 0.4) | {"layers": [
        {"layer": "a", "channels": 16, "relu_fraction": 0.25, "degree": 3},  # 12 poly channels
        {"layer": "b", "channels": 32, "relu_fraction": 0.5, "degree": 2},  # 16
        {"layer": "c", "channels": 64, "relu_fraction": 1.0, "degree": 3},  # all ReLU: not counted
    ]}  # fmt: skip
    d = pr.degree_summary(row)
    assert (d["poly_layers"], d["degree3_layers"]) == (2, 1)
    assert d["degree3_channel_share"] == pytest.approx(12 / 28)
    assert pr.degree_summary(RESULTS["r20/all-relu"] | {"layers": []})["poly_layers"] == 0


def test_population_degrees_reads_the_final_members_of_a_search(tmp_path):
    torch = pytest.importorskip("torch")
    members = [{"config": {"a": [0.5, 3], "b": [0.0, 3], "c": [1.0, 2]}},
               {"config": {"a": [0.25, 2], "b": [0.75, 3], "c": [0.0, 2]}}]  # fmt: skip
    torch.save({"members": members}, tmp_path / "search.pt")
    got = pr.population_degrees(tmp_path / "search.pt")
    assert got == {"members": 2, "replacing_layers": 4, "degree3_layers": 2}
    assert pr.population_degrees(tmp_path / "missing.pt") == {}


def test_degrees_and_table_show_degree_3(tmp_path, capsys):
    row = _row("safenet-b0.4", "safenet", 0.93, 0.4) | {
        "layers": [{"layer": "a", "channels": 8, "relu_fraction": 0.5, "degree": 3}],
        "population_degrees": {"members": 4, "replacing_layers": 8, "degree3_layers": 3},
        "leak_bound": 0.0049}  # fmt: skip
    path = tmp_path / "planner.json"
    path.write_text(json.dumps({row["label"]: row, "r20/all-relu": RESULTS["r20/all-relu"]}))
    args = type("A", (), {"results": str(path)})
    assert pr.cmd_degrees(args) == 0
    out = capsys.readouterr().out
    assert "winner 1 of 1 polynomial layers on degree 3 (100 %" in out
    assert "3 of 8 replacing layers on degree 3" in out and "all-relu" not in out
    assert pr.cmd_table(args) == 0
    table = capsys.readouterr().out
    assert "| 0.0049 |" in table and "| 1 of 1 |" in table


def test_hardening_table_shows_rounds_and_tail_estimates(tmp_path, capsys):
    hard = {"images": 60000, "failures": [5, 0], "max_ratio": [1.9, 1.1], "rounds": 1,
            "ok": True, "max_output": 16.3, "output_bound": 65.2}  # fmt: skip
    done = _row("safenet-b0.4", "safenet", 0.93, 0.4) | {
        "hardening": hard, "output_bound": 65.2, "float_failures": 0,
        "largest_range_ratio": 1.11, "tail_ratio_1_5": 3e-9, "tail_ratio_2": 1e-20}  # fmt: skip
    raw = _row("delphi-b0.4", "delphi", 0.92, 0.4) | {
        "hardening": None, "output_bound": None, "float_failures": 2,
        "largest_range_ratio": 1.6, "tail_ratio_1_5": 2e-4, "tail_ratio_2": 2e-4}  # fmt: skip
    path = tmp_path / "planner.json"
    rows = [done, raw, RESULTS["r20/all-relu"]]
    path.write_text(json.dumps({r["label"]: r for r in rows}))
    assert pr.cmd_hardening(type("A", (), {"results": str(path)})) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| r20/delphi-b0.4 | not hardened | 2 | 1.60 | 2.0e-04 | 2.0e-04 | 0.0 |"
    assert out[3] == "| r20/safenet-b0.4 | 5 -> 0 | 0 | 1.11 | 3.0e-09 | 1.0e-20 | 65.2 |"
    assert len(out) == 4  # the all-ReLU row has nothing to harden
