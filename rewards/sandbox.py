"""Sandbox workers: one bubblewrap + fork-server (``_zygote.py``) per core, driven from the trusted side.

Why this shape: starting bubblewrap and an interpreter costs ~30 ms, forking a warm zygote ~1.5 ms, so each
core gets one long-lived sandboxed zygote that forks one child per completion (see ``docs/rewards.md``). The
trusted side only ever parses size-capped JSON lines from the sandbox; expected outputs never enter it.

Contract of :meth:`SandboxPool.run`: every submitted job yields exactly one :class:`RawResult`; infrastructure
failures (zygote or bubblewrap died, protocol desync) restart the worker and retry the job ``max_retries``
times and are then reported as ``RawResult(infra_error=...)`` - never silently dropped, never turned into a
score.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future

from ._supervise import EXTRA_LINES, MAX_LINE
from .isolation import (  # noqa: F401 - re-exported: the sandbox API lives here
    ZYGOTE_PATH,
    ChannelError,
    InfraError,
    Job,
    RawResult,
    SandboxConfig,
    _package_dirs,
    _sandbox_env,
    bwrap_argv,
    probe_bwrap,
    resolve_isolation,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------
# one worker


def _frame(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


# the zygote relays at most one 1 MB read plus one partial line at a time
_MAX_FRAME = (1 << 20) + MAX_LINE + 16


class Worker:
    """One sandboxed zygote. Not thread-safe: owned by a single pool thread (bwrap's --die-with-parent is tied
    to the thread that started it).

    Everything comes back on the zygote's stdout as frames (``_zygote`` docstring): relayed record lines ("R")
    and one status per job ("S"). What one job may leave in this process is bounded whatever its sample
    writes: at most one record per test plus the load record, each at most ``MAX_LINE`` bytes, and at most
    ``cfg.max_result_bytes`` in all; anything beyond is an output overflow (the sample scores 0)."""

    def __init__(self, cfg: SandboxConfig, isolation: str) -> None:
        self.cfg, self.isolation = cfg, isolation
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.starts = 0

    def start(self) -> None:
        self.close()
        if self.isolation == "bwrap":
            argv, env, cwd = bwrap_argv(self.cfg), None, None
        else:
            argv, env, cwd = self._fallback_argv()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        self.starts += 1
        for f in (self.proc.stdin, self.proc.stdout):
            os.set_blocking(f.fileno(), False)
        self._out = bytearray()
        kind, data = self._next_frame(time.monotonic() + self.cfg.start_timeout_s)
        if kind != b"S" or not json.loads(data).get("ready"):
            raise InfraError(f"zygote did not start: {bytes(data[:200])!r}")

    def _fallback_argv(self) -> tuple[list[str], dict, str]:
        self._tmp = tempfile.TemporaryDirectory(prefix="lockstep-sandbox-")
        site = os.path.join(self._tmp.name, "site")
        work = os.path.join(self._tmp.name, "work")
        os.makedirs(site)
        os.makedirs(work, mode=0o700)
        for host, name in _package_dirs(self.cfg.packages):
            os.symlink(host, os.path.join(site, name))
        argv = [os.path.realpath(sys.executable), "-S", "-s", "-P", "-B", str(ZYGOTE_PATH), work,
                "1" if self.cfg.seccomp else "0", "wipe", ""]
        return argv, _sandbox_env(self.cfg, site), work

    def _read_some(self, timeout: float) -> None:
        out = self.proc.stdout.fileno()
        ready, _, _ = select.select([out], [], [], max(timeout, 0.0))
        if ready:
            chunk = os.read(out, 1 << 20)
            if not chunk:
                raise InfraError(f"zygote exited (rc={self.proc.poll()})")
            self._out += chunk

    def _frame_ready(self) -> tuple[bytes, bytes] | None:
        if len(self._out) < 5:
            return None
        (n,) = struct.unpack(">I", self._out[1:5])
        if n > _MAX_FRAME or self._out[:1] not in (b"R", b"S"):
            raise InfraError("zygote protocol desync")
        if len(self._out) < 5 + n:
            return None
        kind, data = bytes(self._out[:1]), bytes(self._out[5:5 + n])
        del self._out[:5 + n]
        return kind, data

    def _next_frame(self, deadline: float) -> tuple[bytes, bytes]:
        while (frame := self._frame_ready()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InfraError("zygote status timed out")
            self._read_some(left)
        return frame

    def run(self, job: Job) -> RawResult:
        """Send one job and collect its raw records; raises InfraError when the machinery failed."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        n_tests = sum(len(lim) for lim in job.limits)
        hdr = {"cpu": job.cpu_budget_s, "wall": job.wall_budget_s, "mem": self.cfg.memory_bytes,
               "fsize": self.cfg.file_size_bytes, "nofile": self.cfg.open_files, "nproc": self.cfg.processes,
               "limits": job.limits, "load": job.load_limit_s}
        payload = {"code": job.code, "entry_point": job.entry_point, "mode": job.mode, "values": job.values,
                   "timing": job.timing, "stop_on_error": job.stop_on_error, "kind": job.kind}
        import marshal  # trusted -> sandbox direction only; the sandbox never sends marshal back

        pending = memoryview(_frame(json.dumps(hdr).encode()) + _frame(marshal.dumps(payload, 2))
                             + _frame(job.inputs))
        stdin = self.proc.stdin.fileno()
        records: list[bytes] = []
        total, overflow, status = 0, False, None
        deadline = time.monotonic() + job.wall_budget_s + 30.0
        while status is None:
            frame = self._frame_ready()
            if frame is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InfraError("zygote did not report within its deadline")
                out = self.proc.stdout.fileno()
                ready, writable, _ = select.select([out], [stdin] if pending else [], [], left)
                if writable:
                    try:
                        pending = pending[os.write(stdin, pending[: 1 << 20]):]
                    except BrokenPipeError as exc:
                        raise InfraError("zygote closed its input") from exc
                if ready:
                    self._read_some(0)
                continue
            kind, data = frame
            if kind == b"S":
                status = json.loads(data)
            elif not overflow:
                lines = data.split(b"\n")
                total += len(data)
                if lines[-1] or len(records) + len(lines) - 1 > n_tests + 1 + EXTRA_LINES \
                        or total > self.cfg.max_result_bytes or max(map(len, lines)) > MAX_LINE:
                    overflow, records = True, []
                else:
                    records += lines[:-1]
        if pending or not status.get("ack") or status.get("setup_error"):
            raise InfraError("the sandbox child died before reading its job or could not be prepared")
        if status.get("channel_error"):
            raise ChannelError("the sandbox child could not write its records")
        if status.get("clean") is False:
            # the zygote could not empty its scratch dirs after this (complete) job and has retired; the job's
            # records stand, and the next job gets a fresh sandbox
            log.warning("sandbox scratch dirs could not be wiped; recycling the worker")
            self.close()
        return RawResult(records=records, status=status, overflow=overflow or bool(status.get("overflow")))

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    f.close()
            self.proc = None
        if self._tmp is not None:
            try:  # the zygote empties it after every job; this removes what a killed zygote left
                self._tmp.cleanup()
            except Exception:  # noqa: BLE001 - e.g. a tree too deep for rmtree; never kill the pool thread
                # wipe_tree changes the working directory: run it in its own (single-threaded) process
                code = ("import sys; sys.path.insert(0, sys.argv[1]); import _supervise; "
                        "_supervise.wipe_tree(sys.argv[2])")
                proc = subprocess.run([sys.executable, "-S", "-c", code, str(ZYGOTE_PATH.parent),
                                       self._tmp.name], capture_output=True, timeout=300)
                if proc.returncode != 0:
                    log.warning("could not remove sandbox dir %s: %s", self._tmp.name, proc.stderr[-300:])
                with contextlib.suppress(OSError):
                    os.rmdir(self._tmp.name)
            self._tmp = None


# ------------------------------------------------------------------------------------------------------------
# pool


class SandboxPool:
    """``workers`` sandboxed zygotes (default: all cores), each driven by its own thread.

    ``submit`` returns a Future[RawResult]; the queue is unbounded but jobs are small (task inputs are shared
    bytes objects), so 10,000 queued completions cost a few MB on the trusted side.
    """

    def __init__(self, workers: int | None = None, cfg: SandboxConfig | None = None) -> None:
        self.cfg = cfg or SandboxConfig()
        self.isolation = resolve_isolation(self.cfg)
        self.n_workers = workers or os.cpu_count() or 1
        self._queue: queue.Queue = queue.Queue()
        self.stats = {"jobs": 0, "infra_failures": 0, "infra_errors_reported": 0, "restarts": 0,
                      "recycled": 0, "sample_faults": 0}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, name=f"sandbox-{i}", daemon=True)
                         for i in range(self.n_workers)]
        self._ready = threading.Barrier(self.n_workers + 1)
        self._start_errors: list[str] = []
        self._closed = False
        self.workers: list[Worker] = []
        for t in self._threads:
            t.start()
        self._ready.wait()
        if len(self._start_errors) == self.n_workers:
            self.close()
            raise RuntimeError(f"no sandbox worker could start: {self._start_errors[0]}")

    def submit(self, job: Job) -> Future:
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        fut: Future = Future()
        self._queue.put((job, fut))
        return fut

    def run(self, jobs: list[Job]) -> list[RawResult]:
        return [f.result() for f in [self.submit(j) for j in jobs]]

    def _loop(self) -> None:
        worker = Worker(self.cfg, self.isolation)
        with self._lock:
            self.workers.append(worker)
        try:
            worker.start()
        except Exception as exc:  # noqa: BLE001 - reported below; the pool refuses when no worker starts
            self._start_errors.append(str(exc))
        self._ready.wait()
        while True:
            item = self._queue.get()
            if item is None:
                break
            job, fut = item
            try:
                res = self._run_with_retries(worker, job)
            except Exception as exc:  # noqa: BLE001 - a job must never be lost with its thread
                res = RawResult(records=[], status={}, infra_error=f"pool error: {type(exc).__name__}: {exc}")
                with self._lock:
                    self.stats["infra_errors_reported"] += 1
            fut.set_result(res)
        worker.close()

    def _run_with_retries(self, worker: Worker, job: Job) -> RawResult:
        err, channel_only = "", True
        for attempt in range(1, self.cfg.max_retries + 2):
            try:
                res = worker.run(job)
                res.attempts = attempt
                with self._lock:
                    self.stats["jobs"] += 1
                    self.stats["recycled"] += res.status.get("clean") is False
                return res
            except Exception as exc:  # noqa: BLE001 - the job's outcome is judged later; this is machinery
                err = f"{type(exc).__name__}: {exc}"
                channel_only = channel_only and isinstance(exc, ChannelError)
                log.warning("sandbox infrastructure failure (attempt %d): %s", attempt, err)
                with self._lock:
                    self.stats["infra_failures"] += 1
                    self.stats["restarts"] += 1
                try:
                    worker.start()
                except Exception as start_exc:  # noqa: BLE001
                    err = f"{err}; restart failed: {start_exc}"
        if channel_only:  # the job's private channel failed on every attempt: its own sample broke it
            with self._lock:
                self.stats["sample_faults"] += 1
            return RawResult(records=[], status={}, sample_fault=err, attempts=self.cfg.max_retries + 1)
        with self._lock:
            self.stats["infra_errors_reported"] += 1
        return RawResult(records=[], status={}, infra_error=err, attempts=self.cfg.max_retries + 1)

    def close(self) -> None:
        """Finish queued jobs, then stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
