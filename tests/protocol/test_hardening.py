"""Defects of the security review (issue 14), each pinned by a test that failed before the fix:
statistical bounds per session, a bank tied to the weights, caps on what a client can make
the server buffer, private bank folders, strict session ids."""

import math
import os
import socket
import threading

import numpy as np
import pytest

from safenet.benchmark import random_plan
from safenet.channel import (
    HEADER,
    MAGIC,
    VERSION,
    PeerError,
    ProtocolError,
    connection_pair,
    listen,
)
from safenet.crypto.he import ClientKeys, HEContext
from safenet.crypto.ot import OTReceiver
from safenet.plan.ir import Plan
from safenet.protocol.bank import Bank, BankError
from safenet.protocol.engine import ServerModel, ServerSession, garbled_layers
from safenet.secure import infer, preprocess, serve

SID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def plan():
    return random_plan("lenet5", (1, 28, 28), relu_ratio=0.5, width=2)


# ---- 1. statistical bounds per session ----------------------------------------------------------
def test_every_statistical_term_meets_2_to_minus_40_per_session(plan):
    model = ServerModel(plan)
    b = model.budget
    # garbled layers: no statistical term (their outputs are perfect additive shares)
    assert [name for name, _, _ in b.rows()] == [
        "linear replies (coefficients)",
        "polynomial replies (coefficients)",
    ]
    assert all("server_mask" not in g.circuit.inputs for g in garbled_layers(plan).values())
    # linear floods exceed each layer's weight noise by 42 + log2(all reply coefficients)
    coeffs = 8192 * sum(lin.packing.n_out for lin in model.linear.values())
    for lin in model.linear.values():
        assert lin.flood_bits >= lin.noise_bits + 42 + math.log2(coeffs)
    # polynomial floods likewise, for all polynomial reply coefficients of the session
    rp = model.poly_params
    noise = math.log2(2 * rp.digits * 8192 * 22) + rp.base_bits
    assert rp.flood_bits >= noise + 42 + math.log2(8192 * b.poly_replies)
    assert b.total_distance() < 2.0**-40


def test_a_session_whose_floods_do_not_suffice_is_refused(plan):
    model = ServerModel(plan)
    lin = next(iter(model.linear.values()))
    with pytest.raises(ValueError, match="needs flood_bits"):
        lin.check_flood(lin.flood_bits - lin.noise_bits + 1)


# ---- 2. banked material is tied to the weights ---------------------------------------------------
def _retrained(plan: Plan) -> Plan:
    """The same architecture and ReLU masks with one weight changed (a retrained model)."""
    other = Plan.from_bytes(plan.to_bytes())
    conv = next(op for op in other.ops if op.kind == "conv")
    conv.arrays["weight"] = conv.arrays["weight"].copy()
    w = conv.arrays["weight"]
    w.flat[0] = 0 if w.flat[0] else 1  # stays within the field's weight bits
    return other


def _serve(plan, bank_dir):
    lst = listen("127.0.0.1", 0)
    t = threading.Thread(target=lambda: serve(plan, listener=lst, bank=bank_dir), daemon=True)
    t.start()
    return lst, t


def _stop(lst, t):
    lst.shutdown(socket.SHUT_RDWR)
    lst.close()
    t.join(30)


def test_a_retrained_model_refuses_sessions_banked_for_the_old_weights(tmp_path):
    plan = random_plan("lenet5", (1, 28, 28), width=2)  # all ReLU: exact, so y == reference
    new = _retrained(plan)
    assert new.public().fingerprint() == plan.public().fingerprint()
    server_bank, client_bank = tmp_path / "server", tmp_path / "client"
    lst, t = _serve(plan, server_bank)
    rep = preprocess("127.0.0.1", lst.getsockname()[1], 2, client_bank)
    assert rep["model_version"] == ServerModel(plan).version
    _stop(lst, t)
    lst, t = _serve(new, server_bank)  # same folder, new weights
    x = np.random.default_rng(1).normal(size=(1, 28, 28))
    try:
        with pytest.raises(BankError, match="model version"):
            infer("127.0.0.1", lst.getsockname()[1], x, bank=client_bank)
        # the stale server sessions were discarded at start; a fresh query is exact and
        # says which model answered
        fp = plan.public().fingerprint()
        assert len(Bank(server_bank, fp, "server")) == 0
        y, r = infer("127.0.0.1", lst.getsockname()[1], x)
        assert r["model_version"] == ServerModel(new).version != ServerModel(plan).version
        assert np.allclose(y, new.reference(x))
    finally:
        _stop(lst, t)


def test_server_bank_refuses_material_of_another_version(tmp_path):
    old = Bank(tmp_path, "f" * 64, "server", version="a" * 16)
    old.put(SID, {"x": np.zeros(3)}, {})
    with pytest.raises(BankError, match="made for model version aaaa"):
        Bank(tmp_path, "f" * 64, "server", version="b" * 16).take(SID)


# ---- 3. a client cannot make the server buffer much ---------------------------------------------
def _offline_server(plan):
    """A ServerSession running its offline phase on one end of a pair; returns the other
    end, the thread and the error the server ended with."""
    model = ServerModel(plan)
    a, b = connection_pair(timeout=20)
    err: list[BaseException] = []

    def run():
        try:
            ServerSession(model, a).offline()
        except BaseException as e:
            err.append(e)
            a.send_error(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return b, t, err, model


def test_a_huge_public_key_is_refused_before_it_is_read(plan):
    conn, t, err, model = _offline_server(plan)
    conn.sock.sendall(HEADER.pack(MAGIC, VERSION, 0, 5, 1 << 30) + b"he.pk")
    t.join(20)
    assert not t.is_alive() and isinstance(err[0], ProtocolError)
    assert f"limit {model.he.max_public_key_bytes}" in str(err[0])


def test_announced_ciphertext_counts_and_sizes_are_checked_first(plan):
    for announce, frame in [(10**9, None), (None, 1 << 32)]:
        conn, t, err, model = _offline_server(plan)
        keys = ClientKeys(HEContext(model.config.he_params(plan.field.p)))
        conn.send(keys.public_key_bytes, label="he.pk")
        OTReceiver(conn).setup()
        want = next(iter(model.linear.values())).packing.n_in
        conn.send_json(announce or want, label="he.linear")
        if frame:
            conn.sock.sendall(HEADER.pack(MAGIC, VERSION, 0, 9, frame) + b"he.linear")
        t.join(20)
        assert not t.is_alive()
        why = (
            f"expected {want} ciphertexts" if announce else f"limit {model.he.max_ciphertext_bytes}"
        )
        assert why in str(err[0])
        with pytest.raises(PeerError, match="ProtocolError"):
            conn.recv("anything")


# ---- 6. smaller ones -----------------------------------------------------------------------------
def test_session_ids_are_matched_whole(tmp_path):
    bank = Bank(tmp_path, "f" * 64, "client")
    bank.put(SID, {"a": np.zeros(2)}, {})
    with pytest.raises(BankError, match="not a session id"):
        bank.take(SID + "\n")
    with pytest.raises(BankError, match="not a session id"):
        bank.put(SID + "\n", {"a": np.zeros(2)}, {})


def test_bank_folders_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        bank = Bank(tmp_path / "bank", "f" * 64, "server")
        path = bank.put(SID, {"a": np.zeros(2)}, {})
    finally:
        os.umask(old)
    for d in (tmp_path / "bank", bank.dir, path):
        assert d.stat().st_mode & 0o777 == 0o700, d
