"""The cost model's counts and byte predictions against real sessions (no timing asserted:
latency accuracy is validated in bench/cost_validate.py and docs/cost-model.md)."""

import dataclasses
import json

import numpy as np
import pytest

from safenet.approx.cost import NETWORKS, Calibration, Network, count, predict
from safenet.benchmark import random_plan
from safenet.cli import main
from safenet.crypto.gc import relu_circuit
from safenet.protocol.engine import ClientSession, ServerModel, ServerSession
from safenet.protocol.session import encode_input


def _cal(**kw):
    base = dict(
        gc_eval_per_and=2e-8, gc_encode_per_bit=1e-8, linear_online_per_mac=1e-9,
        poly_online_per_element=1e-7, online_layer_overhead=1e-3, gc_offline_per_and=5e-8,
        he_linear_per_product=2e-3, he_poly_per_ct=6e-3, ct_in_bytes=524_400.0,
        ct_reply_bytes=262_300.0, public_key_bytes=655_473.0, local=Network(2e9, 1e-4, "local"),
    )  # fmt: skip
    return Calibration(**(base | kw))


@pytest.fixture(scope="module")
def half_plan():
    return random_plan("lenet5", (1, 28, 28), relu_ratio=0.5, width=2)


def test_counts_match_the_plan(half_plan):
    c = count(half_plan)
    assert {"relu_count": c.relu, "poly_count": c.poly} == half_plan.counts()
    p = half_plan.field.p
    ands = rows = 0
    for _, op in half_plan.activations():
        n = int(op.arrays["relu_mask"].sum()) * int(
            np.prod(op.shape[1:]) if len(op.shape) > 1 else 1
        )
        circuit = relu_circuit(p, op.attrs.shift)
        ands += circuit.and_count * n
        rows += circuit.n_outputs * n
    assert c.ands == ands and c.label_bits == c.relu * p.bit_length() and c.gc_rows == rows
    conv = half_plan.ops[1]
    assert conv.kind == "conv"
    assert c.layers[1]["macs"] == int(np.prod(conv.shape)) * int(
        np.prod(conv.arrays["weight"].shape[1:])
    )
    assert c.act_layers == len(half_plan.activations())


def test_predicted_bytes_match_a_real_session(half_plan, run_parties):
    x = np.random.default_rng(0).normal(size=(1, 28, 28))

    def server(conn):
        s = ServerSession(ServerModel(half_plan), conn)
        s.offline()
        s.online()
        return s.report()

    def client(conn):
        cl = ClientSession(half_plan.public(), conn)
        cl.offline()
        cl.online(encode_input(half_plan, x))
        return cl.report()

    rep = run_parties(server, client)["client"]
    pred = predict(half_plan, _cal())
    traffic = rep["traffic"]

    def measured(phase, label):
        c = traffic[phase][label]
        return c["bytes_sent"] + c["bytes_received"]

    online = sum(measured("online", k) for k in traffic["online"])
    assert abs(pred["online_bytes"] - online) / online < 0.01
    assert pred["online_rounds"] == traffic["rounds"]["online"]
    parts = pred["offline_bytes_parts"]
    assert abs(parts["gc_tables"] - measured("offline", "gc.tables")) < 1000
    assert abs(parts["gc_rows"] - measured("offline", "gc.rows")) < 1000
    assert "gc.mask" not in traffic["offline"] and "gc.decode" not in traffic["offline"]
    ot = measured("offline", "ot.ext")
    assert abs(parts["ot"] - ot) / ot < 0.02


def test_prediction_scales_with_unit_costs_and_network(half_plan):
    c = count(half_plan)
    a = predict(c, _cal())
    b = predict(c, _cal(gc_eval_per_and=4e-8))
    assert b["online_parts_s"]["gc_eval"] == pytest.approx(2 * a["online_parts_s"]["gc_eval"], 0.02)
    wan = predict(c, _cal(), NETWORKS["wan"])
    assert wan["online_s"] > a["online_s"] + a["online_rounds"] * 0.039
    assert wan["online_parts_s"]["transfer"] == pytest.approx(
        wan["online_bytes"] / (100e6 / 8) + wan["online_rounds"] * 0.04, 1e-3
    )


def test_calibration_roundtrip_and_errors(tmp_path):
    cal = _cal()
    path = cal.save(tmp_path / "sub" / "cal.json")
    assert Calibration.load(path) == cal
    with pytest.raises(FileNotFoundError, match="safenet bench --calibrate"):
        Calibration.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"gc_eval_per_and": 1}))
    with pytest.raises(ValueError, match="not a safenet calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_cost_cli(tmp_path, capsys):
    path = _cal().save(tmp_path / "cal.json")
    rc = main(["cost", "--arch", "resnet20", "--input-shape", "1,16,16", "--relu-ratio", "0.5",
               "--calibration", str(path), "--network", "wan", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["network"]["name"] == "wan" and out["poly_count"] > 0 and out["online_s"] > 0
    rc = main(["cost", "--arch", "resnet20", "--input-shape", "1,16,16", "--calibration",
               str(path), "--bandwidth", "50", "--rtt", "10", "--json"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["network"]["rtt"] == pytest.approx(0.01)
    assert main(["cost", "--arch", "resnet20", "--calibration", str(tmp_path / "no.json")]) == 2
    assert "safenet bench --calibrate" in capsys.readouterr().err


def test_gc_evaluation_fit_separates_gates_from_layers():
    from safenet.approx.cost import _fit_gc_eval

    a, b = 2e-8, 3e-3
    rows = [(n, k, a * n + b * k) for n, k in ((8e6, 19), (4e6, 19), (3.5e6, 2))]
    per_and, per_layer = _fit_gc_eval(rows)
    assert per_and == pytest.approx(a, rel=1e-6) and per_layer == pytest.approx(b, rel=1e-6)
    one = [(8e6, 19, a * 8e6)]  # a single run cannot separate the two: per AND only
    assert _fit_gc_eval(one) == (pytest.approx(a), 0.0)


def test_relu_layers_plans_keep_whole_layers_and_are_priced_per_layer():
    plan = random_plan("resnet20", (1, 16, 16), width=2, relu_layers=2)
    c = count(plan)
    assert c.relu_layers == 2 and c.act_layers == 19
    acts = [op for op in plan.ops if op.kind == "activation"]
    assert acts[0].arrays["relu_mask"].all() and acts[-1].arrays["relu_mask"].all()
    assert not any(op.arrays["relu_mask"].any() for op in acts[1:-1])
    cal = Calibration.nominal()
    base = predict(c, cal)["online_parts_s"]["gc_eval"]
    cal2 = dataclasses.replace(cal, gc_eval_per_relu_layer=0.01)
    assert predict(c, cal2)["online_parts_s"]["gc_eval"] == pytest.approx(base + 0.02, abs=1e-4)
    with pytest.raises(ValueError, match="relu_layers"):
        random_plan("resnet20", (1, 16, 16), width=2, relu_layers=0)


def test_loopback_measurement_fits_the_transport_limits():
    """``safenet bench --calibrate`` measures loopback with frames the receiver accepts (a
    256 MiB bulk frame once exceeded the 256 MiB cap by its header)."""
    import inspect

    from safenet.approx.cost import measure_loopback
    from safenet.channel import DEFAULT_MAX_MESSAGE

    default = inspect.signature(measure_loopback).parameters["nbytes"].default
    assert default + 4096 <= DEFAULT_MAX_MESSAGE
    net = measure_loopback(pings=5)  # the default bulk frame goes through
    assert net.bandwidth > 0 and net.rtt > 0
