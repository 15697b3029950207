"""Where the search's trials run: one after another in this process, or in parallel on Ray Tune.

A runner maps a function over a list of jobs and returns the results in job order
(:meth:`SequentialRunner.map`, :meth:`RayRunner.map`); the search calls it once per
generation with one job per member. Everything random is decided by the caller before
dispatch (the search draws each member's training seed), so the runner changes where a trial
runs, never what it computes.

:class:`RayRunner` (``pip install 'safenet[ray]'``) runs one Tune trial per job: a
``tune.Tuner`` per call with a grid over the job indices, ``cpus_per_trial`` CPUs and as many
torch threads per trial. The function (for the search, the bound method that carries the
teacher and the training data) goes to Ray's object store once (``tune.with_parameters``), not
once per trial; jobs and results travel through a small mailbox actor that the driver owns, so
no storage shared between machines is needed and trials may run anywhere on a cluster. Ray
starts locally on all of this machine's CPUs or connects to ``address``; a runner that started
Ray shuts it down when closed. Tune's progress output is silenced; a failed trial raises
:class:`TrialFailed` in the driver.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = [
    "RUNNERS",
    "RayRunner",
    "RayUnavailable",
    "Runner",
    "SequentialRunner",
    "TrialFailed",
    "make_runner",
    "ray_available",
]

RUNNERS = ("auto", "sequential", "ray")
INSTALL_HINT = "pip install 'safenet[ray]'"


class RayUnavailable(ImportError):
    """The Ray runner was asked for but Ray Tune is not installed."""


class TrialFailed(RuntimeError):
    """A trial raised (or its worker died) on Ray; the message carries the trial's error."""


class Runner(Protocol):
    """Maps ``fn`` over ``jobs`` (each a tuple of positional arguments), results in order."""

    def describe(self) -> str: ...

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> list[Any]: ...


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise RayUnavailable(f"the ray runner needs Ray Tune: {INSTALL_HINT} ({e})") from e
    return ray, tune


def ray_available() -> bool:
    """Whether Ray Tune can be imported."""
    try:
        _import_ray()
    except RayUnavailable:
        return False
    return True


class SequentialRunner:
    """Calls the function on each job in turn, in this process (torch threads as they are)."""

    def describe(self) -> str:
        """One line for the log."""
        return "sequential (one trial after another in this process)"

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``[fn(*job) for job in jobs]``."""
        return [fn(*job) for job in jobs]

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> SequentialRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Mailbox:
    """Jobs out to the trials and results back to the driver (a Ray actor the driver owns)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, ...]] = []
        self.results: dict[int, Any] = {}

    def set_jobs(self, jobs: list[tuple[Any, ...]]) -> None:
        self.jobs, self.results = jobs, {}

    def job(self, i: int) -> tuple[Any, ...]:
        return self.jobs[i]

    def put(self, i: int, result: Any) -> None:
        self.results[i] = result

    def take(self) -> dict[int, Any]:
        out, self.results, self.jobs = self.results, {}, []
        return out


def _trial(config: dict[str, Any], fn: Callable[..., Any], mailbox: Any, threads: int) -> dict:
    """One Tune trial: fetch job ``config["job"]``, run it, post the result to the mailbox."""
    import ray
    import torch

    torch.set_num_threads(threads)
    i = config["job"]
    result = fn(*ray.get(mailbox.job.remote(i)))
    ray.get(mailbox.put.remote(i, result))
    return {"job": i}


@contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's legacy reporter, which ``verbose=0`` silences (the new one still prints a box)."""
    key = "RAY_AIR_NEW_OUTPUT"
    old = os.environ.get(key)
    os.environ.setdefault(key, "0")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)


class RayRunner:
    """One Ray Tune trial per job, in parallel: local Ray by default, or a cluster's address.

    Use as a context manager (or call :meth:`close`); Ray starts on the first :meth:`map`.
    """

    def __init__(self, address: str | None = None, cpus_per_trial: int = 1) -> None:
        if cpus_per_trial < 1:
            raise ValueError(f"cpus_per_trial must be at least 1, got {cpus_per_trial}")
        self.ray, self.tune = _import_ray()
        self.address, self.cpus_per_trial = address, cpus_per_trial
        self._started = False
        self._mailbox: Any = None
        self._dir: str | None = None
        self._fn: Callable[..., Any] | None = None
        self._trainable: Any = None
        self._calls = 0

    def describe(self) -> str:
        """One line for the log."""
        where = f"cluster at {self.address}" if self.address else f"local, {os.cpu_count()} CPUs"
        return f"ray (Ray Tune trials in parallel: {where}, {self.cpus_per_trial} per trial)"

    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            quiet = dict(include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)  # fmt: skip
            if self.address is None:
                ray.init(num_cpus=os.cpu_count(), **quiet)
            else:
                ray.init(address=self.address, **quiet)
            self._started = True
        self._mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
        self._dir = tempfile.mkdtemp(prefix="safenet-tune-")

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``fn(*job)`` for every job as parallel Tune trials; results in job order.

        ``fn`` is put into the object store once and reused while the same function comes
        back (a bound method compares equal when its object is the same).
        """
        if not jobs:
            return []
        ray, tune = self.ray, self.tune
        if self._mailbox is None:
            self._start()
        if self._trainable is None or fn != self._fn:
            shared = tune.with_parameters(
                _trial, fn=fn, mailbox=self._mailbox, threads=self.cpus_per_trial
            )
            self._trainable = tune.with_resources(shared, {"cpu": self.cpus_per_trial})
            self._fn = fn
        ray.get(self._mailbox.set_jobs.remote(list(jobs)))
        self._calls += 1
        run_config = getattr(tune, "RunConfig", None) or ray.train.RunConfig
        failure_config = getattr(tune, "FailureConfig", None) or ray.train.FailureConfig
        tuner = tune.Tuner(
            self._trainable,
            param_space={"job": tune.grid_search(list(range(len(jobs))))},
            run_config=run_config(
                name=f"map-{self._calls}", storage_path=self._dir, verbose=0,
                failure_config=failure_config(max_failures=0),
            ),
        )  # fmt: skip
        with _quiet_tune():
            grid = tuner.fit()
        results = ray.get(self._mailbox.take.remote())
        failed = [r for r in grid if r.error is not None]
        if failed:
            err = failed[0].error
            cause = getattr(err, "cause", None) or err  # the trial's own exception
            raise TrialFailed(
                f"{len(failed)} of {len(jobs)} Ray Tune trials failed; job "
                f"{failed[0].config.get('job')}: {type(cause).__name__}: {cause}"
            ) from err
        missing = [i for i in range(len(jobs)) if i not in results]
        if missing:
            raise TrialFailed(f"Ray Tune trials for jobs {missing} finished without a result")
        return [results[i] for i in range(len(jobs))]

    def close(self) -> None:
        """Stop the mailbox, remove Tune's scratch folder, shut Ray down if it started here."""
        if self._mailbox is not None:
            self.ray.kill(self._mailbox)
            self._mailbox = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._fn = self._trainable = None
        if self._started:
            self.ray.shutdown()
            self._started = False

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_runner(
    kind: str = "auto", address: str | None = None, cpus_per_trial: int = 1
) -> SequentialRunner | RayRunner:
    """``"sequential"``, ``"ray"`` (raises :class:`RayUnavailable` without Ray Tune), or
    ``"auto"``: Ray when it is installed (or an ``address`` is given), else sequential."""
    if kind not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {kind!r}")
    if kind == "auto":
        kind = "ray" if address is not None or ray_available() else "sequential"
    if kind == "sequential":
        return SequentialRunner()
    return RayRunner(address, cpus_per_trial)
