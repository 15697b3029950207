"""`safenet serve` / `safenet infer` / `safenet bench` as real processes over TCP.

The server must survive bad clients (garbage, a wrong plan, a client that vanishes
mid-offline) and answer the next one correctly.
"""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import serve_cli
from safenet.channel import connect
from safenet.checkpoint import load
from safenet.cli import main
from safenet.data.torchdata import ImageDataset
from safenet.plan.compiler import compile_model
from safenet.protocol.handshake import handshake


def _safenet(*args):
    return [sys.executable, "-m", "safenet.cli", *map(str, args)]


@pytest.fixture
def server(tiny_lenet):
    proc, port = serve_cli("--model", tiny_lenet, "--max-sessions", 4)
    yield proc, port
    proc.kill()
    proc.wait(10)


def _infer(port, data_dir, index):
    args = ["infer", "--server", f"127.0.0.1:{port}", "--dataset", "fashion-mnist",
            "--index", index, "--data-dir", data_dir, "--json"]  # fmt: skip
    out = subprocess.run(
        _safenet(*args),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_serve_survives_bad_clients_and_answers_exactly(server, tiny_lenet, data_dir):
    proc, port = server
    # 1. garbage instead of a session request
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"hello, is this HTTP?\r\n\r\n" * 4)
        s.settimeout(10)
        s.recv(100)  # the server answers with an error frame or closes; never hangs
    # 2. a client that fetches the plan, shakes hands, then vanishes mid-offline
    conn = connect("127.0.0.1", port, timeout=10)
    conn.send_json({"fetch_plan": True}, label="session.request")
    conn.recv_json(label="session.config")
    from safenet.plan.ir import Plan

    public = Plan.from_bytes(conn.recv(label="session.plan"))
    assert public.is_public
    handshake(conn, "client", public.fingerprint())
    conn.close()
    # 3. a good client: the logits are exactly the plaintext fixed-point reference
    res = _infer(port, data_dir, 3)
    ck = load(tiny_lenet)
    plan = compile_model(ck.build(), (1, 28, 28))
    ds = ImageDataset("fashion-mnist", "test", data_dir)
    x = ds.normalize(ds.images[3:4])[0].double().numpy()
    ref = plan.reference(x)
    assert np.allclose(res["logits"], ref, atol=1e-4)
    assert res["prediction"] == int(np.argmax(ref)) and res["label"] == int(ds.labels[3])
    assert res["online_bytes"] > 0 and res["offline_bytes"] > res["online_bytes"]
    # 4. and another one: the server keeps serving
    assert _infer(port, data_dir, 4)["prediction"] in range(10)
    proc.wait(30)  # --max-sessions 4 reached
    log = proc.stderr.read()
    assert proc.returncode == 0, log
    assert log.count("failed") >= 2 and log.count("served") == 2


def test_infer_errors_are_clear(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["infer", "--server", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy")]) == 2
    assert "cannot read" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28)))
    assert main(["infer", "--server", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy")]) == 3
    assert "cannot connect" in capsys.readouterr().err
    assert main(["infer", "--server", "nohostport", "--input", str(tmp_path / "x.npy")]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_bench_json_report(capsys):
    t = time.perf_counter()
    rc = main(["bench", "--arch", "lenet5", "--input-shape", "1,28,28", "--width", "2",
               "--relu-ratio", "0.5", "--json"])  # fmt: skip
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("offline_s", "online_s", "offline_bytes", "online_bytes", "relu_count",
                "poly_count", "gc_bytes_per_relu", "online_rounds", "peak_rss_mib"):  # fmt: skip
        assert key in rep, key
    assert rep["relu_count"] > 0 and rep["poly_count"] > 0
    # precision is tested op by op in test_secure.py (a rare truncation wrap is allowed
    # there); here only that the report carries the comparison
    assert isinstance(rep["argmax_agrees"], bool) and "max_abs_error" in rep
    assert rep["field"]["p"] == 2**48 - 2**44 + 1  # polynomial channels: the 48-bit prime
    assert rep["gc_aes"] in ("vaes-512", "vaes-256", "aes-ni", "cryptography")
    # 32 bytes per AND gate: 150 ANDs at shift 9 under the 48-bit prime, fewer where a layer
    # shifts more (its output has fewer bits)
    assert 110 * 32 < rep["gc_bytes_per_relu"] <= 150 * 32 + 1
    prims = rep["server"]["primitives"] | rep["client"]["primitives"]
    for name in ("he.linear", "he.poly", "gc.eval", "poly", "linear.plain"):
        assert name in prims, name
    assert rep["wall_s"] < time.perf_counter() - t


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--input-shape", "3,32"]) == 2
    assert "C,H,W" in capsys.readouterr().err
    assert main(["bench", "--relu-ratio", "1.5", "--input-shape", "1,8,8"]) == 2
    assert "relu_ratio" in capsys.readouterr().err
