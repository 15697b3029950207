"""Secure inference entry points: local two-process runs, a server loop and a client call.

* :func:`run_local` starts the server and the client as two processes talking over TCP on
  loopback and returns the client's output with a merged cost report;
* :func:`serve` answers clients until stopped, one after another or each in a forked
  worker (a failing client is reported and the server goes on);
* :func:`infer` is one private query from the client's side, :func:`infer_image` one on a
  picture file, prepared as the server's public plan says;
* :func:`preprocess` runs offline phases ahead into a preprocessing bank, so that later
  queries pay only the online phase;
* :func:`merge_reports` and :func:`phase_bytes` combine the two parties' cost reports;
  :func:`default_session_memory` and :func:`limit_memory` cap a forked session's memory.

Inputs are real-valued arrays in the plan's input shape (encoded here at the plan's input
scale) unless ``encoded=True``; outputs are reals (decoded at the output scale) unless
``decode=False``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import queue
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from safenet.channel import (
    DEFAULT_TIMEOUT,
    TLSConfig,
    TransportError,
    accept,
    connect,
    listen,
    wrap_accepted,
)
from safenet.crypto import aesni
from safenet.plan.ir import Plan
from safenet.protocol.bank import Bank
from safenet.protocol.engine import ServerModel, SessionConfig, garbled_table_bytes
from safenet.protocol.session import (
    client_preprocess,
    client_session,
    encode_input,
    open_client_bank,
    server_session,
)

__all__ = [
    "OutputOutOfRange",
    "SecureRunError",
    "check_output",
    "infer",
    "infer_image",
    "merge_reports",
    "phase_bytes",
    "preprocess",
    "run_local",
    "serve",
]

log = logging.getLogger("safenet.secure")


class SecureRunError(RuntimeError):
    """A party of a local run failed; the message carries its traceback."""


class OutputOutOfRange(RuntimeError):
    """A secure result lies beyond the plan's ``output_bound``: the input took a polynomial
    channel out of the range where the protocol is exact, and the output is garbage."""


def check_output(plan: Plan, y: np.ndarray) -> None:
    """Refuse a result (field integers at the output scale) that no correct inference of
    ``plan`` gives. A polynomial value at or beyond the exact-truncation bound (an input the
    network blows up on) leaves the output wrong by about p / 2^k or more, almost always far
    beyond the largest |logit| seen on the training set; ``plan.info["output_bound"]`` (4x
    that, set by range hardening) makes that failure an error instead of a silent answer.
    Plans without a bound (all-ReLU ones cannot fail) are not checked."""
    bound = plan.info.get("output_bound")
    if not bound:
        return
    top = float(np.abs(y.astype(np.float64)).max()) / 2.0**plan.output_scale
    if not top <= bound:
        raise OutputOutOfRange(
            f"the secure result is out of range (|output| {top:.3g} > bound {bound:.3g}): "
            "this input took the model's polynomial channels beyond the range where the "
            "protocol is exact, so the answer would be wrong; no prediction is given"
        )


def _decode(plan: Plan, y: np.ndarray, decode: bool) -> np.ndarray:
    check_output(plan, y)
    return y.astype(np.float64) / 2.0**plan.output_scale if decode else y


def infer(
    host: str,
    port: int,
    x: np.ndarray | Callable[[Plan], np.ndarray],
    *,
    plan: Plan | None = None,
    encoded: bool = False,
    decode: bool = True,
    tls: TLSConfig | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    progress: Callable[[int, int], None] | None = None,
    bank: str | Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One private inference against a :func:`serve` server, from the client's side.

    Without ``plan`` the public plan (architecture, no weights) is fetched from the server
    first and its input shape then checks ``x``. With ``bank`` (a folder filled by
    :func:`preprocess`) a preprocessed session is used if one is left, so that only the
    online phase runs (``report["mode"] == "online"``).

    Args:
        host: the server's address.
        port: the server's TCP port.
        x: the input, or a function of the public plan that returns it
            (:func:`infer_image` prepares a picture so).
        plan: the plan (its public part suffices) to check ``x`` against before
            connecting. Default: fetched from the server (or the bank's plan).
        encoded: ``x`` is already integers at the plan's input scale. Default: False.
        decode: return reals (the output divided by ``2**plan.output_scale``); False
            returns the field integers. Default: True.
        tls: the client's TLS settings (the server's CA, a client certificate where the
            server demands one). Default: None (plain TCP).
        timeout: the longest wait (seconds) for the peer in any one send or receive;
            None waits forever. Default: 120.
        progress: ``progress(done, total)`` is called after each op of the offline phase.
        bank: folder of the client's preprocessing bank. Default: None (full protocol).

    Returns:
        ``(output, report)``: the model's output and the client's cost report (time and
        bytes per phase and primitive, ``"mode"``: ``"full"`` or ``"online"``).

    Shape:
        - x: ``plan.input_shape``, one input without the batch dimension, e.g. (C, H, W).
        - output: the shape of the plan's last op, e.g. (num_classes,).

    Example:
        >>> from safenet.secure import infer
        >>> y, report = infer("127.0.0.1", 7000, x)  # x: (1, 28, 28), a server on port 7000
        >>> y.shape, report["mode"]
        ((10,), 'full')
    """
    client_bank = None
    if bank is not None and (Path(bank) / "plan.zip").exists():
        bank_plan, client_bank = open_client_bank(bank)
        plan = plan or bank_plan
    if plan is not None and not callable(x):
        encode_input(plan, x, encoded)  # fail before connecting
    with connect(host, port, timeout=timeout, tls=tls) as conn:
        y, rep, public = client_session(
            conn, x, plan, encoded=encoded, progress=progress, bank=client_bank
        )
    return _decode(public, y, decode), rep


def infer_image(
    host: str,
    port: int,
    image: str | Path,
    *,
    top_k: int = 5,
    tls: TLSConfig | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    bank: str | Path | None = None,
) -> dict[str, Any]:
    """A private inference on a picture file (PNG, JPEG, ...): prepared on this side as the
    server's public plan says (``info["preprocess"]``: size, normalisation; the server never
    sees the picture), classified securely. Returns ``top`` (the ``top_k`` classes with
    names and softmax scores), ``logits`` and the client ``report``."""
    from safenet.data.images import load_image

    if top_k < 1:
        raise ValueError("top_k must be positive")
    if not Path(image).is_file():
        raise FileNotFoundError(f"no picture at {image}")
    seen: dict[str, Any] = {}

    def prepare(public: Plan) -> np.ndarray:
        prep = public.info.get("preprocess")
        if prep is None:
            raise ValueError(
                "the server's model carries no preprocessing (it was compiled from a bare "
                "plan): prepare the input yourself and pass an array"
            )
        seen["classes"] = list(prep.get("classes") or [])
        return load_image(image, prep)

    y, rep = infer(host, port, prepare, tls=tls, timeout=timeout, bank=bank)
    logits = np.asarray(y, dtype=np.float64).reshape(-1)
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    names = seen["classes"] if len(seen["classes"]) == len(logits) else []
    order = np.argsort(-scores, kind="stable")[:top_k]
    top = [{"class": int(k), "name": names[k] if names else str(int(k)),
            "score": round(float(scores[k]), 4)} for k in order]  # fmt: skip
    return {"top": top, "logits": [round(float(v), 4) for v in logits], "report": rep}


def preprocess(
    host: str,
    port: int,
    count: int,
    bank: str | Path,
    *,
    plan: Plan | None = None,
    tls: TLSConfig | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``count`` offline phases now and keep them in the folder ``bank`` (and in the
    server's bank), so that later :func:`infer` calls with ``bank`` pay only the online
    phase. Returns a report; the bank size is ``report["banked"]``."""
    if count < 1:
        raise ValueError("count must be positive")
    with connect(host, port, timeout=timeout, tls=tls) as conn:
        client_bank, rep = client_preprocess(conn, count, bank, plan, progress)
    rep["banked"] = len(client_bank)
    return rep


def _handle(
    sock: socket.socket,
    addr: tuple[Any, ...],
    model: ServerModel,
    bank: Bank | None,
    tls: TLSConfig | None,
    timeout: float | None,
) -> dict[str, Any]:
    """One connection, start to end; never raises (the report says what went wrong)."""
    peer = f"{addr[0]}:{addr[1]}"
    try:
        conn = wrap_accepted(sock, addr, timeout=timeout, tls=tls)
    except TransportError as e:  # e.g. a failed TLS handshake
        log.warning("connection from %s failed before the session: %s", peer, e)
        with contextlib.suppress(OSError):
            sock.close()
        return {"peer": peer, "error": f"{type(e).__name__}: {e}"}
    with conn:
        try:
            rep = server_session(conn, model, bank)
            rep["peer"] = peer
            log.info("served %s (%s) in %.2f s", peer, rep.get("mode"), rep["total_s"])
            return rep
        except Exception as e:  # one client's failure must not stop the server
            log.warning("session with %s failed: %s: %s", peer, type(e).__name__, e)
            if not conn.closed:
                with contextlib.suppress(TransportError):
                    conn.send_error(f"server: {type(e).__name__}: {e}")
            return {"peer": peer, "error": f"{type(e).__name__}: {e}"}


def _vm_bytes() -> int:
    """This process's virtual memory size (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def limit_memory(budget: int) -> None:
    """Cap this process's further address-space growth at ``budget`` bytes (RLIMIT_AS).

    An allocation beyond it raises MemoryError inside the session, which then fails alone.
    """
    import resource

    base = _vm_bytes()
    if base:
        resource.setrlimit(resource.RLIMIT_AS, (base + budget, base + budget))


def default_session_memory(plan: Plan) -> int:
    """The default cap (bytes) on what one forked session may allocate: 1 GiB plus 1.25x the
    plan's garbled tables and rows (an upper bound: garbling now runs at most 384 MiB ahead of
    what was sent, ``GarblingWorker``). Measured (``scripts/session_memory.py``, protocol 5):
    a ResNet-32 all-ReLU session (1.31 GiB of tables and rows) runs within 0.75 GiB and fails
    cleanly at 0.5 GiB; a ``default-approx`` one runs within 0.25 GiB."""
    return (1 << 30) + int(1.25 * garbled_table_bytes(plan))


def _child(sock: socket.socket, addr: tuple[Any, ...], model: ServerModel, bank: Bank | None,
           tls: TLSConfig | None, timeout: float | None, out: Any,
           memory: int | None) -> None:  # fmt: skip
    if memory:
        limit_memory(memory)
    out.send(_handle(sock, addr, model, bank, tls, timeout))
    out.close()


_Session = tuple[ServerModel, Bank | None, TLSConfig | None, float | None]
"""What :func:`_handle` needs besides the connection: model, bank, TLS settings, timeout."""


class _Workers:
    """Sessions in forked workers, at most ``limit`` at a time; each finished worker's report
    is appended to ``reports`` (in the order they end)."""

    def __init__(self, ctx: Any, limit: int, memory: int | None, reports: list[dict[str, Any]]):
        self.ctx, self.limit, self.memory, self.reports = ctx, limit, memory, reports
        self.running: list[tuple[Any, Any]] = []  # (worker, the pipe its report comes back on)

    def start(self, sock: socket.socket, addr: tuple[Any, ...], session: _Session) -> None:
        """Hand one accepted connection to a new worker, once a slot is free."""
        self.reap(block=True)
        recv_end, send_end = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(sock, addr, *session, send_end, self.memory))
        proc.start()
        send_end.close()
        sock.close()  # the worker has its own copy
        self.running.append((proc, recv_end))
        self.reap(block=False)

    def reap(self, block: bool) -> None:
        """Collect finished workers' reports (reading before joining: a worker with a large
        report cannot exit until it is read); with ``block``, wait until a slot is free."""
        while self.running:
            for proc, pipe in list(self.running):
                if pipe.poll():
                    self._collect(proc, pipe)
            if not block or len(self.running) < self.limit:
                return
            self._wait()

    def drain(self) -> None:
        """Wait for every running worker and collect its report."""
        while self.running:
            self.reap(block=False)
            if self.running:
                self._wait()

    def _collect(self, proc: Any, pipe: Any) -> None:
        try:
            self.reports.append(pipe.recv())
        except EOFError:  # died without a report
            proc.join()
            self.reports.append({"peer": None, "error": f"worker exit {proc.exitcode}"})
        pipe.close()
        proc.join()
        self.running.remove((proc, pipe))

    def _wait(self) -> None:
        mp.connection.wait([pipe for _, pipe in self.running], timeout=1.0)


def _server_bank(bank: str | Path | None, model: ServerModel) -> Bank | None:
    """The server's preprocessing bank in folder ``bank`` (None without one), rid of banked
    sessions made for another model version."""
    if bank is None:
        return None
    store = Bank(bank, model.fingerprint, "server", version=model.version)
    if stale := store.discard_stale():
        log.warning("discarded %d banked sessions made for another model version", stale)
    return store


def _fork_context(concurrency: int) -> Any:
    """The ``fork`` context to run sessions in workers with, or None to serve them in this
    process (``concurrency`` 1, no ``fork`` here, or this process is a daemon)."""
    use_fork = concurrency > 1 and "fork" in mp.get_all_start_methods()
    if use_fork and mp.current_process().daemon:  # daemons may not have children
        log.warning("serving one client at a time: this process is a daemon")
        use_fork = False
    return mp.get_context("fork") if use_fork else None


def _accepted(
    lst: socket.socket, max_sessions: int | None
) -> Iterator[tuple[socket.socket, tuple[Any, ...]]]:
    """Accepted connections, ``max_sessions`` of them (None: until the listener is closed)."""
    served = 0
    while max_sessions is None or served < max_sessions:
        try:
            sock, addr = lst.accept()
        except TimeoutError:
            continue
        except OSError as e:  # the listener was closed: stop serving
            log.info("listener closed (%s); stopping", e)
            break
        served += 1
        yield sock, addr


def serve(
    plan: Plan,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    config: SessionConfig | None = None,
    tls: TLSConfig | None = None,
    max_sessions: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    listener: socket.socket | None = None,
    on_ready: Any = None,
    concurrency: int = 1,
    bank: str | Path | None = None,
    session_memory: int | None = None,
) -> list[dict[str, Any]]:
    """Serve secure inferences of ``plan`` to clients (:func:`infer`) until stopped.

    A client that fails (disconnects, sends garbage, disagrees on the plan) ends only its
    own session: the error is logged and sent to it where possible, and the server goes on.
    With ``concurrency > 1`` each connection runs in its own forked process (sharing the
    prepared model copy-on-write), at most ``concurrency`` at a time; a crash of one cannot
    touch the others. To stop a server running in another thread, ``shutdown`` and close
    the ``listener`` it was given.

    Args:
        plan: the full plan, weights included; clients get only its public part.
        host: address to listen on (when no ``listener`` is given). Default: loopback.
        port: TCP port to listen on; 0 picks a free one (see ``on_ready``). Default: 0.
        config: protocol settings of the sessions. Default: the engine's defaults.
        tls: the server's TLS settings (its certificate, and the clients' CA for mutual
            TLS), checked before the first client. Default: None (plain TCP).
        max_sessions: stop after this many connections. Default: None (forever).
        timeout: the longest wait (seconds) for the peer in any one send or receive;
            None waits forever. Default: 120.
        listener: a listening socket to accept on instead of ``host``/``port``; it is left
            open on return.
        on_ready: called once as ``on_ready(port)`` when listening.
        concurrency: how many sessions may run at once, each in a forked worker (where
            ``fork`` is available and this process is not a daemon). Default: 1 (in this
            process, one after another).
        bank: folder of the server's preprocessing bank (needed for clients that
            preprocess); banked sessions made for another model version are discarded.
        session_memory: bytes each forked worker may allocate beyond the shared model
            (Linux); a session that needs more fails with MemoryError, the others go on.
            Default: :func:`default_session_memory`; 0 for no cap.

    Returns:
        One report per connection, in the order they ended: the server's cost report and
        ``"peer"``, or ``"peer"`` and ``"error"`` for a failed session.

    Example:
        >>> import queue, threading
        >>> from safenet.secure import infer, serve
        >>> ports = queue.Queue()
        >>> server = threading.Thread(
        ...     target=serve, args=(plan,), kwargs={"max_sessions": 1, "on_ready": ports.put}
        ... )
        >>> server.start()
        >>> y, report = infer("127.0.0.1", ports.get(), x)
        >>> server.join()  # serve returned after its one session
    """
    model = ServerModel(plan, config)
    if session_memory is None:
        session_memory = default_session_memory(plan)
    store = _server_bank(bank, model)
    lst = listener or listen(host, port)
    if on_ready is not None:
        on_ready(lst.getsockname()[1])
    if tls is not None:
        tls.server_context()  # a bad configuration fails now, not per client
    reports: list[dict[str, Any]] = []
    ctx = _fork_context(concurrency)
    workers = None if ctx is None else _Workers(ctx, concurrency, session_memory, reports)
    session = (model, store, tls, timeout)
    try:
        for sock, addr in _accepted(lst, max_sessions):
            if workers is None:
                reports.append(_handle(sock, addr, *session))
            else:
                workers.start(sock, addr, session)
    finally:
        if workers is not None:
            workers.drain()
        if listener is None:
            lst.close()
    return reports


# ---- local two-process runs ------------------------------------------------------------------
def _server_proc(
    path: str, config: SessionConfig | None, port_q: Any, out_q: Any, timeout: float
) -> None:
    try:
        plan = Plan.load(path)
        lst = listen("127.0.0.1", 0, accept_timeout=timeout)
        port_q.put(lst.getsockname()[1])
        model = ServerModel(plan, config)
        conn, _ = accept(lst, timeout=timeout)
        lst.close()
        with conn:
            out_q.put(("server", server_session(conn, model)))
    except BaseException:
        out_q.put(("server-error", traceback.format_exc()))


def _client_proc(path: str, x_path: str, port: int, out_q: Any, timeout: float) -> None:
    try:
        plan, x = Plan.load(path), np.load(x_path, allow_pickle=False)
        with connect("127.0.0.1", port, timeout=timeout) as conn:
            y, rep, _ = client_session(conn, x, plan, encoded=True)
        out_q.put(("client", (y, rep)))
    except BaseException:
        out_q.put(("client-error", traceback.format_exc()))


def _await(q: Any, procs: dict[str, Any], deadline: float) -> Any:
    """The next item of ``q``; a clear :class:`SecureRunError` as soon as one of ``procs``
    (the parties we still wait for) has died without sending it, or at the deadline."""
    while True:
        with contextlib.suppress(queue.Empty):
            return q.get(timeout=0.2)
        dead = {name: p.exitcode for name, p in procs.items() if p.exitcode is not None}
        if dead:
            with contextlib.suppress(queue.Empty):  # it may have sent just before exiting
                return q.get(timeout=1.0)
            name, code = next(iter(dead.items()))
            raise SecureRunError(
                f"the {name} process exited (code {code}) without a result{_hint()}"
            )
        if time.monotonic() > deadline:
            raise SecureRunError(f"no result from the {' and '.join(procs)} in time")


def _hint() -> str:
    """Why a spawned party may die at start: it re-imports the caller's main module."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or str(path).startswith("<"):
        return (
            ": run_local starts its parties with 'spawn', which re-imports your main module; "
            "that fails from standard input or an interactive session: put the call in a "
            "file under `if __name__ == '__main__':`"
        )
    return f": see its traceback above (it re-imports {path}; is the call under a main guard?)"


def run_local(
    plan: Plan,
    x: np.ndarray,
    *,
    config: SessionConfig | None = None,
    encoded: bool = False,
    decode: bool = True,
    timeout: float = 600.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one secure inference with server and client as two processes over loopback TCP.

    The server process loads the full plan, the client process only its public part and
    ``x``. Both are started with ``spawn``, which re-imports the caller's main module: call
    this from a file, under ``if __name__ == "__main__":``.

    Args:
        plan: the full plan (weights included), e.g. from :func:`safenet.compile`.
        x: the input.
        config: protocol settings of the session. Default: the engine's defaults.
        encoded: ``x`` is already integers at the plan's input scale. Default: False.
        decode: return reals (the output divided by ``2**plan.output_scale``); False
            returns the field integers. Default: True.
        timeout: seconds to wait for the parties' results; also each party's network
            timeout. Default: 600.

    Returns:
        ``(output, report)``: the client's output and one report merged from both parties
        (:func:`merge_reports`: ``offline_s``, ``online_s``, bytes, rounds, counts, both
        breakdowns) plus ``wall_s``, the wall time from the client's start.

    Raises:
        SecureRunError: a party failed (its traceback in the message), died, or gave no
            result within ``timeout``.

    Shape:
        - x: ``plan.input_shape``, one input without the batch dimension, e.g. (C, H, W).
        - output: the shape of the plan's last op, e.g. (num_classes,).

    Example:
        >>> import numpy as np, safenet
        >>> from safenet.nn import build_model
        >>> from safenet.secure import run_local
        >>> plan = safenet.compile(build_model("lenet5").eval(), (1, 28, 28))
        >>> x = np.random.rand(1, 28, 28)
        >>> y, report = run_local(plan, x)
        >>> y.shape, bool(np.array_equal(y, plan.reference(x)))  # all-ReLU plans: bit-exact
        ((10,), True)
    """
    xi = encode_input(plan, x, encoded)
    with tempfile.TemporaryDirectory(prefix="safenet-run-") as tmp:
        # the parties get file paths, not pickled plans: a child that dies at start (e.g. it
        # cannot re-import the caller's main module) must not block us writing its arguments
        paths = [str(Path(tmp) / n) for n in ("plan.zip", "public.zip", "x.npy")]
        plan.save(paths[0])
        plan.public().save(paths[1])
        np.save(paths[2], xi)
        results, wall = _run_parties(paths, config, timeout)
    y, client_rep = results["client"]
    report = merge_reports(plan, results["server"], client_rep)
    report["wall_s"] = round(wall, 3)
    return _decode(plan, y, decode), report


def _run_parties(
    paths: list[str], config: SessionConfig | None, timeout: float
) -> tuple[dict[str, Any], float]:
    """Spawn server and client on the saved plans and input; their results and wall time."""
    ctx = mp.get_context("spawn")
    port_q, out_q = ctx.Queue(), ctx.Queue()
    srv = ctx.Process(target=_server_proc, args=(paths[0], config, port_q, out_q, timeout))
    srv.daemon = True
    srv.start()
    cli = None
    deadline = time.monotonic() + timeout
    try:
        port = _await(port_q, {"server": srv}, deadline)
        t0 = time.perf_counter()
        cli = ctx.Process(target=_client_proc, args=(*paths[1:], port, out_q, timeout))
        cli.daemon = True
        cli.start()
        results: dict[str, Any] = {}
        while len(results) < 2:
            waiting = {k: p for k, p in (("server", srv), ("client", cli)) if k not in results}
            kind, payload = _await(out_q, waiting, deadline)
            if kind.endswith("-error"):
                raise SecureRunError(f"the {kind[:-6]} failed:\n{payload}")
            results[kind] = payload
        wall = time.perf_counter() - t0
    finally:
        for proc in (cli, srv):
            if proc is not None:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    return results, wall


def phase_bytes(traffic: dict[str, Any], phase: str) -> int:
    """Bytes both ways in one phase of a party's ``report["traffic"]``."""
    return sum(c["bytes_sent"] + c["bytes_received"] for c in traffic.get(phase, {}).values())


def merge_reports(plan: Plan, server: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    """One report from both parties' profiles: the headline figures plus both breakdowns.

    ``offline_s`` is the longer of the two parties' offline phases (they end together, up to
    the final message); ``online_s`` is the client's online phase, from sending its masked
    input to holding the output. Bytes count both directions once (the client's view).
    """
    counts = plan.counts()
    traffic = client["traffic"]

    def label_bytes(phase: str, label: str) -> int:
        c = traffic.get(phase, {}).get(label)
        return 0 if c is None else c["bytes_sent"] + c["bytes_received"]

    relu = counts["relu_count"]
    online_b = phase_bytes(traffic, "online")
    tables = label_bytes("offline", "gc.tables")
    return {
        "offline_s": round(
            max(server["phase_s"].get("offline", 0), client["phase_s"].get("offline", 0)), 4
        ),
        "online_s": round(client["phase_s"].get("online", 0), 4),
        "offline_bytes": phase_bytes(traffic, "offline"),
        "online_bytes": online_b,
        "setup_bytes": phase_bytes(traffic, "setup"),
        "online_rounds": traffic.get("rounds", {}).get("online", 0),
        "relu_count": relu,
        "poly_count": counts["poly_count"],
        "gc_bytes_per_relu": round(tables / relu, 1) if relu else 0.0,
        "online_bytes_per_relu": round(online_b / relu, 1) if relu else None,
        "peak_rss_mib": {"server": server["peak_rss_mib"], "client": client["peak_rss_mib"]},
        "field": plan.field.to_dict(),
        "gc_aes": aesni.path(),  # the garbled-circuit hash path of this machine
        "python": sys.version.split()[0],
        "server": server,
        "client": client,
    }
