"""Zygote side of one job: relay the child's records to the trusted side and enforce the job's limits from
outside.

Runs inside the sandbox in the zygote, never in the child, so nothing a sample does (catching the timeout
exception, ignoring, blocking or re-arming timer signals, slow ``__del__`` or conversion hooks, threads)
reaches it. Standalone (no ``rewards`` imports): it is bound read-only into the sandbox next to
``_zygote.py``.

CPU accounting. The child writes one record line per finished step (the load, then each test) into a pipe that
only this job's child holds. The zygote reads the child's process CPU clock (any process in the pid namespace
can read another's) each time it reads records. A *window* is the CPU between two such readings; it may use at
most the sum of the CPU limits of the steps whose records arrived in it, plus the limit of the step in
progress (with ``TOLERANCE``). When the zygote reads promptly a window holds one step, so the limit is per
test; when it is late (a busy machine), the steps read together share their limits, so an honest sample never
times out because the zygote was slow. A window over its allowance kills the child and its records are not
forwarded (the tests count as timed out). The same check runs while the child computes, so a test that never
returns is killed at ``limit * (1 + TOLERANCE[0]) + TOLERANCE[1]`` of CPU. The sample's total CPU budget and
wall-clock deadline are enforced here too; ``RLIMIT_CPU`` set in the child is the kernel's backstop.
"""

from __future__ import annotations

import os
import re
import select
import signal
import struct
import time

EXIT_CHANNEL = 86  # the harness could not write to its own result channel
EXIT_SETUP = 87  # the harness failed before running any sample code (fresh scratch mounts, capabilities)
MAX_LINE = 3 * 65536 + 512  # longest record an honest harness writes (a 64 KB value, JSON-escaped)
TOLERANCE = (0.10, 0.05)  # relative, absolute (s): room for the in-child timer to report a timeout first
EXTRA_LINES = 8
MIN_BATCH_S = 0.001  # long jobs: at most one relay wake-up per millisecond (records read in batches)
BATCH_AFTER_LINES = 64  # short jobs never wait: the wait would only add to their latency
_TEST_RECORD = re.compile(rb"\[(0|[1-9][0-9]{0,8}),(0|[1-9][0-9]{0,8}),")
_CPUCLOCK_SCHED = 2


def send_frame(kind: bytes, data: bytes) -> None:
    """One frame to the trusted side on fd 1: kind byte, 4-byte big-endian length, data."""
    view = memoryview(kind + struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(1, view):]


def next_allowance(limits: list[list[float]], s: int, i: int) -> float:
    """CPU limit of the step the harness runs after test (s, i): test (s, i + 1), or (after a stop-on-error
    break) the first test of the next non-empty set; (-1, -1) stands for the load step."""
    cands = [limits[s][i + 1]] if 0 <= s < len(limits) and i + 1 < len(limits[s]) else []
    for t in range(s + 1, len(limits)):
        if limits[t]:
            cands.append(limits[t][0])
            break
    return max(cands, default=0.0)


def _over(used: float, allowed: float) -> bool:
    return used > allowed * (1 + TOLERANCE[0]) + TOLERANCE[1]


class _Job:
    """Accounting state of one child (see the module docstring)."""

    def __init__(self, pid: int, hdr: dict) -> None:
        self.pid, self.limits = pid, hdr["limits"]
        self.budget = hdr["cpu"]
        # one record per test plus the load record; a few more so that a forged duplicate reads as a protocol
        # violation rather than an overflow (both void the sample)
        self.max_lines = sum(map(len, self.limits)) + 1 + EXTRA_LINES
        self.clock = ((~pid) << 3) | _CPUCLOCK_SCHED  # the child's process CPU clock (MAKE_PROCESS_CPUCLOCK)
        self.allow, self.base, self.lines = hdr["load"], 0.0, 0
        self.final: float | None = None  # CPU from wait4 once the child is gone
        self.partial = b""
        self.reason: str | None = None  # "limit" | "deadline" | "overflow"

    def cpu(self) -> float:
        if self.final is not None:
            return self.final
        try:
            return time.clock_gettime(self.clock)
        except OSError:  # exited but not yet reaped: wait4 gives the final figure
            return self.base

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            if self.final is None:
                os.kill(self.pid, signal.SIGKILL)

    def check(self) -> float:
        """Kill when the step in progress or the whole sample is over its CPU; returns seconds until the next
        check is needed (assuming every core runs the child's threads)."""
        c = self.cpu()
        if _over(c - self.base, self.allow):
            self.stop("limit")
        elif c > self.budget + TOLERANCE[1]:
            self.stop("deadline")
        left = min(self.allow * (1 + TOLERANCE[0]) + TOLERANCE[1] - (c - self.base), self.budget - c)
        return max(left, 0.0)

    def take(self, data: bytes) -> None:
        """Account for and forward the complete lines in ``data`` (plus any earlier partial line)."""
        buf = self.partial + data
        cut = buf.rfind(b"\n") + 1
        self.partial = buf[cut:]
        if len(self.partial) > MAX_LINE:
            return self.stop("overflow")
        if not cut:
            return None
        chunk = buf[:cut]
        batch = chunk.split(b"\n")[:-1]
        self.lines += len(batch)
        if self.lines > self.max_lines or max(map(len, batch)) > MAX_LINE:
            return self.stop("overflow")
        allowed = 0.0
        for n, line in enumerate(batch, self.lines - len(batch) + 1):
            allowed += self.allow
            m = _TEST_RECORD.match(line)
            if n == 1:  # the load record: tests follow unless it reports a load error
                self.allow = next_allowance(self.limits, -1, -1) if line == b'["loaded"]' else 0.0
            else:  # a forged or garbled line earns no CPU (and voids the sample on the trusted side)
                self.allow = next_allowance(self.limits, int(m[1]), int(m[2])) if m else 0.0
        c = self.cpu()
        if _over(c - self.base, allowed + self.allow):
            return self.stop("limit")
        self.base = min(c, self.base + allowed)
        send_frame(b"R", chunk)
        return None


def supervise(pid: int, chan: int, ack_r: int, hdr: dict, ncpu: int) -> dict:
    """Relay child ``pid``'s records from ``chan`` and enforce its limits until it has exited; returns the
    job's status for the trusted side (exit code, signal, why the zygote killed it, payload ack, CPU
    seconds)."""
    job = _Job(pid, hdr)
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + hdr["wall"]
    acked, ack_open, eof, status, last_read = False, True, False, 0, 0.0
    while job.final is None or not eof:
        if job.final is None:
            left = job.check() / ncpu if job.reason is None else 1.0
            if time.monotonic() >= deadline:
                job.stop("deadline")
            left = min(max(left, 0.002), max(deadline - time.monotonic(), 0.0) + 0.002)
        else:
            left = None  # the child is gone: drain the pipe to EOF
        fds = [pidfd] * (job.final is None) + [chan] * (not eof) + [ack_r] * ack_open
        ready, _, _ = select.select(fds, [], [], left)
        if ack_r in ready:  # one byte once the child has read its job, or EOF if it died first
            acked, ack_open = os.read(ack_r, 1) == b"1", False
        if pidfd in ready:
            _, status, ru = os.wait4(pid, 0)
            job.final = ru.ru_utime + ru.ru_stime
        if chan in ready:
            data = os.read(chan, 1 << 20)
            if not data:
                eof = True
            elif job.reason is None:
                job.take(data)
                now = time.monotonic()
                if now - last_read < MIN_BATCH_S and job.final is None and job.lines > BATCH_AFTER_LINES:
                    select.select([pidfd], [], [], MIN_BATCH_S)
                last_read = now
    if job.reason is None and job.partial:  # the child died mid-line: forwarded, the judge rejects it
        send_frame(b"R", job.partial + b"\n")
    if job.reason is None and _over(job.final - job.base, job.allow):
        job.reason = "limit"  # the tail after the last forwarded record overran (e.g. slow finalizers)
    os.close(pidfd)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return {"exit": code, "sig": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "deadline": job.reason == "deadline", "limit": job.reason == "limit",
            "overflow": job.reason == "overflow", "ack": acked, "cpu": round(job.final, 4),
            "channel_error": code == EXIT_CHANNEL, "setup_error": code == EXIT_SETUP}


# ------------------------------------------------------------------------------------------------------------
# the rlimits fallback has no private mounts: its scratch dir is emptied after every job


def wipe_tree(top: str) -> dict[str, int]:
    """Delete everything below ``top`` (``top`` itself stays); returns {"dirs": directories scanned,
    "removed": entries removed}. Linear: each directory is listed once, all its files are unlinked in that
    pass and its subdirectories queued (re-listing a directory after each removed child made 30,000 siblings
    quadratic). Iterative and relative-path based, because a sample may leave directories nested 100,000 deep
    (recursive rmtree overflows the stack, absolute paths exceed PATH_MAX), mode-000 directories, or a
    chmod-ed ``top``. Symlinks are never followed. Raises OSError when something cannot be removed. Walks by
    changing the working directory (restored on return), so only call it in a single-threaded process."""
    prev = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    os.chdir(top)
    stats = {"dirs": 1, "removed": 0}
    stack: list[tuple[str, list[str]]] = [("", _clear_files(stats))]  # (name, subdirectories still to visit)
    try:
        while True:
            name, todo = stack[-1]
            if todo:
                sub = todo.pop()
                os.chmod(sub, 0o700)  # a directory (never a symlink), as listed
                os.chdir(sub)
                stack.append((sub, _clear_files(stats)))
                stats["dirs"] += 1
            elif len(stack) == 1:
                return stats
            else:
                stack.pop()
                os.chdir("..")
                os.rmdir(name)
                stats["removed"] += 1
    finally:
        os.fchdir(prev)
        os.close(prev)


def _clear_files(stats: dict) -> list[str]:
    """Unlink every non-directory in the working directory; return the names of its subdirectories."""
    subdirs = []
    with os.scandir(".") as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                os.unlink(entry.name)
                stats["removed"] += 1
    return subdirs
