"""Fork-server that runs INSIDE the sandbox (bubblewrap or the rlimits-only fallback).

Executed as a standalone script
(``python -S -s -P -B _zygote.py WORK_DIR SECCOMP FRESH TMPFS_OPTS [SCRATCH..]``); it must not import anything
from the ``rewards`` package, which is not mounted in the sandbox, only its siblings ``_digest.py``,
``_supervise.py`` and ``_formats.py`` (the code-RL test runners). The trusted side imports it for
:func:`digest` / :func:`encode_value` (re-exported from ``_digest``), so that digests of caller-supplied
expected values are computed by the very same code that digests untrusted outputs.

Protocol (frames are a kind byte where noted, then a 4-byte big-endian length, then the bytes):
  parent -> zygote (fd 0): HEADER frame (JSON: rlimits, CPU limits, budgets), then PAYLOAD frame (marshal:
                           code, entry point, options) and INPUTS frame (marshal v2: list of input lists). The
                           zygote reads only the header; the forked child reads the payload and inputs, so no
                           job data ever lives in the zygote (a later child cannot scrape an earlier job's
                           data).
  child  -> zygote (a pipe created for this child alone): one JSON line per step:
        ["loaded"] | ["load_error", TypeName], then per test
        [set, i, "ok", digest_hex, value_or_null(, cpu_s)] | [set, i, "exc", TypeName] | [set, i, "timeout"]
  zygote -> parent (fd 1): "R" frames relaying the child's complete lines (see ``_supervise``: the zygote
        checks the CPU each window of lines used and stops relaying when it kills the child), then one "S"
        frame per job with its status (exit code / signal / why the zygote killed it / CPU seconds / payload
        ack).
Digests are never checked in the sandbox: expected values never enter it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import marshal
import math
import os
import resource
import select
import signal
import struct
import sys
import time

if __package__:  # imported by the trusted side
    from ._digest import DIGEST_BYTES, VALUE_CAP, _normalize, _plain, digest, encode_value, small  # noqa: F401
    from ._supervise import EXIT_CHANNEL, EXIT_SETUP, send_frame, supervise, wipe_tree
else:  # the sandboxed script: the siblings are bound next to it (-P keeps its directory off sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _digest import VALUE_CAP, digest, encode_value, small
    from _formats import exc_label, load_entry
    from _supervise import EXIT_CHANNEL, EXIT_SETUP, send_frame, supervise, wipe_tree

# ------------------------------------------------------------------------------------------------------------
# seccomp (libseccomp through ctypes; default allow, deny-list of process/network/IPC/namespace syscalls)

_ACT_ALLOW = 0x7FFF0000
_CLONE_THREAD = 0x00010000
_CMP_NE, _CMP_EQ, _CMP_MASKED_EQ = 1, 4, 7
# fcntl commands that make the kernel signal another process (SIGIO / F_SETSIG to an owner pid): a way around
# the kill() rule below. F_SETOWN, F_SETSIG, F_SETOWN_EX; ioctl FIOSETOWN / SIOCSPGRP do the same for
# sockets/ttys.
_FCNTL_SIGNALLING = (8, 10, 15)
_IOCTL_SIGNALLING = (0x8901, 0x8902)
# scheduling of OTHER processes (same uid inside the sandbox = the zygote, whose later children inherit it):
# nice 19 / SCHED_IDLE would make honest later samples hit their wall-clock limits.
_DENY_SCHED = ["setpriority", "sched_setscheduler", "sched_setparam", "sched_setattr", "sched_setaffinity",
               "ioprio_set", "migrate_pages", "move_pages", "process_madvise", "process_mrelease"]
_DENY_EPERM = ["fork", "vfork", "execve", "execveat", "socket", "socketpair", "connect", "bind", "listen",
               "accept", "accept4", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open",
               "pidfd_send_signal", "pidfd_getfd", "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd",
               "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink",
               "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr", "mount", "umount2",
               "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "keyctl",
               "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register", "tkill",
               "personality",
               # new mount API (the child drops its namespace-local CAP_SYS_ADMIN anyway) and handle-based
               # opens
               "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
               "open_by_handle_at",
               # pipes and memfds take inode numbers from kernel-wide counters: a sample could advance them to
               # signal a later sample (which would read st_ino of a new pipe); a sample needs neither
               "pipe", "pipe2", "memfd_create"]


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class Seccomp:
    """Builds the deny-list once (in the zygote); each child adds its own-pid rules and loads the filter.
    ``deny_list=False`` gives an empty allow-all filter to add rules to with :meth:`rule` (tests use it to
    emulate hosts whose container profile forbids user namespaces)."""

    def __init__(self, deny_list: bool = True) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.seccomp_init(_ACT_ALLOW)
        if not self.ctx:
            raise OSError("seccomp_init failed")
        if deny_list:
            self._deny_list()

    def _deny_list(self) -> None:
        for sc in _DENY_EPERM:
            self.rule(_errno_action(errno.EPERM), sc)
        self.rule(_errno_action(errno.ENOSYS), "clone3")  # glibc falls back to clone(), filtered below
        self.rule(_errno_action(errno.EPERM), "clone", (0, _CMP_MASKED_EQ, _CLONE_THREAD, 0))
        self.rule(_errno_action(errno.EPERM), "prlimit64", (0, _CMP_NE, 0, 0))
        for sc in _DENY_SCHED:
            self.rule(_errno_action(errno.EPERM), sc)
        for cmd in _FCNTL_SIGNALLING:
            self.rule(_errno_action(errno.EPERM), "fcntl", (1, _CMP_EQ, cmd, 0))
        for cmd in _IOCTL_SIGNALLING:
            self.rule(_errno_action(errno.EPERM), "ioctl", (1, _CMP_EQ, cmd, 0))

    def rule(self, action: int, name: str, *cmps: tuple) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # syscall unknown on this architecture
        arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name} failed")

    def load_for_child(self, pid: int) -> None:
        deny = _errno_action(errno.EPERM)
        self.rule(deny, "kill", (0, _CMP_NE, pid, 0))
        self.rule(deny, "tgkill", (0, _CMP_NE, pid, 0))
        self.rule(deny, "rt_sigqueueinfo", (0, _CMP_NE, pid, 0))
        self.rule(deny, "rt_tgsigqueueinfo", (0, _CMP_NE, pid, 0))
        self.load()

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load failed")



# ------------------------------------------------------------------------------------------------------------
# framing


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes:
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    return _read_exact(fd, n)


# ------------------------------------------------------------------------------------------------------------
# child: one completion against its test sets


class _TestTimeout(BaseException):
    pass


class _ChannelError(Exception):
    """The harness could not write to its own result channel."""


class _SetupError(Exception):
    """Preparing the child (fresh scratch mounts, dropping capabilities) failed: machinery, not the sample."""


def _on_timer(signum, frame):
    raise _TestTimeout


def _arm(cpu_s: float) -> None:
    """The in-child CPU timer: a courtesy that turns a slow test into a "timeout" record and lets the next
    test run. The sample can disable it; the zygote's accounting (``_supervise``) is what enforces the
    limit."""
    signal.setitimer(signal.ITIMER_PROF, cpu_s)


_CLONE_NEWNS, _MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x00020000, 2, 4, 0x4000, 1 << 18


def _fresh_scratch(libc, scratch: list[str], tmpfs_opts: str) -> None:
    """A private mount namespace with new, empty tmpfs mounts on the scratch dirs (bubblewrap mode; the zygote
    holds CAP_SYS_ADMIN of the sandbox's own user namespace for this). Nothing an earlier job wrote, metadata
    included (extended attributes, timestamps, the tmpfs inode counter), exists here, and the kernel frees all
    of it when this child exits: no wipe, so no sample can stall the worker with what it leaves behind."""
    if libc.unshare(_CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise _SetupError(f"private mount namespace: errno {ctypes.get_errno()}")
    for d in scratch:
        if libc.mount(b"tmpfs", d.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, tmpfs_opts.encode()) != 0:
            raise _SetupError(f"tmpfs on {d}: errno {ctypes.get_errno()}")


def _drop_capabilities(libc) -> None:
    """Empty the effective, permitted and inheritable sets (the ambient set follows): the sample runs without
    any capability, and with no_new_privs (set by seccomp) and execve denied it cannot regain one."""
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(hdr, data) != 0 or libc.capget(hdr, data) != 0 or any(data):
        raise _SetupError(f"could not drop capabilities: errno {ctypes.get_errno()}")


def _isolate(hdr: dict, chan: int, job_dir: str, seccomp: Seccomp | None) -> None:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, chan)
    os.closerange(chan + 1, 65536)
    os.chdir(job_dir)
    limits = [(resource.RLIMIT_AS, hdr["mem"]), (resource.RLIMIT_DATA, hdr["mem"]),
              (resource.RLIMIT_FSIZE, hdr["fsize"]), (resource.RLIMIT_NOFILE, hdr["nofile"]),
              (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, hdr["nproc"])]
    cpu = int(math.ceil(hdr["cpu"])) + 1
    limits.append((resource.RLIMIT_CPU, (cpu, cpu + 1)))
    for res, val in limits:
        soft, hard = val if isinstance(val, tuple) else (val, val)
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            if res != resource.RLIMIT_NPROC:
                raise
    if seccomp is not None:
        seccomp.load_for_child(os.getpid())


def _write_all(fd: int, data: bytes) -> None:
    """Write a whole record whatever the sample did to its own channel (O_NONBLOCK, a one-page pipe)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            try:
                select.select([], [fd], [], 1.0)
            except (OSError, ValueError) as exc:
                raise _ChannelError(str(exc)) from None
        except OSError as exc:  # e.g. the sample closed or replaced its channel fd
            raise _ChannelError(str(exc)) from None


def _type_name(exc: BaseException) -> str:
    """The exception's class name read from the type slot (a metaclass ``__name__`` property cannot run)."""
    return type.__dict__["__name__"].__get__(type(exc))[:64]


def _ok_line(s: int, i: int, out, payload: dict, t0: float) -> bytes:
    mode = payload["mode"]
    if mode == "not_none":
        out = out if type(out) is bool else out is not None
    elif mode == "set_eq":
        out = set(out)
    # stdio: the digest is of the whitespace-token form (what outputs too large to send whole are compared by)
    d = digest(" ".join(out.split()) if mode == "stdio" and type(out) is str else out)
    v = None
    if payload["values"] and small(out):
        v = json.dumps(encode_value(out), separators=(",", ":"))
        v = v if len(v) <= VALUE_CAP else None
    if v is None and not payload["timing"]:  # the common record, formatted without json (d is 32 hex digits)
        return b'[%d,%d,"ok","%s",null]\n' % (s, i, d.encode())
    rec = [s, i, "ok", d, v] + ([round(time.process_time() - t0, 6)] if payload["timing"] else [])
    return (json.dumps(rec, separators=(",", ":")) + "\n").encode()


def _run_tests(fn, hdr: dict, payload: dict, inputs: list, chan: int) -> None:
    """Every test, with the output conversion (untrusted code may run in it) inside the test's CPU window."""
    label = exc_label if payload.get("kind") == "call" else _type_name
    for s, (set_inputs, set_limits) in enumerate(zip(inputs, hdr["limits"])):
        for i, inp in enumerate(set_inputs):
            t0, stage, ok = time.process_time(), "", False
            try:
                _arm(set_limits[i])
                out = fn(*inp)
                stage = "Output"
                line = _ok_line(s, i, out, payload, t0)
                _arm(0)
                ok = True
            except _TestTimeout:
                _arm(0)
                line = b'[%d,%d,"timeout"]\n' % (s, i)
            except BaseException as exc:  # noqa: BLE001 - any failure of untrusted code fails the test
                _arm(0)
                line = (json.dumps([s, i, "exc", (stage + label(exc))[:64]]) + "\n").encode()
            _write_all(chan, line)
            if payload["stop_on_error"] and not ok:
                break


def _run_child(hdr: dict, chan: int, ack_w: int, seccomp: Seccomp | None, fresh: tuple | None,
               job_dir: str) -> None:
    payload = marshal.loads(_read_frame(0))
    inputs = marshal.loads(_read_frame(0))
    os.write(ack_w, b"1")
    os.close(ack_w)
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if fresh is not None:
            _fresh_scratch(libc, *fresh)
            os.mkdir(job_dir, 0o700)
        _drop_capabilities(libc)
        _isolate(hdr, chan, job_dir, seccomp)
    except _SetupError:
        raise
    except Exception as exc:  # noqa: BLE001 - still the harness's own code: machinery
        raise _SetupError(repr(exc)) from None
    signal.signal(signal.SIGPROF, _on_timer)
    sys.stdin = sys.stdout = sys.stderr = open(os.devnull, "r+")  # noqa: SIM115 - lives until os._exit
    # not "__main__": like evalplus, a solution's `if __name__ == "__main__":` demo block does not run
    env: dict = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        _arm(hdr["load"])
        fn = load_entry(payload, env, hdr["fsize"])  # the per-test callable of the job's kind (_formats.py)
        _arm(0)
    except BaseException as exc:  # noqa: BLE001 - any failure of untrusted code is a load error
        _arm(0)
        _write_all(chan, (json.dumps(["load_error", _type_name(exc)]) + "\n").encode())
        return
    _write_all(chan, b'["loaded"]\n')
    _run_tests(fn, hdr, payload, inputs, chan)


def _child_main(*args) -> None:
    code = 3
    try:
        _run_child(*args)
        code = 0
    except _ChannelError:
        code = EXIT_CHANNEL
    except _SetupError:
        code = EXIT_SETUP
    finally:
        os._exit(code)


# ------------------------------------------------------------------------------------------------------------
# zygote


def _wipe(modes: dict[str, int]) -> bool:
    """Fallback mode: restore the scratch dirs' modes and empty them; False when that failed (the zygote then
    retires, so the next job gets a fresh scratch dir instead of a dirty one)."""
    try:
        for d, mode in modes.items():
            os.chmod(d, mode)
            wipe_tree(d)
        return True
    except Exception:  # noqa: BLE001 - anything left behind could leak into the next job
        return False


def main() -> None:
    work_root, use_seccomp = sys.argv[1], sys.argv[2] == "1"
    # bubblewrap mode: every child mounts fresh tmpfs on the scratch dirs in its own mount namespace; the
    # rlimits fallback cannot, and empties its one private scratch dir after every job instead
    fresh_mounts = sys.argv[3] == "fresh"
    scratch = [work_root] + [d for d in sys.argv[5:] if os.path.isdir(d)]
    fresh = (scratch, sys.argv[4]) if fresh_mounts else None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0: no ptrace / procfs mem access to the zygote
    seccomp = Seccomp() if use_seccomp else None
    for mod in filter(None, os.environ.get("ZYGOTE_PRELOAD", "").split(",")):
        with contextlib.suppress(Exception):  # a missing optional package is the completion's problem
            __import__(mod)
    os.chdir("/")  # hold no directory a child mounts over or writes to
    modes = {d: os.stat(d).st_mode & 0o7777 for d in scratch}
    ncpu = max(1, len(os.sched_getaffinity(0)))
    send_frame(b"S", json.dumps({"ready": True, "pid": os.getpid(), "seccomp": use_seccomp,
                                 "fresh": fresh_mounts}).encode())
    job_dir = os.path.join(work_root, "job")
    while True:
        try:
            hdr = json.loads(_read_frame(0))
        except EOFError:
            return
        if fresh is None:
            os.makedirs(job_dir, mode=0o700)
        chan_r, chan_w = os.pipe()  # this child's alone: no other job can see or alter it
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(chan_r)
            os.close(ack_r)
            _child_main(hdr, chan_w, ack_w, seccomp, fresh, job_dir)
        os.close(chan_w)
        os.close(ack_w)
        info = supervise(pid, chan_r, ack_r, hdr, ncpu)
        os.close(chan_r)
        os.close(ack_r)
        info["clean"] = True if fresh is not None else _wipe(modes)
        send_frame(b"S", json.dumps(info).encode())
        if not info["clean"]:
            return


if __name__ == "__main__":
    main()
