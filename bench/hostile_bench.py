"""Fault-and-load benchmark (security issue 14): honest banked clients beside hostile ones.

Everything runs on loopback, bounded in time and count:

1. ``safenet serve --model default-approx --concurrency 2 --bank DIR`` starts as a
   subprocess in its own process group with its own ``TMPDIR`` (so the temporary files it
   creates can be measured); ``safenet infer --preprocess K --bank DIR`` then fills one
   client bank per honest client with exactly the sessions it will use, plus two per round
   for the attacks that need a banked session;
2. ``--honest`` client processes each run ``--per-client`` banked private inferences of
   Fashion-MNIST test images back to back (online mode: a fallback to a full inference is
   counted as a failure); every output (centred integers) is compared with the plaintext
   fixed-point reference ``Plan.reference``: equal exactly (what the protocol promises for
   ReLU-only plans such as ``--model default``; polynomial channels, as in
   ``default-approx``, are promised a per-element bound only, see
   ``safenet.protocol.verify``), same class, and the largest difference;
3. meanwhile ``--hostile-threads`` threads run ``--rounds`` rounds of attacks, each bounded
   by ``--attack-timeout``: huge frame lengths (2^40, 2^31) and ciphertext counts (10^9;
   2^16 then ciphertext-sized frames, 1 GiB at most), a 1 GiB ``he.pk`` streamed in 1 MiB
   chunks, malformed ciphertexts (random, truncated, wrong level, size 3, NTT form, other
   parameters), a disconnect at every phase boundary, random bytes after the handshake, and a
   verbatim replay of a genuine banked online session recorded through a TCP proxy. For each
   attempt the error the client saw (the server's error frame, or how the connection ended)
   and the server's log line for that connection are kept, deduplicated with counts;
4. the server's process tree (serve process and its forked workers) is sampled every 0.2 s
   from /proc: RSS summed (counts copy-on-write pages once per process) and PSS summed
   (shares them out), the disk used by the banks and by the server's temporary files
   (deleted-but-open ones included). Banked sessions are counted before and after: those
   taken must match the inferences run, none may be served twice (the replay must be
   refused), none lost;
5. soak: ``--soak N`` banked inferences in a row by one client against a fresh server
   (``--soak-concurrency``, default 1: sessions run in the serve process itself, so a leak
   accumulates), preprocessed in batches: server RSS at start, after every 50 and at the
   end, and its open file descriptors at start and end. A first 1-session batch measures
   the cost of one; N is then capped so the whole run fits ``--time-budget`` minutes (the
   report says so; ``--time-budget 0`` lifts the cap).

A streaming attack stops early if the server's RSS passes 8 GiB; the servers are always
killed. Prints a Markdown summary and writes JSON (``--json``, else a file in the temp dir).

    python bench/hostile_bench.py [--honest 4] [--per-client 5] [--rounds 3] [--soak 300]
        [--session-memory 6] [--json out.json] [--skip-soak] [--time-budget 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from safenet.channel import (
    HEADER,
    KIND_BYTES,
    KIND_ERROR,
    MAGIC,
    VERSION,
    Connection,
    ConnectionClosed,
    PeerError,
    TransportError,
    TransportTimeout,
)

HOST = "127.0.0.1"
DATASET = "fashion-mnist"
MIB, GIB = 1 << 20, 1 << 30
RSS_GUARD = 8 * GIB  # a streaming attack stops when the server's tree passes this
STREAM_CAP = GIB  # most bytes one streaming attack sends
SAMPLE_S = 0.2
SOAK_BATCH = 25  # sessions preprocessed at once in the soak (a client session is ~330 MB)
SAFENET = [sys.executable, "-m", "safenet.cli"]


# ---- /proc and disk ------------------------------------------------------------------------
def _ppids() -> dict[int, int]:
    """{pid: parent pid} of every process (from /proc/<pid>/stat)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    table[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return table


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    table = _ppids()
    if root not in table:
        return []
    tree, frontier = [root], {root}
    while frontier:
        frontier = {pid for pid, parent in table.items() if parent in frontier}
        tree += sorted(frontier)
    return tree


def _kib(pid: int, name: str, key: str) -> int:
    """A ``key: N kB`` field of /proc/<pid>/<name> (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_rss(root: int) -> int:
    """Bytes of RSS summed over ``root``'s process tree."""
    return 1024 * sum(_kib(p, "status", "VmRSS:") for p in process_tree(root))


def fd_count(pid: int) -> int:
    """Open file descriptors of one process (-1 if unreadable)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def disk_bytes(path: Path, pids: Iterable[int] = ()) -> int:
    """Disk used under ``path`` (like du), plus files there that ``pids`` hold open after
    deleting them."""
    seen: dict[tuple[int, int], int] = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                seen[st.st_dev, st.st_ino] = st.st_blocks * 512
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = f"/proc/{pid}/fd/{fd}"
                with contextlib.suppress(OSError):
                    if os.readlink(link).startswith(str(path)):
                        st = os.stat(link)
                        seen[st.st_dev, st.st_ino] = st.st_blocks * 512
    return sum(seen.values())


class Monitor(threading.Thread):
    """Samples a server's process tree and some folders' disk use every 0.2 s: RSS and PSS
    summed over the tree, the largest per-process high-water mark (VmHWM: a peak between
    samples is not missed while the process lives), and the server's temporary files, which
    come and go fast, every 0.02 s."""

    def __init__(self, pid: int, tmpdir: Path, folders: dict[str, Path]) -> None:
        super().__init__(name="monitor", daemon=True)
        self.pid, self.tmpdir, self.folders = pid, tmpdir, folders
        self.samples: list[dict[str, float]] = []
        self.now: dict[str, float] = {}
        self._halt = threading.Event()

    def sample(self) -> tuple[dict[str, float], list[int]]:
        pids = process_tree(self.pid)
        s = {
            "t": time.monotonic(),
            "procs": len(pids),
            "rss": 1024 * sum(_kib(p, "status", "VmRSS:") for p in pids),
            "pss": 1024 * sum(_kib(p, "smaps_rollup", "Pss:") for p in pids),
            "hwm": 1024 * max((_kib(p, "status", "VmHWM:") for p in pids), default=0),
        }
        return s | {name: disk_bytes(path) for name, path in self.folders.items()}, pids

    def run(self) -> None:
        while not self._halt.is_set():
            s, pids = self.sample()
            s["tmp"] = disk_bytes(self.tmpdir, pids)
            self.now = s
            self.samples.append(s)
            for _ in range(10):
                if self._halt.wait(SAMPLE_S / 10):
                    return
                s["tmp"] = max(s["tmp"], disk_bytes(self.tmpdir, pids))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def peak(self, key: str, t0: float = 0.0, t1: float = float("inf")) -> float:
        """Largest sampled value of ``key`` between t0 and t1 (one sample period of slack)."""
        lo, hi = t0 - SAMPLE_S, t1 + SAMPLE_S
        return max((s[key] for s in self.samples if lo <= s["t"] <= hi), default=0)


# ---- the server --------------------------------------------------------------------------
class Server:
    """``safenet serve`` as a subprocess (own process group, own TMPDIR, logs in files)."""

    def __init__(self, folder: Path, model: str, concurrency: int, session_memory: float) -> None:
        self.dir, self.model = folder, model
        self.concurrency, self.session_memory = concurrency, session_memory
        self.bank, self.tmp = folder / "srvbank", folder / "srvtmp"
        self.out, self.log_path = folder / "serve.out", folder / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 180.0) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        cmd = [*SAFENET, "serve", "--model", self.model, "--bank", str(self.bank)]
        cmd += f"--host {HOST} --port 0 --concurrency {self.concurrency}".split()
        if self.session_memory:
            cmd += ["--session-memory", str(self.session_memory)]
        env = os.environ | {"TMPDIR": str(self.tmp)}
        with open(self.out, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(rb" on [\d.]+:(\d+) ", self.out.read_bytes())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"safenet serve exited: {self.log()[-2000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"safenet serve not ready in {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Terminate the serve process, then kill whatever is left of its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its forked workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def server_log_by_port(log: str) -> tuple[dict[int, str], Counter]:
    """What the server logged for each client port, and how many sessions it served per mode."""
    by_port, served = {}, Counter()
    for line in log.splitlines():
        m = re.search(r"served 127\.0\.0\.1:(\d+) \((\w+)\)", line)
        if m:
            by_port[int(m.group(1))] = f"served ({m.group(2)})"
            served[m.group(2)] += 1
            continue
        m = re.search(
            r"(?:session with|connection from) 127\.0\.0\.1:(\d+) failed[^:]*: (.*)", line
        )
        if m:
            by_port[int(m.group(1))] = m.group(2)
    return by_port, served


# ---- banks and preprocessing -------------------------------------------------------------
_SID = re.compile(r"^[0-9a-f]{32}$")


def bank_state(root: Path) -> dict[str, int]:
    """Ready sessions and leftovers (``tmp-``/``consumed-``) under a bank root, read from the
    folders only (opening a :class:`Bank` would clean leftovers up)."""
    ready = leftovers = 0
    for sub in root.glob("*-*") if root.exists() else ():
        for p in sub.iterdir() if sub.is_dir() else ():
            if _SID.match(p.name) and (p / "manifest.json").exists():
                ready += 1
            elif p.name.startswith(("tmp-", "consumed-")):
                leftovers += 1
    return {"ready": ready, "leftovers": leftovers}


def preprocess(port: int, bank: Path, count: int, batch: int = SOAK_BATCH) -> float:
    """``safenet infer --preprocess`` ``count`` sessions into ``bank`` (in batches); seconds."""
    t0, done = time.perf_counter(), 0
    while done < count:
        k = min(batch, count - done)
        cmd = [*SAFENET, "infer", "--server", f"{HOST}:{port}", "--bank", str(bank)]
        cmd += ["--preprocess", str(k), "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180 + 90 * k)
        if r.returncode:
            raise RuntimeError(f"preprocess into {bank} failed: {r.stderr.strip()[-1000:]}")
        done += k
    return time.perf_counter() - t0


def preprocess_all(port: int, jobs: list[tuple[Path, int]], parallel: int) -> float:
    """Several banks at once (as many as the server serves in parallel); wall seconds."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        for f in [pool.submit(preprocess, port, bank, n) for bank, n in jobs if n]:
            f.result()
    return time.perf_counter() - t0


# ---- images, references, honest clients ---------------------------------------------------
def load_plan(model: str) -> Any:
    from safenet import checkpoint

    return checkpoint.load(model).plan()


def load_images(indices: list[int]) -> dict[int, np.ndarray]:
    """Normalised Fashion-MNIST test images, as ``safenet infer --dataset`` makes them."""
    from safenet.data.torchdata import ImageDataset

    ds = ImageDataset(DATASET, "test")
    return {i: ds.normalize(ds.images[i : i + 1])[0].double().numpy() for i in indices}


def references(plan: Any, xs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The plaintext fixed-point outputs (centred integers) of the full plan."""
    if not xs:
        return {}
    ys = plan.reference(np.stack(list(xs.values())), decode=False)
    return dict(zip(xs, np.asarray(ys), strict=True))


def _honest_client(k: int, port: int, bank: str, xs: dict, timeout: float, out_q: Any) -> None:
    """One honest client process: its banked inferences back to back."""
    from safenet.secure import infer

    runs = []
    for idx, x in xs.items():
        t = time.perf_counter()
        try:
            y, rep = infer(HOST, port, x, bank=bank, decode=False, timeout=timeout)
            runs.append({"index": idx, "y": np.asarray(y).tolist(), "mode": rep.get("mode")})
        except Exception as e:  # counted, not raised: the bench reports every failure
            runs.append({"index": idx, "error": f"{type(e).__name__}: {e}"})
        runs[-1]["s"] = round(time.perf_counter() - t, 3)
    out_q.put({"client": k, "runs": runs})


def run_honest(port: int, banks: list[Path], xs: list[dict], limit_s: float) -> list[dict]:
    """Start one process per client bank, wait (at most ``limit_s``) for their runs."""
    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    procs = [
        ctx.Process(target=_honest_client, args=(k, port, str(b), x, 300.0, out_q))
        for k, (b, x) in enumerate(zip(banks, xs, strict=True))
    ]
    for p in procs:
        p.start()
    results, deadline = [], time.monotonic() + limit_s
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(out_q.get(timeout=2))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and out_q.empty():
                break
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)
    return results


# ---- hostile clients: a genuine client stopped (or altered) at a chosen frame ----------------
class _Tripped(Exception):
    """Raised inside the genuine client code when the attack's moment has come."""


@dataclass(frozen=True)
class Rule:
    """Fire at the ``nth`` frame sent or received (``way``) whose label starts with
    ``label``: before or after it; then close the socket (a disconnect) or hand it over."""

    way: str
    label: str
    after: bool = True
    close: bool = True
    nth: int = 1


class TripConnection(Connection):
    """A Connection that fires a :class:`Rule` and may rewrite the payloads it sends; once
    the attack has fired, its waits shrink to ``attack_timeout``."""

    def __init__(
        self,
        sock: socket.socket,
        timeout: float,
        rule: Rule | None,
        mutate: Callable | None,
        attack_timeout: float,
    ) -> None:
        super().__init__(sock, timeout)
        self.rule, self.mutate, self.attack_timeout = rule, mutate, attack_timeout
        self.seen, self.fired = 0, False

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self.sock.settimeout(self.attack_timeout)

    def _check(self, way: str, label: str, after: bool) -> None:
        r = self.rule
        if r is None or self.fired or way != r.way or not label.startswith(r.label):
            return
        self.seen += not after
        if self.seen == r.nth and after == r.after:
            self._fire()
            if r.close:
                self.close()
            raise _Tripped

    # (*args, **kw: whatever else the transport of the day passes along)
    def _send_frame(self, kind: int, label: str, parts: list, *args: Any, **kw: Any) -> None:
        self._check("send", label, False)
        if self.mutate is not None:
            new = self.mutate(label, parts)
            if new is not parts:
                self._fire()
                parts = new
        super()._send_frame(kind, label, parts, *args, **kw)
        self._check("send", label, True)

    def _recv_frame(self, label: str, *args: Any, **kw: Any) -> tuple[int, np.ndarray]:
        self._check("recv", label, False)
        out = super()._recv_frame(label, *args, **kw)
        self._check("recv", label, True)
        return out


def _read(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), MIB))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def await_reply(sock: socket.socket, timeout: float) -> tuple[str, list[str]]:
    """Read whatever the server sends until it gives up: (one-line outcome, labels of the
    ordinary frames before that)."""
    labels: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            magic, version, kind, lab_len, length = HEADER.unpack(
                _read(sock, HEADER.size, deadline)
            )
            if magic != MAGIC or version != VERSION:
                return "garbage from the server (not a frame)", labels
            label = _read(sock, lab_len, deadline).decode(errors="replace")
            if kind == KIND_ERROR:
                text = _read(sock, min(length, 1 << 16), deadline).decode(errors="replace")
                return f"error frame: {text}", labels
            while length:
                length -= len(_read(sock, min(MIB, length), deadline))
            labels.append(label)
    except TimeoutError:
        return f"no reply within {timeout:g} s", labels
    except EOFError:
        return "connection closed", labels
    except OSError as e:
        return f"connection error: {e.strerror or e}", labels


def describe(e: BaseException, conn: Connection | None = None) -> str:
    """One line for what the client saw; a send that failed is followed by a short read, to
    catch the error frame the server may have sent before closing."""
    if isinstance(e, PeerError):
        return "error frame: " + str(e).removeprefix("peer gave up: ")
    if isinstance(e, TransportTimeout | TimeoutError):
        return "no reply in time (a send or receive timed out)"
    if isinstance(e, ConnectionClosed | OSError) and conn is not None:
        with contextlib.suppress(OSError):
            saw, _ = await_reply(conn.sock, 3.0)
            if saw.startswith("error frame"):
                return saw
        return "connection closed"
    if isinstance(e, TransportError):
        return f"{type(e).__name__}: {e}"
    return f"client-side {type(e).__name__}: {e}"


@dataclass
class HostileCtx:
    """What every attack needs."""

    port: int
    plan: Any  # the full plan: references for the genuine recorded inference
    bank: Path  # the attackers' client bank (banked disconnect, recorded session)
    monitor: Monitor
    timeout: float  # how long an attack waits for the server
    queue_timeout: float  # how long a connection may wait for a free server slot
    image: np.ndarray
    reference: np.ndarray
    he: Any = None  # HEContext with the server's parameters
    ct_size: int = 0
    pk_size: int = 0
    other_ct: bytes = b""  # a ciphertext under other BFV parameters
    lock: threading.Lock = field(default_factory=threading.Lock)

    def prepare(self) -> None:
        from safenet.crypto.he import ClientKeys, HEContext, HEParams
        from safenet.protocol.engine import SessionConfig

        p = self.plan.field.p
        self.he = HEContext(SessionConfig().he_params(p))
        keys = ClientKeys(self.he)
        self.ct_size = len(keys.encrypt_coeffs(np.zeros(1, dtype=np.int64)).to_string())
        self.pk_size = len(keys.public_key_bytes)
        other = ClientKeys(HEContext(HEParams(4096, p)))
        self.other_ct = other.encrypt_coeffs(np.zeros(1, dtype=np.int64)).to_string()


def _drive(
    ctx: HostileCtx, rule: Rule | None, mutate: Callable | None = None, banked: bool = False
) -> tuple[TripConnection, int, str | None]:
    """Run a genuine client (plan fetched, zero input) until ``rule`` fires; returns the
    connection, its local port and None, or what ended the client first."""
    from safenet.protocol.session import client_session, open_client_bank

    plan, bank = open_client_bank(ctx.bank) if banked else (None, None)
    sock = socket.create_connection((HOST, ctx.port), timeout=ctx.queue_timeout)
    conn = TripConnection(sock, ctx.queue_timeout, rule, mutate, ctx.timeout)
    port = sock.getsockname()[1]
    if banked and not len(bank):
        return conn, port, "bench: no banked session left for this attack"
    try:
        client_session(conn, np.zeros(ctx.plan.input_shape), plan, bank=bank)
        return conn, port, "the inference completed (the attack never fired)"
    except _Tripped:
        return conn, port, None
    except Exception as e:  # what the client saw is the measurement
        return conn, port, describe(e, conn)


# ---- the attacks ----------------------------------------------------------------------------
@cache
def _noise() -> bytes:
    return os.urandom(MIB)


def _header(label: str, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, KIND_BYTES, len(label), length) + label.encode()


def stream(ctx: HostileCtx, sock: socket.socket, pieces: Iterator[bytes], cap: int) -> dict:
    """Send pieces until ``cap`` bytes, the first send error or block, or the server's tree
    passing the RSS guard; says how far it got."""
    sent, why, t0 = 0, f"sent all {cap // MIB} MiB", time.monotonic()
    sock.settimeout(ctx.timeout)
    for piece in pieces:
        if sent >= cap:
            break
        if ctx.monitor.now.get("rss", 0) > RSS_GUARD:
            why = "stopped: server RSS passed 8 GiB"
            break
        try:
            sock.sendall(piece[: cap - sent])
        except TimeoutError:
            why = "send blocked (the server stopped reading)"
            break
        except OSError as e:
            why = f"send failed: {e.strerror or e}"
            break
        sent += min(len(piece), cap - sent)
    return {
        "sent_mib": round(sent / MIB, 1),
        "stream": why,
        "stream_s": round(time.monotonic() - t0, 2),
    }


def _handoff(ctx: HostileCtx, label: str, attack: Callable[[Connection], dict]) -> dict:
    """A genuine client up to (not including) its first ``label`` frame, then ``attack``."""
    conn, port, early = _drive(ctx, Rule("send", label, after=False, close=False))
    try:
        if early is not None:
            return {"port": port, "client_saw": f"never reached {label}: {early}"}
        try:
            return {"port": port} | attack(conn)
        except (OSError, TransportError) as e:
            return {"port": port, "client_saw": describe(e, conn)}
    finally:
        conn.close()


def _reply(ctx: HostileCtx, conn: Connection, **extra: Any) -> dict:
    saw, _ = await_reply(conn.sock, ctx.timeout)
    return {"client_saw": saw} | extra


def atk_length(ctx: HostileCtx, length: int) -> dict:
    """Announce a ``length``-byte he.pk frame, send nothing more."""

    def attack(conn: Connection) -> dict:
        conn.sock.sendall(_header("he.pk", length))
        return _reply(ctx, conn)

    return _handoff(ctx, "he.pk", attack)


def atk_count(ctx: HostileCtx, count: int) -> dict:
    """Announce ``count`` ciphertexts for the first linear layer."""

    def attack(conn: Connection) -> dict:
        conn.send_json(count, label="he.linear")
        return _reply(ctx, conn)

    return _handoff(ctx, "he.linear", attack)


def atk_count_stream(ctx: HostileCtx) -> dict:
    """Announce 2^16 ciphertexts, then send ciphertext-sized random frames (1 GiB at most)."""

    def attack(conn: Connection) -> dict:
        conn.send_json(1 << 16, label="he.linear")
        frame = _header("he.linear", ctx.ct_size) + _noise()[: ctx.ct_size]
        return _reply(ctx, conn, **stream(ctx, conn.sock, repeat(frame), STREAM_CAP))

    return _handoff(ctx, "he.linear", attack)


def atk_big_pk(ctx: HostileCtx) -> dict:
    """A 1 GiB he.pk frame, streamed in 1 MiB chunks."""

    def attack(conn: Connection) -> dict:
        conn.sock.sendall(_header("he.pk", STREAM_CAP))
        return _reply(ctx, conn, **stream(ctx, conn.sock, repeat(_noise()), STREAM_CAP))

    return _handoff(ctx, "he.pk", attack)


def atk_random_bytes(ctx: HostileCtx) -> dict:
    """64 KiB of random bytes (no framing) where he.pk is expected."""

    def attack(conn: Connection) -> dict:
        with contextlib.suppress(OSError):
            conn.sock.sendall(os.urandom(64 << 10))
        return _reply(ctx, conn)

    return _handoff(ctx, "he.pk", attack)


def atk_random_pk(ctx: HostileCtx) -> dict:
    """A well-framed he.pk of the right size holding random bytes."""

    def attack(conn: Connection) -> dict:
        conn.send(os.urandom(ctx.pk_size), label="he.pk")
        return _reply(ctx, conn)

    return _handoff(ctx, "he.pk", attack)


MUTATIONS = (
    "random bytes, right size",
    "truncated to half",
    "wrong level (mod-switched)",
    "size 3 (ct*ct)",
    "NTT form",
    "other parameters (N=4096)",
)


def _mutate_ct(ctx: HostileCtx, how: str, label: str, parts: list) -> list:
    """The genuine client's he.linear ciphertexts, replaced by a wrong form of themselves."""
    if label != "he.linear" or len(parts[0]) < 1000:  # the count, or not a ciphertext
        return parts
    data = bytes(parts[0])
    if how.startswith("random"):
        return [os.urandom(len(data))]
    if how.startswith("truncated"):
        return [data[: len(data) // 2]]
    if how.startswith("other"):
        return [ctx.other_ct]
    ev = ctx.he.evaluator
    with ctx.lock:
        ct = ctx.he.ciphertext_from_bytes(data)
        if how.startswith("wrong level"):
            return [ev.mod_switch_to_next(ct).to_string()]
        if how.startswith("size 3"):
            return [ev.multiply(ct, ct).to_string()]
        return [ev.transform_to_ntt(ct).to_string()]


def atk_ciphertext(ctx: HostileCtx, how: str) -> dict:
    conn, port, saw = _drive(ctx, None, partial(_mutate_ct, ctx, how))
    conn.close()
    return {"port": port, "client_saw": saw}


CUTS = {
    "disconnect after session.request": Rule("send", "session.request"),
    "disconnect after config + plan": Rule("recv", "session.plan"),
    "disconnect after the handshake": Rule("recv", "hello"),
    "disconnect after he.pk": Rule("send", "he.pk"),
    "disconnect mid-OT (ot.base sent)": Rule("send", "ot.base"),
    "disconnect after the 1st linear layer": Rule("recv", "gc.", after=False),
    "disconnect mid-online (banked)": Rule("send", "online.reshare"),
}


def atk_cut(ctx: HostileCtx, rule: Rule, banked: bool) -> dict:
    conn, port, early = _drive(ctx, rule, banked=banked)
    conn.close()
    return {"port": port, "client_saw": "(we disconnected)" if early is None else early}


# ---- replay: record a genuine banked online session through a proxy, send it again --------
def _pump(src: socket.socket, dst: socket.socket, keep: bytearray | None, timeout: float) -> None:
    src.settimeout(timeout)
    with contextlib.suppress(OSError):
        while chunk := src.recv(MIB):
            if keep is not None:
                keep += chunk
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class Recorder:
    """A one-connection TCP proxy in front of the server that keeps the client's bytes."""

    def __init__(self, port: int, timeout: float) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(timeout)
        self.port = self.listener.getsockname()[1]
        self.upstream_port = 0
        self.sent = bytearray()
        self._thread = threading.Thread(target=self._run, args=(port, timeout), daemon=True)
        self._thread.start()

    def _run(self, port: int, timeout: float) -> None:
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        with down:
            try:
                up = socket.create_connection((HOST, port), timeout=timeout)
            except OSError:
                return
            with up:
                self.upstream_port = up.getsockname()[1]
                back = threading.Thread(target=_pump, args=(up, down, None, timeout), daemon=True)
                back.start()
                _pump(down, up, self.sent, timeout)
                back.join(timeout)

    def finish(self, timeout: float) -> bytes:
        self._thread.join(timeout)
        self.listener.close()
        return bytes(self.sent)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _genuine_recorded(ctx: HostileCtx) -> tuple[bytes, dict]:
    """One genuine banked online inference through a :class:`Recorder`."""
    from safenet.secure import infer

    rec = Recorder(ctx.port, ctx.queue_timeout)
    try:
        y, rep = infer(
            HOST, rec.port, ctx.image, bank=ctx.bank, decode=False, timeout=ctx.queue_timeout
        )
        info = {
            "genuine_mode": rep.get("mode"),
            "genuine_exact": bool(np.array_equal(y, ctx.reference)),
        }
    except Exception as e:  # reported: the replay then has nothing to send
        info = {"genuine_error": describe(e)}
    data = rec.finish(60)
    info |= {"genuine_port": rec.upstream_port, "recorded_mib": round(len(data) / MIB, 2)}
    return data, info


def atk_replay(ctx: HostileCtx) -> dict:
    """Replay the client->server bytes of a genuine banked online session, verbatim."""
    data, info = _genuine_recorded(ctx)
    if "genuine_error" in info or info["genuine_mode"] != "online" or not data:
        return {"client_saw": "bench: no genuine banked session recorded"} | info
    sock = socket.create_connection((HOST, ctx.port), timeout=ctx.queue_timeout)
    port = sock.getsockname()[1]
    sender = threading.Thread(target=_send_quietly, args=(sock, data), daemon=True)
    sender.start()
    try:
        saw, labels = await_reply(sock, ctx.queue_timeout)
    finally:
        sock.close()
        sender.join(10)
    return {"port": port, "client_saw": saw, "served_twice": "online.output" in labels} | info


def attacks() -> dict[str, Callable[[HostileCtx], dict]]:
    """Every attack of one round, by name."""
    out: dict[str, Callable[[HostileCtx], dict]] = {
        "he.pk frame announcing 2^40 bytes": partial(atk_length, length=1 << 40),
        "he.pk frame announcing 2^31 bytes, then silence": partial(atk_length, length=1 << 31),
        "ciphertext count 10^9": partial(atk_count, count=10**9),
        "ciphertext count 2^16, then 1 GiB of ciphertext frames": atk_count_stream,
        "1 GiB he.pk streamed in 1 MiB chunks": atk_big_pk,
        "random bytes after the handshake": atk_random_bytes,
        "random he.pk of the right size": atk_random_pk,
    }
    out |= {f"ciphertext: {how}": partial(atk_ciphertext, how=how) for how in MUTATIONS}
    out |= {n: partial(atk_cut, rule=r, banked="banked" in n) for n, r in CUTS.items()}
    out["replay of a recorded banked online session"] = atk_replay
    return out


def _attempt(ctx: HostileCtx, rnd: int, name: str, fn: Callable[[HostileCtx], dict]) -> dict:
    t0 = time.monotonic()
    try:
        out = fn(ctx)
    except Exception as e:  # a bench bug must not stop the other attacks
        out = {"client_saw": f"bench error: {type(e).__name__}: {e}"}
    t1 = time.monotonic()
    return {
        "attack": name,
        "round": rnd,
        "s": round(t1 - t0, 2),
        **out,
        "rss_peak_mib": round(ctx.monitor.peak("rss", t0, t1) / MIB),
        "hwm_peak_mib": round(ctx.monitor.peak("hwm", t0, t1) / MIB),
        "tmp_peak_mib": round(ctx.monitor.peak("tmp", t0, t1) / MIB, 1),
    }


def start_hostile(ctx: HostileCtx, rounds: int, threads: int) -> tuple[list, list]:
    """Threads working through ``rounds`` rounds of every attack; (results, threads)."""
    tasks: queue.Queue = queue.Queue()
    for rnd in range(rounds):
        for name, fn in attacks().items():
            tasks.put((rnd, name, fn))
    results: list[dict] = []

    def worker() -> None:
        while True:
            try:
                rnd, name, fn = tasks.get_nowait()
            except queue.Empty:
                return
            results.append(_attempt(ctx, rnd, name, fn))

    workers = [
        threading.Thread(target=worker, name=f"hostile-{i}", daemon=True) for i in range(threads)
    ]
    for w in workers:
        w.start()
    return results, workers


# ---- phase 1: honest load beside the attacks ----------------------------------------------
def _banks_now(server: Server, honest: list[Path], hostile: Path) -> dict:
    return {
        "server": bank_state(server.bank),
        "honest": [bank_state(b) for b in honest],
        "attackers": bank_state(hostile),
    }


def _run_load(
    args: argparse.Namespace,
    srv: Server,
    ctx: HostileCtx,
    banks: list[Path],
    xs: dict[int, np.ndarray],
) -> dict:
    """Attack threads and honest processes at once; returns their results and timings."""
    t0 = time.monotonic()
    hostile, workers = start_hostile(ctx, args.rounds, args.hostile_threads)
    n = args.per_client
    per_client = [{i: xs[i] for i in range(k * n, (k + 1) * n)} for k in range(args.honest)]
    honest = run_honest(srv.port, banks, per_client, limit_s=600 + 180 * n)
    honest_s = time.monotonic() - t0
    deadline = time.monotonic() + 600 + 120 * args.rounds
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    unfinished = sum(w.is_alive() for w in workers)
    return {
        "honest": honest,
        "hostile": list(hostile),
        "honest_wall_s": round(honest_s, 1),
        "load_wall_s": round(time.monotonic() - t0, 1),
        "hostile_threads_stuck": unfinished,
    }


def main_phase(args: argparse.Namespace, work: Path) -> dict:
    """Preprocess, run honest clients and attacks together, measure, stop the server."""
    plan = load_plan(args.model)
    srv = Server(work / "main", args.model, args.concurrency, args.session_memory)
    clients = work / "main" / "clients"
    banks = [clients / f"honest{k}" for k in range(args.honest)]
    hostile_bank = clients / "attackers"
    n_img = args.honest * args.per_client
    xs = load_images(list(range(n_img + 1)))  # the last: the recorded genuine session's
    refs = references(plan, xs)
    mon, out = None, {}
    try:
        srv.start()
        mon = Monitor(srv.proc.pid, srv.tmp, {"server_bank": srv.bank, "client_banks": clients})
        mon.start()
        jobs = [(b, args.per_client) for b in banks] + [(hostile_bank, 2 * args.rounds)]
        out["preprocess_wall_s"] = round(preprocess_all(srv.port, jobs, args.concurrency), 1)
        out["banks_before"] = _banks_now(srv, banks, hostile_bank)
        ctx = HostileCtx(
            srv.port, plan, hostile_bank, mon, args.attack_timeout, 300.0, xs[n_img], refs[n_img]
        )
        ctx.prepare()
        out |= _run_load(args, srv, ctx, banks, xs)
        out["banks_after"] = _banks_now(srv, banks, hostile_bank)
        out["server_alive"] = srv.alive()
    finally:
        if mon is not None:
            mon.stop()
        srv.stop()
    out["refs"], out["output_scale"] = refs, plan.output_scale
    out["exact_promised"] = exact_promised(plan)
    out["server_log"] = srv.log()
    out["tmp_at_start"] = mon.samples[0]["tmp"] if mon and mon.samples else 0
    keys = ("rss", "pss", "hwm", "tmp", "server_bank", "client_banks", "procs")
    out["peaks"] = {k: mon.peak(k) if mon else 0 for k in keys}
    return out


def exact_promised(plan: Any) -> bool:
    """Whether the protocol promises outputs equal to the reference: plans without
    polynomial channels (those are exact per element up to one carry, not end to end)."""
    return plan.counts()["poly_count"] == 0


def _norm(text: str) -> str:
    """A message without what changes from one attempt to the next (ids, ports, counts)."""
    text = re.sub(r"[0-9a-f]{32}", "<id>", str(text))
    text = re.sub(r"127\.0\.0\.1:\d+", "<peer>", text)
    text = re.sub(r"after \d+ of (\d+) bytes", r"after <n> of \1 bytes", text)
    text = re.sub(r"bad magic [^)]*", "bad magic <random bytes>", text)
    return text if len(text) <= 300 else text[:297] + "..."


def compare(y: Any, ref: np.ndarray) -> tuple[bool, bool, int]:
    """(equal exactly, same predicted class, largest element difference) of an output."""
    y = np.asarray(y)
    return np.array_equal(y, ref), int(y.argmax()) == int(ref.argmax()), int(np.abs(y - ref).max())


def honest_summary(results: list[dict], refs: dict, expected: int, scale: int) -> dict:
    runs = [r for c in results for r in c["runs"]]
    ok = [r for r in runs if "error" not in r]
    cmp = [compare(r["y"], refs[r["index"]]) for r in ok]
    lat = sorted(r["s"] for r in ok)
    return {
        "expected": expected,
        "completed": len(ok),
        "exact": sum(c[0] for c in cmp),
        "same_class": sum(c[1] for c in cmp),
        "online": sum(r["mode"] == "online" for r in ok),
        "max_abs_diff_logits": max((c[2] for c in cmp), default=0) / 2**scale,
        "errors": Counter(_norm(r["error"]) for r in runs if "error" in r),
        "latency_s": {"p50": lat[len(lat) // 2], "max": lat[-1]} if lat else {},
    }


def hostile_rows(attempts: list[dict], by_port: dict[int, str]) -> list[dict]:
    """One row per (attack, what the client saw, what the server logged), with counts."""
    rows: dict[tuple, dict] = {}
    for a in attempts:
        a["server_logged"] = by_port.get(a.get("port"), "(no line for this connection)")
        key = (a["attack"], _norm(a.get("client_saw")), _norm(a["server_logged"]))
        row = rows.setdefault(
            key,
            {
                "attack": key[0],
                "client_saw": key[1],
                "server_logged": key[2],
                "n": 0,
                "max_s": 0,
                "rss_peak_mib": 0,
                "hwm_peak_mib": 0,
                "tmp_peak_mib": 0,
            },
        )
        row["n"] += 1
        for k in ("max_s", "rss_peak_mib", "hwm_peak_mib", "tmp_peak_mib"):
            row[k] = max(row[k], a["s" if k == "max_s" else k])
        if "sent_mib" in a and (sent := f"{a['sent_mib']} MiB, {a['stream']}") not in row.get(
            "sent", []
        ):
            row.setdefault("sent", []).append(sent)
    order = list(attacks())
    return sorted(rows.values(), key=lambda r: (order.index(r["attack"]), -r["n"]))


def accounting(main: dict, honest: dict, attempts: list[dict], served: Counter) -> dict:
    """Banked sessions before/after on both sides, and the pass/fail checks."""
    b, a = main["banks_before"], main["banks_after"]
    server_taken = b["server"]["ready"] - a["server"]["ready"]
    honest_taken = sum(
        x["ready"] - y["ready"] for x, y in zip(b["honest"], a["honest"], strict=True)
    )
    attackers_taken = b["attackers"]["ready"] - a["attackers"]["ready"]
    replays = [x for x in attempts if x["attack"].startswith("replay")]
    genuine = sum(x.get("genuine_mode") == "online" for x in replays)
    refused = [
        x
        for x in replays
        if "not in the bank" in x["client_saw"]
        and not x.get("served_twice")
        and not x["server_logged"].startswith("served")
    ]
    leftovers = sum(s["leftovers"] for s in [a["server"], a["attackers"], *a["honest"]])
    exact = {}
    if main["exact_promised"]:
        exact = {"every honest output equals the reference exactly": honest["exact"]
                 == honest["expected"]}  # fmt: skip
    checks = {
        "every honest inference completed": honest["completed"] == honest["expected"],
        "every honest prediction equals the reference's": honest["same_class"]
        == honest["expected"],
        "every honest inference ran on a banked session": honest["online"] == honest["expected"],
        "honest sessions taken = honest inferences completed": honest_taken == honest["completed"],
        "server sessions taken = client sessions taken (none lost)": server_taken
        == honest_taken + attackers_taken,
        "server served online = honest + genuine recorded (none twice)": served["online"]
        == honest["online"] + genuine,
        "every replay refused": len(refused) == len(replays),
        "no tmp-/consumed- leftovers in the banks": leftovers == 0,
        "server alive at the end": main["server_alive"],
        "every attack thread finished": main["hostile_threads_stuck"] == 0,
    } | exact
    return {
        "server_ready_before": b["server"]["ready"],
        "server_ready_after": a["server"]["ready"],
        "server_taken": server_taken,
        "honest_taken": honest_taken,
        "attackers_taken": attackers_taken,
        "served_by_mode": dict(served),
        "replays": len(replays),
        "replays_refused": len(refused),
        "genuine_recorded_exact": sum(bool(x.get("genuine_exact")) for x in replays),
        "leftovers": leftovers,
        "checks": checks,
    }


# ---- phase 2: soak --------------------------------------------------------------------------
def _mark(pid: int, done: int, t0: float) -> dict:
    time.sleep(0.3)  # let the finished session's clean-up land
    return {
        "inferences": done,
        "t_s": round(time.monotonic() - t0, 1),
        "tree_rss_mib": round(tree_rss(pid) / MIB, 1),
        "serve_rss_mib": round(_kib(pid, "status", "VmRSS:") / 1024, 1),
        "fds": fd_count(pid),
    }


def _soak_batch(plan: Any, srv: Server, bank: Path, idx: range, st: dict, t0: float) -> None:
    """Online inferences on the sessions just preprocessed; a mark after every 50."""
    from safenet.secure import infer

    xs = load_images([i % 10000 for i in idx])
    refs = references(plan, xs)
    for i in idx:
        x = xs[i % 10000]
        try:
            y, rep = infer(HOST, srv.port, x, bank=bank, decode=False, timeout=300)
            exact, same, diff = compare(y, refs[i % 10000])
            st["not_exact"] += not exact
            st["other_class"] += not same
            st["max_abs_diff"] = max(st["max_abs_diff"], diff)
            st["not_online"] += rep.get("mode") != "online"
        except Exception as e:  # counted
            st["errors"][_norm(f"{type(e).__name__}: {e}")] += 1
        if (i + 1) % 50 == 0 or i == 0:  # every 50, and after the first (warm-up)
            st["marks"].append(_mark(srv.proc.pid, i + 1, t0))


def _growth(marks: list[dict], since: int) -> float | str:
    """Server tree RSS growth (MiB) from the mark after ``since`` inferences to the last."""
    first = next((m for m in marks if m["inferences"] == since), None)
    if first is None or first is marks[-1]:
        return "n/a"
    return round(marks[-1]["tree_rss_mib"] - first["tree_rss_mib"], 1)


def soak_phase(args: argparse.Namespace, work: Path, deadline: float | None) -> dict:
    """``args.soak`` banked inferences in a row (fewer if ``deadline`` comes first)."""
    plan = load_plan(args.model)
    srv = Server(work / "soak", args.model, args.soak_concurrency, args.session_memory)
    bank = srv.dir / "client"
    st: dict = {
        "not_exact": 0,
        "other_class": 0,
        "max_abs_diff": 0,
        "not_online": 0,
        "errors": Counter(),
        "marks": [],
    }
    done, capped, t0 = 0, None, time.monotonic()
    try:
        srv.start()
        t0 = time.monotonic()  # the estimate below counts sessions, not the server's start
        st["marks"].append(_mark(srv.proc.pid, 0, t0))
        while done < args.soak:
            k = 1 if done == 0 else min(SOAK_BATCH, args.soak - done)
            if deadline is not None and done:
                fit = int((deadline - time.monotonic()) / ((time.monotonic() - t0) / done))
                if fit < 1:
                    capped = f"capped by --time-budget {args.time_budget:g} min"
                    break
                k = min(k, fit)
            preprocess(srv.port, bank, k)
            _soak_batch(plan, srv, bank, range(done, done + k), st, t0)
            done += k
        if st["marks"][-1]["inferences"] != done:
            st["marks"].append(_mark(srv.proc.pid, done, t0))
        st["server_alive"] = srv.alive()
    finally:
        srv.stop()
    m = st["marks"]
    return st | {
        "output_scale": plan.output_scale,
        "requested": args.soak,
        "done": done,
        "capped": capped,
        "wall_s": round(time.monotonic() - t0, 1),
        "per_inference_s": round((time.monotonic() - t0) / max(done, 1), 2),
        "rss_growth_mib": round(m[-1]["tree_rss_mib"] - m[0]["tree_rss_mib"], 1),
        "rss_growth_after_first_mib": _growth(m, 1),
        "rss_growth_after_first_50_mib": _growth(m, 50),
        "fds_start": m[0]["fds"],
        "fds_end": m[-1]["fds"],
    }


# ---- report ---------------------------------------------------------------------------------
def _md(rows: list[list[Any]]) -> str:
    """A Markdown table; the first row is the header."""
    cell = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    lines = ["| " + " | ".join(cell[0]) + " |", "|" + "---|" * len(cell[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cell[1:]])


def _mib(v: float) -> str:
    return f"{v / MIB:,.0f}"


def main_table(r: dict) -> str:
    h, acc, pk = r["honest"], r["accounting"], r["peaks"]
    lat = h["latency_s"]
    rows = [
        ["measure", "value"],
        ["honest inferences completed / expected", f"{h['completed']} / {h['expected']}"],
        ["equal to Plan.reference exactly", f"{h['exact']} / {h['expected']}"],
        ["same class as Plan.reference", f"{h['same_class']} / {h['expected']}"],
        ["largest |output - reference| (logits)", f"{h['max_abs_diff_logits']:g}"],
        ["ran on a banked session (online mode)", f"{h['online']} / {h['expected']}"],
        ["honest latency p50 / max (s)", f"{lat.get('p50', '-')} / {lat.get('max', '-')}"],
        ["honest errors", dict(h["errors"]) or "none"],
        [
            "server bank: ready before -> after (taken)",
            f"{acc['server_ready_before']} -> {acc['server_ready_after']} ({acc['server_taken']})",
        ],
        [
            "client sessions taken: honest + attackers",
            f"{acc['honest_taken']} + {acc['attackers_taken']}",
        ],
        ["server log: sessions served by mode", acc["served_by_mode"]],
        ["replays refused", f"{acc['replays_refused']} / {acc['replays']}"],
        ["tmp-/consumed- leftovers in the banks", acc["leftovers"]],
        ["server tree peak RSS sum / PSS sum (MiB)", f"{_mib(pk['rss'])} / {_mib(pk['pss'])}"],
        ["largest single-process peak RSS, VmHWM (MiB)", _mib(pk["hwm"])],
        ["server tree peak processes", pk["procs"]],
        [
            "server temp files peak (at start) (MiB)",
            f"{pk['tmp'] / MIB:,.1f} ({r['tmp_at_start'] / MIB:,.1f})",
        ],
        [
            "bank disk peak: server / clients (MiB)",
            f"{_mib(pk['server_bank'])} / {_mib(pk['client_banks'])}",
        ],
        ["server alive at the end", r["server_alive"]],
        [
            "preprocessing / honest load / load+attacks wall (s)",
            f"{r['preprocess_wall_s']} / {r['honest_wall_s']} / {r['load_wall_s']}",
        ],
    ]
    return _md(rows)


def hostile_table(rows: list[dict]) -> str:
    head = "attack|n|client saw|server logged|max s|tree RSS peak MiB|1-process HWM MiB|"
    keys = ("attack", "n", "client_saw", "server_logged", "max_s", "rss_peak_mib", "hwm_peak_mib")
    out = [(head + "tmp peak MiB|streamed").split("|")]
    out += [[r[k] for k in keys] + [r["tmp_peak_mib"], "; ".join(r.get("sent", []))] for r in rows]
    return _md(out)


def soak_table(s: dict) -> str:
    rows = [["inferences", "t (s)", "server tree RSS MiB", "serve process RSS MiB", "open fds"]]
    rows += [
        [m["inferences"], m["t_s"], m["tree_rss_mib"], m["serve_rss_mib"], m["fds"]]
        for m in s["marks"]
    ]
    lines = [
        _md(rows),
        "",
        f"- done {s['done']} of {s['requested']}" + (f" ({s['capped']})" if s["capped"] else ""),
        f"- {s['per_inference_s']} s per inference, preprocessing included; wall {s['wall_s']} s",
        f"- server tree RSS growth, start -> end: {s['rss_growth_mib']} MiB; after the 1st "
        f"inference -> end: {s['rss_growth_after_first_mib']} MiB; after the 50th -> end: "
        f"{s['rss_growth_after_first_50_mib']} MiB; open fds {s['fds_start']} -> {s['fds_end']}",
        f"- outputs not equal to the reference {s['not_exact']} (largest difference "
        f"{s['max_abs_diff'] / 2 ** s['output_scale']:g} in logits), other class than the "
        f"reference {s['other_class']}, not banked {s['not_online']}, errors "
        f"{dict(s['errors']) or 'none'}; server alive at the end: {s['server_alive']}",
    ]
    return "\n".join(lines)


def report(out: dict) -> str:
    parts = [
        f"## hostile_bench: {out['config']}",
        "",
        main_table(out["main"]),
        "",
        "### Hostile attempts (deduplicated)",
        "",
        hostile_table(out["main"]["attacks"]),
    ]
    if out.get("soak"):
        parts += ["", "### Soak", "", soak_table(out["soak"])]
    if out.get("soak_error"):
        parts += ["", "### Soak", "", f"The soak failed: {out['soak_error']}"]
    checks = {**out["main"]["accounting"]["checks"], **out.get("soak_checks", {})}
    parts += ["", "### Checks", ""]
    parts += [f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items()]
    parts += ["", f"Total wall time {out['wall_s']} s."]
    return "\n".join(parts)


def summarize_main(args: argparse.Namespace, raw: dict) -> dict:
    by_port, served = server_log_by_port(raw.pop("server_log"))
    refs = raw.pop("refs")
    expected = args.honest * args.per_client
    honest = honest_summary(raw.pop("honest"), refs, expected, raw["output_scale"])
    attempts = raw.pop("hostile")
    rows = hostile_rows(attempts, by_port)
    acc = accounting(raw, honest, attempts, served)
    return raw | {"honest": honest, "attacks": rows, "attempts": attempts, "accounting": acc}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default-approx", help="built-in name or checkpoint")
    ap.add_argument("--honest", type=int, default=4, help="honest client processes")
    ap.add_argument("--per-client", type=int, default=5, help="banked inferences each")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every attack")
    ap.add_argument("--hostile-threads", type=int, default=2)
    ap.add_argument("--attack-timeout", type=float, default=20.0, help="seconds an attack waits")
    ap.add_argument("--concurrency", type=int, default=2, help="main server's --concurrency")
    ap.add_argument(
        "--session-memory",
        type=float,
        default=0.0,
        help="GiB, passed to safenet serve (0: not passed, the server's default cap applies)",
    )
    ap.add_argument("--soak", type=int, default=300, help="banked inferences in a row")
    ap.add_argument("--soak-concurrency", type=int, default=1)
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument(
        "--time-budget",
        type=float,
        default=20.0,
        help="minutes for the whole run; caps the soak (0: no cap)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where banks go (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    return ap.parse_args(argv)


def run_soak(args: argparse.Namespace, work: Path, t0: float) -> dict:
    """The soak and its checks; a failure is reported, not raised (phase 1 stands)."""
    deadline = t0 + 60 * args.time_budget - 30 if args.time_budget else None
    try:
        soak = soak_phase(args, work, deadline)
    except Exception as e:
        return {"soak_error": f"{type(e).__name__}: {e}"}
    no_errors = soak["not_online"] == sum(soak["errors"].values()) == 0
    checks = {
        "soak: every prediction equals the reference's": soak["other_class"] == 0,
        "soak: every inference banked, no errors": no_errors,
        "soak: server alive at the end": soak["server_alive"],
    }
    if exact_promised(load_plan(args.model)):
        checks["soak: every output equals the reference exactly"] = soak["not_exact"] == 0
    return {"soak": soak, "soak_checks": checks}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hostile_bench-", dir=args.workdir))
    mem = f"{args.session_memory:g} GiB" if args.session_memory else "the server's default"
    out: dict[str, Any] = {
        "config": f"{args.model}, server concurrency {args.concurrency}, session memory {mem}, "
        f"{args.honest} honest x {args.per_client}, {args.rounds} attack rounds",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
    }
    try:
        out["main"] = summarize_main(args, main_phase(args, work))
        if not args.skip_soak and args.soak > 0:
            out |= run_soak(args, work, t0)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    path = args.json or Path(tempfile.gettempdir()) / f"hostile_bench-{int(time.time())}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(report(out))
    print(f"\nJSON: {path}" + (f"; work folder kept: {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
