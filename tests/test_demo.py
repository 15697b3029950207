"""``safenet demo``: private inference of the built-in models against a server process."""

import multiprocessing as mp

import pytest

from safenet import demo
from safenet.cli import main
from safenet.data import registry


def test_demo_private_predictions_equal_fixed_point(data_dir, capsys):
    r = demo.run_demo(2, data_dir)
    rows = r["images"]
    assert [row["index"] for row in rows] == [0, 1]
    assert all(row["private"] == row["fixed_point"] for row in rows)
    cost = r["cost"]
    full, approx = cost["default"], cost["default-approx"]
    assert approx["relu_count"] + approx["poly_count"] == full["relu_count"]
    assert approx["relu_count"] <= full["relu_count"] // 2
    assert cost["default-approx"]["online_bytes"] < cost["default"]["online_bytes"]
    assert all(cost[m]["online_s"] > 0 and cost[m]["offline_bytes"] > 0 for m in cost)
    out = capsys.readouterr().out
    assert "2/2 private predictions equal the plaintext fixed-point ones" in out
    for head in ("ReLUs", "polys", "online s", "online MiB", "offline s", "offline MiB"):
        assert head in out
    assert "approx/default" in out
    assert f"{approx['relu_count'] / full['relu_count']:.2f}x" in out
    assert not mp.active_children()  # both servers were stopped


def test_demo_stops_the_server_when_the_client_fails(data_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("client gave up")

    monkeypatch.setattr(demo, "infer", broken)
    with pytest.raises(ConnectionError, match="client gave up"):
        demo.run_demo(1, data_dir, progress=False)
    assert not mp.active_children()


def test_demo_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {})  # no system copy to fall back on
    assert main(["demo", "--data-dir", str(tmp_path)]) == 2
    assert "safenet data fetch fashion-mnist" in capsys.readouterr().err
    assert main(["demo", "--images", "0"]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err
