"""End-to-end secure inference against the plaintext reference, and its failure modes.

Exactness contract (docs/protocol.md):

* ReLU channels, linear layers and every local op compute exactly what
  :meth:`Plan.reference` computes on the same inputs: all-ReLU plans match bit for bit.
* Polynomial channels truncate locally, so on each element the secure output ``o`` and the
  reference ``r`` (on the same activation input) satisfy
  ``|o - r| <= ceil(|P(X + 1) - P(X)| / 2^q) + 1`` (X the rounded input, q the poly shift),
  except with probability at most ``|v| / p`` per truncated value ``v`` (a wrap). The tests
  allow as many misses as the wrap bound predicts for the values at hand (plus 2).

The in-process tests run both parties in threads over a real socketpair; ``run_local`` and
the server loop use real processes and TCP.
"""

import threading

import numpy as np
import pytest
import torch

from safenet.benchmark import random_plan
from safenet.channel import (
    ConnectionClosed,
    PeerError,
    ProtocolError,
    TransportError,
    connection_pair,
)
from safenet.nn import surgery
from safenet.plan.compiler import compile_model
from safenet.protocol.engine import ClientSession, MaterialSpent, ServerModel, ServerSession
from safenet.protocol.handshake import HandshakeError
from safenet.protocol.session import client_session, encode_input, server_session
from safenet.protocol.verify import check_trace


def _secure(plan, x, keep_trace=False):
    """Both parties in threads over a socketpair; returns (output, server, client)."""
    from helpers import run_parties as _run_parties

    def server(conn):
        srv = ServerSession(ServerModel(plan), conn, keep_trace=keep_trace)
        srv.offline()
        srv.online()
        return srv

    def client(conn):
        cli = ClientSession(plan.public(), conn, keep_trace=keep_trace)
        cli.offline()
        return cli, cli.online(encode_input(plan, x))

    out = _run_parties(server, client)
    cli, y = out["client"]
    return y, out["server"], cli


ZOO = [
    ("resnet20", (1, 16, 16), 4),
    ("resnet32", (3, 16, 16), 2),
    ("resnet56", (1, 8, 8), 2),
    ("vgg16", (3, 32, 32), 2),
    ("minionn", (1, 28, 28), 4),
    ("lenet5", (1, 28, 28), 3),
]


@pytest.mark.parametrize("arch, shape, width", ZOO, ids=[z[0] for z in ZOO])
def test_all_relu_zoo_models_match_the_reference_exactly(arch, shape, width):
    plan = random_plan(arch, shape, width=width)
    x = np.random.default_rng(1).normal(size=shape)
    y, srv, _ = _secure(plan, x)
    assert (y == plan.reference(x, decode=False)).all()
    rep = srv.report()
    assert rep["phase_s"]["offline"] > 0 and rep["phase_s"]["online"] > 0


def _check_op_by_op(plan, srv, cli, xi):
    """Every op, on the inputs the secure run actually had, against the reference op: no
    element beyond the stated bound, and (exact truncation) no value at or above B."""
    found = check_trace(plan, srv.trace, cli.trace, xi)
    assert found.ops == len(plan.ops)
    assert found.beyond_bound == 0
    assert found.ok, f"{found.misses} elements beyond the bound: {found.failed_ops}"
    return found.poly_elements


@pytest.mark.parametrize("degree", [2, 3])
def test_approximated_plan_op_by_op(degree):
    plan = random_plan("resnet20", (1, 16, 16), width=4, relu_ratio=0.5, degree=degree)
    assert plan.counts()["poly_count"] > 0
    x = np.random.default_rng(2).normal(size=(1, 16, 16))
    y, srv, cli = _secure(plan, x, keep_trace=True)
    assert _check_op_by_op(plan, srv, cli, encode_input(plan, x)) == plan.counts()["poly_count"]
    p = plan.field.p
    last = np.mod(srv.trace[-1] + cli.trace[-1], p)
    assert (y == np.where(last > p // 2, last - p, last)).all()


def test_all_polynomial_layer_and_truncate_op():
    """relu_ratio 0 (no garbled circuit at all) and a plan with a local ``truncate`` op."""
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 36, 16),
        torch.nn.Linear(16, 8),
        torch.nn.Linear(8, 5),  # three linear layers in a row force a truncate op
    )
    m = surgery.convert(m, torch.randn(4, 1, 6, 6))
    surgery.set_layers(m, surgery.LayerSpec(1.0, 2))
    surgery.calibrate(m, [torch.randn(16, 1, 6, 6)])
    surgery.set_blend(m, 1.0)
    plan = compile_model(m.eval(), (1, 6, 6))
    assert plan.counts() == {"relu_count": 0, "poly_count": 144}
    assert any(op.kind == "truncate" for op in plan.ops)
    x = np.random.default_rng(3).normal(size=(1, 6, 6))
    _, srv, cli = _secure(plan, x, keep_trace=True)
    assert _check_op_by_op(plan, srv, cli, encode_input(plan, x)) == 144


def test_offline_material_is_single_use():
    plan = random_plan("lenet5", (1, 28, 28), width=2)
    x = np.zeros((1, 28, 28))
    _, srv, cli = _secure(plan, x)
    with pytest.raises(MaterialSpent):
        srv.online()
    with pytest.raises(MaterialSpent):
        cli.online(encode_input(plan, x))
    with pytest.raises(MaterialSpent):
        cli.offline()


def test_client_never_holds_weights():
    plan = random_plan("lenet5", (1, 28, 28), width=2)
    pub = plan.public()
    assert pub.is_public and not plan.is_public
    assert all(set(op.arrays) <= {"relu_mask"} for op in pub.ops)
    with pytest.raises(ValueError, match="full plan"):
        ServerModel(pub)


# ---- sessions: plan exchange, handshake, bad input -----------------------------------------------
def _session_pair(plan, x, client_plan="fetch", server_conn_hook=None):
    a, b = connection_pair(timeout=20)
    model = ServerModel(plan)
    out = {}

    def run_server():
        try:
            out["server"] = server_session(a, model)
        except BaseException as e:
            out["server_error"] = e
        finally:
            a.close()

    t = threading.Thread(target=run_server)
    t.start()
    try:
        cp = None if client_plan == "fetch" else client_plan
        if server_conn_hook is not None:
            server_conn_hook(b)
            b.close()
        else:
            out["client"] = client_session(b, x, cp)
    except BaseException as e:
        out["client_error"] = e
    finally:
        b.close()
        t.join(30)
    assert not t.is_alive(), "the server hung"
    return out


@pytest.fixture(scope="module")
def small_plan():
    return random_plan("lenet5", (1, 28, 28), width=2)


def test_session_fetches_the_public_plan(small_plan):
    x = np.random.default_rng(4).normal(size=(1, 28, 28))
    out = _session_pair(small_plan, x)
    y, rep, public = out["client"]
    assert public.fingerprint() == small_plan.public().fingerprint()
    assert (y == small_plan.reference(x, decode=False)).all()
    assert rep["traffic"]["rounds"]["online"] >= 1


def test_wrong_fingerprint_is_refused_on_both_sides(small_plan):
    other = random_plan("lenet5", (1, 28, 28), width=3)  # same input, other architecture
    out = _session_pair(small_plan, np.zeros((1, 28, 28)), client_plan=other)
    assert isinstance(out["client_error"], HandshakeError)
    assert isinstance(out["server_error"], HandshakeError)
    assert "fingerprint" in str(out["server_error"])


def test_wrong_input_shape_is_a_clear_error(small_plan):
    out = _session_pair(small_plan, np.zeros((1, 27, 28)))
    assert isinstance(out["client_error"], ValueError)
    assert "input shape" in str(out["client_error"])
    assert isinstance(out["server_error"], PeerError | TransportError)


@pytest.mark.parametrize("where", ["start", "mid-offline", "garbage"])
def test_bad_peer_gives_a_clear_error_and_no_hang(small_plan, where):
    def hook(conn):
        conn.send_json({"fetch_plan": True}, label="session.request")
        if where == "start":
            return
        conn.recv_json(label="session.config")
        conn.recv(label="session.plan")
        if where == "garbage":
            conn.sock.sendall(b"GARBAGE" * 10)
            return
        from safenet.protocol.handshake import handshake

        handshake(conn, "client", small_plan.public().fingerprint())
        conn.send(b"\x00" * 100, label="he.pk")  # not a public key; then vanish

    out = _session_pair(small_plan, None, server_conn_hook=hook)
    err = out["server_error"]
    assert isinstance(err, ConnectionClosed | ProtocolError | ValueError | RuntimeError), err
    assert str(err)


class _PoolNet(torch.nn.Module):
    """Strided conv + BN, residual add, 1x1 convs and an average pool as the output: the
    plan holds conv, activation, add, sumpool and rescale (a divisor of 9 with no linear
    layer after it to fold into)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.b1 = torch.nn.BatchNorm2d(4)
        self.c2 = torch.nn.Conv2d(4, 4, 1)
        self.c3 = torch.nn.Conv2d(4, 3, 1)
        self.pool = torch.nn.AvgPool2d(3, 1)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = y + torch.relu(self.c2(y))
        return self.pool(self.c3(y))


@pytest.mark.parametrize("relu_ratio", [1.0, 0.5])
def test_pool_add_rescalerandom_plan(relu_ratio):
    torch.manual_seed(5)
    m = _PoolNet().eval()
    if relu_ratio < 1:
        m = surgery.convert(m, torch.randn(4, 2, 8, 8))
        surgery.set_layers(m, surgery.LayerSpec(1 - relu_ratio, 3))
        surgery.calibrate(m, [torch.randn(16, 2, 8, 8)])
        surgery.set_blend(m, 1.0)
    plan = compile_model(m.eval(), (2, 8, 8))
    kinds = {op.kind for op in plan.ops}
    assert {"conv", "activation", "add", "sumpool", "rescale"} <= kinds
    x = np.random.default_rng(6).normal(size=(2, 8, 8))
    y, srv, cli = _secure(plan, x, keep_trace=True)
    if relu_ratio == 1:
        assert (y == plan.reference(x, decode=False)).all()
    _check_op_by_op(plan, srv, cli, encode_input(plan, x))


def test_serve_and_infer_over_mutual_tls(tmp_path, small_plan):
    """serve() and infer() over TCP with TLS both ways; a client without a certificate is
    refused and the server goes on to the next one."""
    from safenet.channel import TLSConfig, TLSError, make_ca, make_certificate
    from safenet.secure import infer, serve

    ca = make_ca(tmp_path)
    srv_cert = make_certificate(tmp_path / "s", ca, "server", hostnames=("127.0.0.1",))
    cli_cert = make_certificate(tmp_path / "c", ca, "alice")
    server_tls = TLSConfig(*srv_cert, cafile=ca[0], require_client_cert=True)
    ready, reports = threading.Event(), []
    port = []

    def on_ready(p):
        port.append(p)
        ready.set()

    t = threading.Thread(
        target=lambda: reports.extend(
            serve(small_plan, "127.0.0.1", 0, tls=server_tls, max_sessions=2, on_ready=on_ready)
        )
    )
    t.start()
    assert ready.wait(30)
    x = np.random.default_rng(7).normal(size=(1, 28, 28))
    with pytest.raises(TransportError):  # no client certificate
        infer("127.0.0.1", port[0], x, tls=TLSConfig(cafile=ca[0]), timeout=10)
    y, rep = infer("127.0.0.1", port[0], x, tls=TLSConfig(*cli_cert, cafile=ca[0]))
    t.join(60)
    assert np.allclose(y, small_plan.reference(x))
    assert rep["phase_s"]["online"] > 0
    assert len(reports) == 2 and "error" in reports[0] and "error" not in reports[1]
    assert issubclass(TLSError, TransportError)
