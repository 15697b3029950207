"""The preprocessing bank: on-disk sessions, each used once, across crashes and restarts; and
the concurrent server."""

import json
import multiprocessing as mp
import os
import socket
import threading

import numpy as np
import pytest

from helpers import serve_cli
from safenet import secure
from safenet.benchmark import random_plan
from safenet.channel import connect, listen
from safenet.protocol.bank import Bank, BankError
from safenet.protocol.handshake import handshake
from safenet.secure import infer, preprocess, serve

SID = "0123456789abcdef0123456789abcdef"


def test_bank_put_take_once(tmp_path):
    bank = Bank(tmp_path, "f" * 64, "client")
    bank.put(SID, {"a": np.arange(5), "b": np.ones((2, 2))}, {"k": 1})
    assert bank.ids() == [SID] and len(bank) == 1
    arrays, meta = bank.take(SID)
    assert (arrays["a"] == np.arange(5)).all() and meta == {"k": 1}
    assert len(bank) == 0
    with pytest.raises(BankError, match="not in the bank"):
        bank.take(SID)
    with pytest.raises(BankError, match="not a session id"):
        bank.take("../../etc")


def test_bank_refuses_corrupt_sessions_and_cleans_leftovers(tmp_path):
    bank = Bank(tmp_path, "f" * 64, "server")
    bank.put(SID, {"a": np.arange(1000)}, {})
    npz = bank.dir / SID / "material.npz"
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(BankError, match="SHA-256"):
        bank.take(SID)
    assert not (bank.dir / SID).exists()  # refused and discarded, never retried
    (bank.dir / f"tmp-{SID}").mkdir()  # a crash while writing
    (bank.dir / f"consumed-{SID[::-1]}").mkdir()  # a crash after taking
    again = Bank(tmp_path, "f" * 64, "server")
    assert [p.name for p in again.dir.iterdir()] == [".lock"]  # no session leftovers


@pytest.fixture(scope="module")
def plan():
    return random_plan("lenet5", (1, 28, 28), width=2)


def _start(plan, bank_dir, concurrency=1):
    lst = listen("127.0.0.1", 0)
    reports = []
    t = threading.Thread(
        target=lambda: reports.extend(
            serve(plan, listener=lst, bank=bank_dir, concurrency=concurrency)
        ),
        daemon=True,
    )
    t.start()
    return lst, t, reports


def _stop(lst, t):
    lst.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept: serve() returns
    lst.close()
    t.join(30)
    assert not t.is_alive()


def test_preprocess_then_online_only_across_a_restart(tmp_path, plan):
    server_bank, client_bank = tmp_path / "server", tmp_path / "client"
    lst, t, reports = _start(plan, server_bank)
    port = lst.getsockname()[1]
    rep = preprocess("127.0.0.1", port, 2, client_bank)
    assert rep["banked"] == 2
    x = np.random.default_rng(0).normal(size=(1, 28, 28))
    y, r = infer("127.0.0.1", port, x, bank=client_bank)
    assert r["mode"] == "online" and "offline" not in r["phase_s"]
    assert np.allclose(y, plan.reference(x))
    _stop(lst, t)
    # the server restarts: the second banked session is still good on both sides
    lst, t, reports = _start(plan, server_bank)
    port = lst.getsockname()[1]
    y, r = infer("127.0.0.1", port, x, bank=client_bank)
    assert r["mode"] == "online" and np.allclose(y, plan.reference(x))
    y, r = infer("127.0.0.1", port, x, bank=client_bank)  # bank empty: full protocol
    assert r["mode"] == "full" and np.allclose(y, plan.reference(x))
    _stop(lst, t)
    fp = plan.public().fingerprint()
    assert len(Bank(server_bank, fp, "server")) == 0
    assert len(Bank(client_bank, fp, "client")) == 0


def test_a_session_is_consumed_even_if_the_client_vanishes(tmp_path, plan):
    server_bank, client_bank = tmp_path / "server", tmp_path / "client"
    lst, t, reports = _start(plan, server_bank)
    port = lst.getsockname()[1]
    preprocess("127.0.0.1", port, 1, client_bank)
    fp = plan.public().fingerprint()
    (sid,) = Bank(client_bank, fp, "client").ids()
    # a client asks for the online phase of the banked session, then disappears
    conn = connect("127.0.0.1", port, timeout=10)
    conn.send_json({"fetch_plan": True, "mode": "online", "session_id": sid}, "session.request")
    conn.recv_json("session.config")
    conn.recv("session.plan")
    handshake(conn, "client", fp)
    conn.close()
    # the server took its copy: asking again (replaying the id) is refused, nothing reused
    conn = connect("127.0.0.1", port, timeout=10)
    conn.send_json({"fetch_plan": False, "mode": "online", "session_id": sid}, "session.request")
    conn.recv_json("session.config")
    handshake(conn, "client", fp)
    with pytest.raises(Exception, match="not in the bank"):
        conn.recv_json("bank.ready")
    conn.close()
    _stop(lst, t)
    assert len(Bank(server_bank, fp, "server")) == 0
    errors = [r["error"] for r in reports if "error" in r]
    assert any("not in the bank" in e for e in errors)


def test_server_without_bank_refuses_preprocessing(tmp_path, plan):
    lst, t, reports = _start(plan, None)
    with pytest.raises(Exception, match="no preprocessing bank"):
        preprocess("127.0.0.1", lst.getsockname()[1], 1, tmp_path / "client")
    _stop(lst, t)


def test_concurrent_clients_on_a_forking_server(tmp_path):
    """`safenet serve --concurrency 2`: two clients at once, each gets the exact answer."""
    proc, port = serve_cli("--model", "default", "--max-sessions", 2, "--concurrency", 2)
    try:
        from safenet.checkpoint import load

        plan = load("default").plan()
        xs = [np.random.default_rng(i).normal(size=(1, 28, 28)) for i in range(2)]
        out = [None, None]

        def client(i):
            out[i] = infer("127.0.0.1", port, xs[i])[0]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        for i in range(2):
            assert np.allclose(out[i], plan.reference(xs[i]))
        proc.wait(60)
        log = proc.stderr.read()
        assert proc.returncode == 0 and log.count("served") == 2, log
    finally:
        proc.kill()
        proc.wait(10)


def test_cli_preprocess_and_bank(tmp_path, plan, capsys):
    from safenet.cli import main

    lst, t, _ = _start(plan, tmp_path / "server")
    port = lst.getsockname()[1]
    bank = tmp_path / "client"
    assert main(["infer", "--server", f"127.0.0.1:{port}", "--preprocess", "1", "--bank",
                 str(bank), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["banked"] == 1
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28)))
    assert main(["infer", "--server", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy"),
                 "--bank", str(bank), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["mode"] == "online"
    assert main(["infer", "--server", f"127.0.0.1:{port}", "--preprocess", "1"]) == 2
    assert "--bank" in capsys.readouterr().err
    _stop(lst, t)


def test_session_memory_cap_fails_only_that_session():
    proc, port = serve_cli(
        "--model", "default", "--max-sessions", 1, "--concurrency", 2, "--session-memory", 0.05
    )
    try:
        with pytest.raises(Exception, match="MemoryError"):
            infer("127.0.0.1", port, np.zeros((1, 28, 28)), timeout=60)
        proc.wait(60)
        assert proc.returncode == 0  # the server itself is fine
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_a_worker_that_dies_without_a_report_is_reported(monkeypatch):
    """A forked session that dies before sending its report (e.g. killed by the OOM killer)
    yields an error report with its exit code, and frees its slot."""
    monkeypatch.setattr(secure, "_child", lambda *args: os._exit(3))
    reports = []
    workers = secure._Workers(mp.get_context("fork"), 1, None, reports)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        workers.start(ours, ("127.0.0.1", 0), (None, None, None, None))
        workers.drain()
    assert reports == [{"peer": None, "error": "worker exit 3"}]
    assert not workers.running
