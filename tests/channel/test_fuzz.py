"""Fuzzing the wire format with hypothesis: no crash, no hang, always a clean error.

* **Transport**: arbitrary bytes and near-valid frames (right magic with random version,
  kind, label and announced length; truncated frames; lengths above ``max_message``; array
  headers with corrupt dtype, ndim, shape or padding) are fed to a :class:`Connection`.
  ``recv``, ``recv_json`` and ``recv_array`` return valid data or raise a
  :class:`TransportError`, never ask for more than ``max_message`` bytes at once and never
  wait past their timeout.
* **Session**: a client runs the genuine protocol for k frames, then misbehaves (closes,
  resets, sends garbage, a wrong label or kind, a truncated frame, a huge announced length, or
  a corrupted payload and carries on) against a live :func:`safenet.secure.serve`. The
  server ends that session with a clean error within seconds, and a genuine client (checked
  every few cases and at the end) still gets the right answer. The same faults on the
  server's frames leave a genuine client with a clean error (or an answer), never a hang.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from safenet.channel import (
    DEFAULT_MAX_MESSAGE,
    HEADER,
    KIND_ARRAY,
    KIND_BYTES,
    KIND_ERROR,
    MAGIC,
    VERSION,
    Connection,
    ProtocolError,
    TransportError,
    TransportTimeout,
    connection_pair,
    listen,
)
from safenet.crypto.he import HEError
from safenet.crypto.ot import OTError
from safenet.nn import surgery
from safenet.plan.compiler import compile_model
from safenet.plan.ir import Plan
from safenet.protocol.engine import ServerModel
from safenet.protocol.session import client_session, server_session
from safenet.secure import infer, serve

MAX = 1 << 14  # max_message of the transport-level receivers
LABEL = "fuzz"
FUZZ = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip


# ---- transport level ---------------------------------------------------------------------------
class _Recorder(Connection):
    """A Connection that records the size of every read it asks for."""

    def __init__(self, sock: socket.socket, timeout: float, max_message: int) -> None:
        super().__init__(sock, timeout, max_message)
        self.asked: list[int] = []

    def _read_exact(self, n: int, what: str) -> np.ndarray:
        self.asked.append(n)
        return super()._read_exact(n, what)


def _receive(data: bytes, method: str, timeout: float = 2.0) -> object:
    """Write ``data`` into the peer socket, close it, and call ``method``; returns the result
    or the TransportError (any other exception propagates and fails the test)."""
    a, b = socket.socketpair()
    conn = _Recorder(b, timeout, MAX)
    try:
        a.sendall(data)  # at most a few tens of KiB: fits the socket buffer
        a.close()
        t = time.perf_counter()
        try:
            out = getattr(conn, method)(LABEL)
        except TransportError as e:
            out = e
        assert time.perf_counter() - t < timeout + 1
        assert max(conn.asked, default=0) <= MAX  # nothing larger is ever allocated
        return out
    finally:
        conn.close()
        a.close()


def _frame(kind: int, label: bytes, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return HEADER.pack(MAGIC, VERSION, kind, len(label), n) + label + payload


def _array_meta(dtype: bytes, dims: list[int], ndim: int | None = None) -> bytes:
    meta = bytes([len(dtype)]) + dtype + bytes([len(dims) if ndim is None else ndim])
    meta += struct.pack(f">{len(dims)}Q", *dims)
    pad = -(len(meta) + 1) % 16
    return meta + bytes([pad]) + bytes(pad)


def _check_array(out: object) -> None:
    if isinstance(out, TransportError):
        return
    assert isinstance(out, np.ndarray), type(out)
    assert not out.dtype.hasobject and out.nbytes <= MAX


@given(data=st.binary(max_size=600), method=st.sampled_from(["recv", "recv_json", "recv_array"]))
@settings(FUZZ, max_examples=150)
def test_arbitrary_bytes(data: bytes, method: str) -> None:
    out = _receive(data, method)
    event(f"{method}: {type(out).__name__}")
    if method == "recv_array":
        _check_array(out)
    elif method == "recv":
        assert isinstance(out, TransportError | bytes)


def _lengths(payload: bytes) -> st.SearchStrategy[int]:
    return st.one_of(
        st.just(len(payload)),
        st.integers(0, len(payload) + 16),
        st.integers(MAX + 1, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_JSON_BYTES = st.one_of(
    _JSON.map(lambda o: json.dumps(o).encode()),
    st.integers(1, 8000).map(lambda n: b"[" * n + b"]" * (n % 3)),  # deep nesting
    st.integers(4000, 8000).map(lambda n: b"7" * n),  # beyond int-parsing digit limits
    st.binary(max_size=64),  # anything, invalid UTF-8 included
)


_FRAME_FIELDS = ("magic", "version", "kind", "label", "length", "cut")


@st.composite
def _near_valid_frames(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(bytes on the wire, the payload if the frame is a valid bytes frame for LABEL)."""
    bad = draw(st.sets(st.sampled_from(_FRAME_FIELDS), max_size=3))
    payload = draw(_JSON_BYTES)
    label, magic, version, kind, length = LABEL.encode(), MAGIC, VERSION, KIND_BYTES, None
    if "label" in bad:
        label = draw(st.binary(max_size=255))
    if "kind" in bad:
        kind = draw(st.sampled_from([KIND_ARRAY, KIND_ERROR]) | st.integers(0, 255))
    if "length" in bad:
        length = draw(_lengths(payload))
    if "magic" in bad:
        magic = draw(st.binary(min_size=2, max_size=2))
    if "version" in bad:
        version = draw(st.integers(0, 255))
    n = len(payload) if length is None else length
    raw = HEADER.pack(magic, version, kind, len(label), n) + label + payload
    if "cut" in bad:
        raw = raw[: draw(st.integers(0, len(raw)))]
    ok = raw == _frame(KIND_BYTES, LABEL.encode(), payload) and len(payload) <= MAX
    return raw, payload if ok else None


@given(frame=_near_valid_frames(), method=st.sampled_from(["recv", "recv_json"]))
@settings(FUZZ, max_examples=200)
def test_near_valid_frames(frame: tuple[bytes, bytes | None], method: str) -> None:
    raw, payload = frame
    out = _receive(raw, method)
    event(f"{method}: {type(out).__name__}")
    if payload is None:
        return
    if method == "recv":
        assert out == payload
    elif isinstance(out, TransportError):  # a valid frame can only fail as bad JSON
        assert isinstance(out, ProtocolError) and "JSON" in str(out)


_DTYPES = ["<i8", "<u8", "|u1", ">f4", "<c16", "|b1", "<m8[s]", "|S3"]
_BAD_DTYPES = [b"V0", b"S0", b"U0", b"|O", b"O", b"(2,)<i4", b"<i4,<i4", b"<i8,O", b"V8",
               b"<M8[D]", b"", b"x", b"\xff", b"float128", b"(0,)u1", b"(3,2)f8"]  # fmt: skip


_ARRAY_FIELDS = ("dtype", "dims", "ndim", "meta byte", "body", "length", "cut")

_DTYPE_TEXT = st.text("()[],:<>|=0123456789iufcbSUVOMm", max_size=16).map(str.encode)


@st.composite
def _array_frames(draw: st.DrawFn) -> tuple[bytes, np.ndarray | None]:
    """(bytes of an array frame with a possibly corrupt header, the array if intact)."""
    bad = draw(st.sets(st.sampled_from(_ARRAY_FIELDS), max_size=3))
    dt = draw(st.sampled_from(_DTYPES))
    shape = draw(st.lists(st.integers(0, 5), max_size=4))
    arr = np.arange(math.prod(shape)).astype(dt).reshape(shape)
    body = arr.tobytes()
    dtype_bytes, dims, ndim, length = dt.encode(), shape, None, None
    if "dtype" in bad:
        dtype_bytes = draw(st.sampled_from(_BAD_DTYPES) | st.binary(max_size=12) | _DTYPE_TEXT)
    if "dims" in bad:
        big = st.integers(0, 2**64 - 1)
        dims = draw(st.lists(st.integers(0, 8) | big, max_size=80) | st.lists(big, max_size=6))
    if "ndim" in bad:
        ndim = draw(st.integers(0, 255))
    meta = _array_meta(dtype_bytes, dims, ndim)
    if "meta byte" in bad:
        pos = draw(st.integers(0, len(meta) - 1))
        meta = meta[:pos] + bytes([draw(st.integers(0, 255))]) + meta[pos + 1 :]
    if "body" in bad:
        body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=24))
    payload = meta + body
    if "length" in bad:
        length = draw(_lengths(payload))
    raw = _frame(KIND_ARRAY, LABEL.encode(), payload, length)
    if "cut" in bad:
        raw = raw[: draw(st.integers(0, len(raw)))]
    genuine = _frame(KIND_ARRAY, LABEL.encode(), _array_meta(dt.encode(), shape) + arr.tobytes())
    return raw, arr if raw == genuine else None


@given(frame=_array_frames())
@settings(FUZZ, max_examples=250)
def test_array_frames(frame: tuple[bytes, np.ndarray | None]) -> None:
    raw, arr = frame
    out = _receive(raw, "recv_array")
    event(type(out).__name__)
    _check_array(out)
    if arr is not None:
        assert isinstance(out, np.ndarray)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        assert out.tobytes() == arr.tobytes()


# Inputs the fuzzers above found (each raised something other than a TransportError).
@pytest.mark.parametrize(
    "payload",
    [
        _array_meta(b"V0", [5]),  # zero itemsize
        _array_meta(b"(2,)<i4", [2]) + bytes(16),  # sub-array dtype: reshape fails
        _array_meta(b"<i8", [2**64 - 1, 0]),  # size 0, but a dimension numpy refuses
        _array_meta(b"<i8", [2**63] * 40),  # element count overflows a float64
        _array_meta(b"<i8", [1] * 70) + bytes(8),  # more dimensions than numpy allows
        _array_meta(b"(,)i4", [1]) + bytes(4),  # numpy's dtype parser raises SyntaxError
    ],
)
def test_malformed_array_headers_are_protocol_errors(payload: bytes) -> None:
    assert isinstance(_receive(_frame(KIND_ARRAY, LABEL.encode(), payload), "recv_array"),
                      ProtocolError)  # fmt: skip


@pytest.mark.parametrize("payload", [b"[" * 5000, b"1" * 5000, b'{"a": ' * 3000])
def test_malformed_json_is_a_protocol_error(payload: bytes) -> None:
    out = _receive(_frame(KIND_BYTES, LABEL.encode(), payload), "recv_json")
    assert isinstance(out, ProtocolError)


def test_silent_peer_times_out() -> None:
    a, b = connection_pair(timeout=0.3)
    try:
        b.sock.sendall(_frame(KIND_BYTES, LABEL.encode(), b"abcdef")[:9])  # half a header
        t = time.perf_counter()
        with pytest.raises(TransportTimeout):
            a.recv(LABEL)
        assert time.perf_counter() - t < 2
    finally:
        a.close()
        b.close()


# ---- session level -------------------------------------------------------------------------
SERVER_TIMEOUT = 5.0  # the server's per-receive timeout
AFTER_FAULT_TIMEOUT = 1.5  # a fuzzing client that carries on waits at most this long
GENUINE_EVERY = 6
# what the server may end a bad client's session with: exception type -> message pattern
CLEAN_ERRORS = {
    "ConnectionClosed": "",
    "ProtocolError": "",
    "HandshakeError": "",
    "PeerError": "",
    "TransportTimeout": "",
    "HEError": "",
    "OTError": "",
    "InvalidPointError": "",
    "ValueError": "ciphertexts",  # a wrong number of ciphertexts for a layer
}


@functools.cache
def _tiny_plan(relu_ratio: float) -> Plan:
    """conv 1->2 (3x3) on 6x6, activation (all ReLU, or half the channels polynomial), linear."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 36, 3),
    )
    if relu_ratio < 1:
        m = surgery.convert(m, torch.randn(4, 1, 6, 6))
        surgery.set_layers(m, surgery.LayerSpec(1 - relu_ratio, 2))
        surgery.calibrate(m, [torch.randn(16, 1, 6, 6)])
        surgery.set_blend(m, 1.0)
    return compile_model(m.eval(), (1, 6, 6))


class _Stop(Exception):
    """The fuzzing client gives up after its fault."""


@dataclass(frozen=True)
class Fault:
    """Misbehave at this end's ``step``-th frame (0-based); later frames go as usual."""

    step: int
    action: str
    blob: bytes
    number: int
    carry_on: bool


ACTIONS = ("close", "reset", "garbage", "relabel", "rekind", "truncate", "announce", "flip",
           "resize")  # fmt: skip


def _faults(labels: list[str]) -> st.SearchStrategy[Fault]:
    """Faults at any frame of a genuine run whose frames carried ``labels``; the label is drawn
    first, so one-off steps (the plan, the hello...) are hit as often as the bulky ones."""
    steps = {lab: [i for i, x in enumerate(labels) if x == lab] for lab in labels}
    steps[""] = [len(labels)]  # no fault: a complete genuine run
    return st.builds(
        Fault,
        step=st.sampled_from(sorted(steps)).flatmap(lambda lab: st.sampled_from(steps[lab])),
        action=st.sampled_from(ACTIONS),
        blob=st.binary(min_size=1, max_size=48),
        # announced lengths: harmless sizes, or beyond the server's max_message
        number=st.integers(0, 1 << 20) | st.integers(DEFAULT_MAX_MESSAGE + 1, 2**64 - 1),
        carry_on=st.booleans(),
    )


class _FaultyConnection(Connection):
    """A genuine client's Connection that tampers with one outgoing frame."""

    def __init__(self, sock: socket.socket, fault: Fault | None, timeout: float) -> None:
        super().__init__(sock, timeout)
        self.fault = fault
        self.labels: list[str] = []  # of every frame this end sent (or tampered with)
        self.fired: str | None = None

    def _send_frame(self, kind: int, label: str, parts: list[bytes | memoryview]) -> None:
        i, f = len(self.labels), self.fault
        self.labels.append(label)
        if f is None or i != f.step:
            return super()._send_frame(kind, label, parts)
        self.fired = f"{f.action}@{label}"
        payload = b"".join(bytes(p) for p in parts)
        lab = label.encode()
        raw = None
        if f.action == "reset":  # RST instead of FIN
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif f.action == "garbage":
            raw = f.blob
        elif f.action == "relabel":
            new = f.blob if f.blob != lab else f.blob + b"!"
            raw = _frame(kind, new, payload)
        elif f.action == "rekind":
            raw = HEADER.pack(MAGIC, VERSION, (kind + 1 + f.number % 255) % 256, len(lab),
                              len(payload)) + lab + payload  # fmt: skip
        elif f.action == "truncate":
            full = _frame(kind, lab, payload)
            raw = full[: f.number % len(full)]
        elif f.action == "announce":
            raw = _frame(kind, lab, payload, f.number)
        elif f.action == "flip":
            p = bytearray(payload or b"\0")
            for j, x in enumerate(f.blob):
                p[(f.number + 7919 * j) % len(p)] ^= x or 1
            raw = _frame(kind, lab, bytes(p))
        elif f.action == "resize":
            cut = f.number % (len(payload) + 1)
            raw = _frame(kind, lab, payload[:cut] + (f.blob if f.number & 1 else b""))
        if raw is not None:
            try:
                self.sock.sendall(raw)
            except OSError as e:
                raise _Stop from e
        if f.carry_on and f.action in ("relabel", "rekind", "flip", "resize"):
            self.sock.settimeout(AFTER_FAULT_TIMEOUT)
            return None
        raise _Stop


class _LogWatch(logging.Handler):
    """Collects the server's log lines; waits for the one about a given client port."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.lines.append(record.getMessage())
            self.cond.notify_all()

    def outcome(self, port: int, since: int, timeout: float) -> str:
        """How the session of client ``port`` ended, from the lines logged after the first
        ``since``: "served", or the type of the exception the server ended it with."""
        pat = re.compile(rf"127\.0\.0\.1:{port}\b")

        def find() -> str | None:
            return next((s for s in self.lines[since:] if pat.search(s)), None)

        with self.cond:
            line = self.cond.wait_for(find, timeout)
        assert line, f"the server did not finish the session of port {port} in {timeout} s"
        if line.startswith("served"):
            return "served"
        m = re.search(r"failed: (\w+): (.*)", line)
        assert m, f"unrecognised server log line: {line}"
        name, message = m.groups()
        assert name in CLEAN_ERRORS and re.search(CLEAN_ERRORS[name], message), line
        return name


class _Server:
    """A live serve() in a daemon thread, stopped by shutting its listener down."""

    def __init__(self, plan: Plan, exact: bool) -> None:
        self.plan, self.exact = plan, exact
        self.public = plan.public()
        self.watch = _LogWatch()
        self.logger = logging.getLogger("safenet.secure")
        self.old_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.watch)
        self.listener = listen("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(
            target=serve,
            args=(plan,),
            kwargs={"listener": self.listener, "timeout": SERVER_TIMEOUT},
            daemon=True,
        )
        self.thread.start()
        self.cases = 0
        self.labels = self.run_client(None)[0]

    def run_client(self, fault: Fault | None) -> tuple[list[str], str | None, str]:
        """One client session; returns (labels of its frames, what was tampered, outcome)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=SERVER_TIMEOUT)
        port, since = sock.getsockname()[1], len(self.watch.lines)
        x = np.random.default_rng(self.cases).normal(size=self.plan.input_shape)
        with _FaultyConnection(sock, fault, SERVER_TIMEOUT) as conn:
            try:
                y, _, _ = client_session(conn, x)
            except _Stop:
                pass
            except Exception:  # a client that corrupted its own messages may fail any way
                if fault is None or not conn.fired:
                    raise
            else:
                if not conn.fired:
                    self.check(x, y)
        return conn.labels, conn.fired, self.watch.outcome(port, since, 15.0)

    def check(self, x: np.ndarray, y: np.ndarray) -> None:
        """``y`` (centred integers) against the plaintext reference."""
        ref = self.plan.reference(x, decode=False)
        if self.exact:
            assert np.array_equal(y, ref)
        else:  # polynomial channels: a few ulps per element (docs/protocol.md)
            assert np.abs(y - ref).max() <= 2.0 ** (self.plan.output_scale - 5)

    def genuine(self) -> None:
        """A genuine client through the public API gets the right answer."""
        x = np.random.default_rng(1000 + self.cases).normal(size=self.plan.input_shape)
        y, rep = infer("127.0.0.1", self.port, x, decode=False, timeout=SERVER_TIMEOUT)
        self.check(x, y)

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # shutdown wakes the accept(); close alone does not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)
        self.logger.removeHandler(self.watch)
        self.logger.setLevel(self.old_level)
        assert not self.thread.is_alive(), "serve() did not stop"


@pytest.fixture(scope="module", params=["relu", "mixed"])
def live_server(request: pytest.FixtureRequest):
    relu = request.param == "relu"
    server = _Server(_tiny_plan(1.0 if relu else 0.5), exact=relu)
    yield server
    server.stop()


def test_server_survives_misbehaving_clients(live_server: _Server) -> None:
    srv = live_server
    counts = srv.plan.counts()
    assert counts["relu_count"] and (counts["poly_count"] > 0) != srv.exact

    @given(data=st.data())
    @settings(FUZZ, max_examples=60 if srv.exact else 40)
    def fuzz(data: st.DataObject) -> None:
        fault = data.draw(_faults(srv.labels), label="fault")
        _, fired, outcome = srv.run_client(fault)
        event(f"{fault.action}: {outcome}")
        if fired is None:  # no fault happened: a complete genuine session
            assert outcome == "served"
        srv.cases += 1
        if srv.cases % GENUINE_EVERY == 0:
            srv.genuine()

    fuzz()
    assert srv.thread.is_alive()
    srv.genuine()


def test_stalling_client_costs_the_server_only_its_timeout() -> None:
    plan = _tiny_plan(1.0)
    lst = listen("127.0.0.1", 0)
    port = lst.getsockname()[1]
    reports: list[dict] = []
    t = threading.Thread(
        target=lambda: reports.extend(serve(plan, listener=lst, timeout=0.5, max_sessions=2)),
        daemon=True,
    )
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(_frame(KIND_BYTES, b"session.request", b"{}")[:7])  # then silence
            t0 = time.perf_counter()
            x = np.random.default_rng(0).normal(size=plan.input_shape)
            y, _ = infer("127.0.0.1", port, x, decode=False, timeout=10)
            assert time.perf_counter() - t0 < 8
        assert np.array_equal(y, plan.reference(x, decode=False))
        t.join(10)
        assert not t.is_alive()
        assert "TransportTimeout" in reports[0]["error"] and "error" not in reports[1]
    finally:
        lst.close()


# what a genuine client may fail with against a misbehaving server
CLIENT_CLEAN = (TransportError, HEError, OTError)


@functools.cache
def _model(ratio: float) -> ServerModel:
    return ServerModel(_tiny_plan(ratio))


def _against_faulty_server(ratio: float, fault: Fault | None) -> tuple[list[str], object]:
    """A genuine client against server_session() with ``fault`` on the server's frames;
    returns (labels of the server's frames, the client's output or clean error)."""
    plan = _tiny_plan(ratio)
    a, b = socket.socketpair()
    srv = _FaultyConnection(a, fault, SERVER_TIMEOUT)

    def serve_one() -> None:
        with srv, contextlib.suppress(Exception):  # the server's failure is not the point
            server_session(srv, _model(ratio))

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    x = np.random.default_rng(2).normal(size=plan.input_shape)
    with Connection(b, AFTER_FAULT_TIMEOUT if fault else SERVER_TIMEOUT) as cli:
        try:
            out: object = client_session(cli, x)[0]
        except CLIENT_CLEAN as e:
            out = e
    t.join(SERVER_TIMEOUT)
    assert not t.is_alive()
    if srv.fired is None:
        assert isinstance(out, np.ndarray)
        if not plan.counts()["poly_count"]:
            assert np.array_equal(out, plan.reference(x, decode=False))
    return srv.labels, out


def test_client_survives_misbehaving_server() -> None:
    labels = {ratio: _against_faulty_server(ratio, None)[0] for ratio in (1.0, 0.5)}

    @given(data=st.data(), ratio=st.sampled_from(sorted(labels)))
    @settings(FUZZ, max_examples=80)
    def fuzz(data: st.DataObject, ratio: float) -> None:
        fault = data.draw(_faults(labels[ratio]), label="fault")
        out = _against_faulty_server(ratio, fault)[1]
        event(f"{fault.action}: {type(out).__name__}")

    fuzz()


# What the fuzzer above found: a corrupt plan surfaced as zlib.error or ValueError.
@pytest.mark.parametrize("number", [1, 200, 100_000])
@pytest.mark.parametrize("action", ["flip", "resize"])
def test_corrupt_plan_from_server_is_a_protocol_error(action: str, number: int) -> None:
    labels = _against_faulty_server(1.0, None)[0]
    fault = Fault(labels.index("session.plan"), action, b"\x5a\xa5" * 8, number, False)
    out = _against_faulty_server(1.0, fault)[1]
    assert isinstance(out, ProtocolError) and "plan" in str(out)


@pytest.mark.parametrize(
    "config", [{"poly_degree": 0}, {"poly_degree": "8192"}, {"poly_degree": 8193}, [8192]]
)
def test_bad_session_config_from_server_is_a_protocol_error(config: object) -> None:
    plan = _tiny_plan(1.0)
    srv, cli = connection_pair(timeout=SERVER_TIMEOUT)
    with srv, cli:
        srv.send_json(config, label="session.config")
        srv.send(plan.public().to_bytes(), label="session.plan")
        with pytest.raises(ProtocolError, match="session config"):
            client_session(cli, np.zeros(plan.input_shape))
