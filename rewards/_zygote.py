"""Fork-server that runs INSIDE the sandbox (bubblewrap or the rlimits-only fallback).

This file is executed as a standalone script (``python -S -s -P -B _zygote.py RESULT_FD WORK_DIR SECCOMP [SCRATCH..]``); it must not
import anything from the ``rewards`` package, which is not mounted in the sandbox. The trusted side imports it only
for :func:`digest` / :func:`encode_value`, so that digests of caller-supplied expected values are computed by the
very same code that digests untrusted outputs.

Protocol (all frames are 4-byte big-endian length + bytes):
  parent -> zygote (fd 0): HEADER frame (JSON: limits), then PAYLOAD frame (marshal: code, entry point, test sets)
                           and INPUTS frame (marshal v2: list of input lists). The zygote reads only the header;
                           the forked child reads the payload and inputs, so no job data ever lives in the zygote
                           (a later child cannot scrape an earlier job's data from inherited memory).
  zygote -> parent (fd 1): one JSON line per job: exit code / signal / deadline / CPU seconds / payload ack.
  child  -> parent (RESULT_FD, a pipe owned by the trusted side): one JSON line per test:
        [set, i, "ok", digest_hex, value_or_null, cpu_s] | [set, i, "exc", TypeName] | [set, i, "timeout"]
     plus ["loaded"] / ["load_error", TypeName]. Digests are never checked here: expected values never enter.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import itertools
import json
import marshal
import math
import operator
import os
import resource
import select
import signal
import struct
import sys
import time

DIGEST_BYTES = 16
VALUE_CAP = 65536

# ----------------------------------------------------------------------------------------------------------------
# canonical digest: equal digests <=> equal values under Python == for plain builtins (bool==int, 1.0==1,
# dict/set order-insensitive, list != tuple). Builtin subclasses are read through the base type's C methods.
#
# digest(x) = sha256(E(N(x))). N (_normalize) maps a value to its normal form: bool -> int, integral float -> int,
# subclasses -> base types, set -> frozenset... E (_canon) is a function of the normal form alone: b"M" + marshal
# (version 2: no object refs, so the bytes depend on values only) when the normal form is made of exact
# list/tuple/str/int/bytes/None/float without NaN (_is_simple), else a structural encoding. The fast paths below
# only compute N or decide E at C speed (type sets, map, list ==) for common shapes; they never change the result.


_LEAVES = frozenset({str, int, bytes, type(None)})
_SIMPLE = _LEAVES | {list, tuple}
_NORMAL_LEAVES = _LEAVES | {float}  # floats are normal when not integral (a normal form holds no integral float)
_NUMBERS = frozenset({int, float, bool})
_NAN = struct.pack("<d", math.nan)  # every NaN encodes alike


def _is_simple(x, leaves: frozenset = _LEAVES) -> bool:
    """True when x is built only from exact list/tuple and ``leaves`` types (no NaN): then its marshal bytes are
    canonical. Scans level by level with C-speed type sets (no per-element Python frames)."""
    t = type(x)
    if t in leaves:
        return t is not float or x == x
    if t is not list and t is not tuple:
        return False
    allowed = leaves | {list, tuple}
    level = [x]
    while level:
        items = list(itertools.chain.from_iterable(level))
        kinds = set(map(type, items))
        if not kinds <= allowed:
            return False
        nested = list in kinds or tuple in kinds
        if float in kinds:
            floats = [e for e in items if type(e) is float] if nested else items
            if any(map(operator.ne, floats, floats)):  # NaN is the only value unequal to itself
                return False
        if not nested:
            return True
        level = items if kinds <= {list, tuple} else [e for e in items if type(e) is list or type(e) is tuple]
    return True


def _normal_numbers(x):
    """Normal form of an exact list/tuple of exact int/float/bool at C speed (one int() per item, one list ==),
    or None when an item is inf or NaN (left to the item-by-item path)."""
    t = type(x)
    try:
        ints = t(map(int, x))
    except (OverflowError, ValueError):
        return None
    if ints == x:  # every float integral (int == float compares exactly)
        return ints
    return t([i if i == v else v for i, v in zip(ints, x)])  # keep the non-integral floats


def _normalize(x):
    """Plain canonical form under Python ==: bool -> int, integral float -> int, complex with zero imaginary part
    -> its real part, builtin subclasses -> base type (read through the base type's C methods, so overridden
    hooks do not matter), numpy values -> Python values, set/frozenset -> frozenset."""
    t = type(x)
    if t is str or t is int or x is None or t is bytes:
        return x
    if t is bool:
        return int(x)
    if t is float:
        return int(x) if math.isfinite(x) and x.is_integer() else x
    if t is list or t is tuple:
        kinds = set(map(type, x))
        if kinds <= _LEAVES:
            return x  # already normal
        if kinds <= _NUMBERS:
            y = _normal_numbers(x)
            if y is not None:
                return y
        return t([_normalize(e) for e in x])
    if t is dict:
        return {_normalize(k): _normalize(v) for k, v in x.items()}
    if t is set or t is frozenset:
        return frozenset(_normalize(e) for e in x)
    if t is complex:
        return _normalize(x.real) if x.imag == 0 else x
    if t is bytearray:
        return bytes(x)
    return _normalize(_plain(x))


def _canon(x, out) -> None:
    """Stream the canonical encoding of a normalised value into ``out`` (a hash update function)."""
    t = type(x)
    if _is_simple(x, _NORMAL_LEAVES):
        out(b"M" + marshal.dumps(x, 2))
    elif t is float:
        out(b"F" + (struct.pack("<d", x) if x == x else _NAN))
    elif t is complex:
        out(b"C" + struct.pack("<dd", x.real, x.imag))
    elif t is list or t is tuple:
        out((b"L%d:" if t is list else b"T%d:") % len(x))
        for e in x:
            _canon(e, out)
    elif t is dict:
        items = sorted(_sub(k) + _sub(v) for k, v in x.items())
        out(b"D%d:" % len(items) + b"".join(items))
    elif t is frozenset:
        items = sorted(_sub(e) for e in x)
        out(b"E%d:" % len(items) + b"".join(items))
    else:
        raise TypeError(f"unsupported output type {t.__name__}")


def _plain(x):
    """Convert builtin subclasses / numpy values to plain builtins (reading storage, not overridable hooks)."""
    if isinstance(x, bool):
        return bool(int.__int__(x))
    if isinstance(x, int):
        return int.__int__(x)
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, dict):
        return dict(dict.items(x))
    if isinstance(x, list):
        return list.copy(x)
    if isinstance(x, tuple):
        return tuple.__getitem__(x, slice(None))
    if isinstance(x, (set, frozenset)):
        return frozenset(set.__iter__(x) if isinstance(x, set) else frozenset.__iter__(x))
    if isinstance(x, complex):
        return complex.__complex__(x)
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    mod = getattr(type(x), "__module__", "") or ""
    if mod.split(".")[0] == "numpy" and hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"unsupported output type {type(x).__name__}")


def _sub(x) -> bytes:
    h = hashlib.sha256()
    _canon(x, h.update)
    return h.digest()


def digest(x) -> str:
    """Hex digest of a value, equal for values equal under Python == (plain builtins, dict/set order ignored,
    list != tuple); raises TypeError for objects that are not plain data."""
    t = type(x)
    if t in _LEAVES or t is bool or (t is float and x == x):  # scalars whose normal form is simple
        data = b"M" + marshal.dumps(x if t in _LEAVES else _normalize(x), 2)
        return hashlib.sha256(data).hexdigest()[: 2 * DIGEST_BYTES]
    h = hashlib.sha256()
    kinds = set(map(type, x)) if t is list or t is tuple else None
    if kinds is not None and kinds <= _LEAVES:  # flat list of str/int/...: already normal and simple
        h.update(b"M" + marshal.dumps(x, 2))
    elif kinds is not None and kinds <= _NUMBERS and (y := _normal_numbers(x)) is not None:
        h.update(b"M" + marshal.dumps(y, 2))  # normal numbers hold no NaN and no integral float: simple
    elif _is_simple(x):  # nested lists/tuples of str/int/...: one marshal call, however big
        h.update(b"M" + marshal.dumps(x, 2))
    else:
        _canon(_normalize(x), h.update)
    return h.hexdigest()[: 2 * DIGEST_BYTES]


def small(x, budget: int = VALUE_CAP) -> bool:
    """Cheap upper-bound check that a value's JSON form can fit in ``budget`` bytes (avoids encoding huge outputs)."""
    stack = [x]
    while stack:
        y = stack.pop()
        t = type(y)
        if t is str or t is bytes or t is bytearray:
            budget -= len(y)
        elif t in (list, tuple, set, frozenset):
            budget -= 2 + len(y)
            if budget < 0:
                return False
            stack.extend(y)
        elif t is dict:
            budget -= 2 + 2 * len(y)
            if budget < 0:
                return False
            stack.extend(y.keys())
            stack.extend(y.values())
        elif t is int:
            budget -= 2 + y.bit_length() // 3
        else:
            budget -= 8
        if budget < 0:
            return False
    return True


def encode_value(x):
    """Tagged-JSON form of a plain value (decoded on the trusted side by a strict object_hook)."""
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -(2**53) < x < 2**53 else {"i": format(x, "x")}
    if t is float:
        return x if math.isfinite(x) else {"f": repr(x)}
    if t is list:
        return [encode_value(e) for e in x]
    if t is tuple:
        return {"t": [encode_value(e) for e in x]}
    if t is dict:
        return {"d": [[encode_value(k), encode_value(v)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s": [encode_value(e) for e in x]}
    if t is complex:
        return {"c": [encode_value(x.real), encode_value(x.imag)]}
    if t is bytes or t is bytearray:
        return {"b": bytes(x).hex()}
    return encode_value(_plain(x))


# ----------------------------------------------------------------------------------------------------------------
# seccomp (libseccomp through ctypes; default allow, deny-list of process/network/IPC/namespace syscalls)

_ACT_ALLOW = 0x7FFF0000
_CLONE_THREAD = 0x00010000
_CMP_NE, _CMP_EQ, _CMP_MASKED_EQ = 1, 4, 7
# fcntl commands that make the kernel signal another process (SIGIO / F_SETSIG to an owner pid): a way around the
# kill() rule below. F_SETOWN, F_SETSIG, F_SETOWN_EX; ioctl FIOSETOWN / SIOCSPGRP do the same for sockets/ttys.
_FCNTL_SIGNALLING = (8, 10, 15)
_IOCTL_SIGNALLING = (0x8901, 0x8902)
# scheduling of OTHER processes (same uid inside the sandbox = the zygote, whose later children inherit it):
# nice 19 / SCHED_IDLE would make honest later samples hit their wall-clock limits.
_DENY_SCHED = ["setpriority", "sched_setscheduler", "sched_setparam", "sched_setattr", "sched_setaffinity",
               "ioprio_set", "migrate_pages", "move_pages", "process_madvise", "process_mrelease"]
_DENY_EPERM = ["fork", "vfork", "execve", "execveat", "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register", "tkill", "personality"]


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class Seccomp:
    """Builds the deny-list once (in the zygote); each child adds its own-pid rules and loads the filter.
    ``deny_list=False`` gives an empty allow-all filter to add rules to with :meth:`rule` (tests use it to emulate
    hosts whose container profile forbids user namespaces)."""

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


# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# child: one completion against its test sets


class _TestTimeout(BaseException):
    pass


def _on_timer(signum, frame):
    raise _TestTimeout


def _arm(cpu_s: float, wall_s: float) -> None:
    signal.setitimer(signal.ITIMER_PROF, cpu_s)
    signal.setitimer(signal.ITIMER_REAL, wall_s)


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)


def _isolate(hdr: dict, result_fd: int, job_dir: str, seccomp: Seccomp | None) -> None:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 65536)
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


def _emit(fd: int, rec: list) -> None:
    os.write(fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())


def _run_child(hdr: dict, result_fd: int, job_dir: str, ack_w: int, seccomp: Seccomp | None) -> None:
    payload = marshal.loads(_read_frame(0))
    inputs = marshal.loads(_read_frame(0))
    os.write(ack_w, b"1")
    os.close(ack_w)
    _isolate(hdr, result_fd, job_dir, seccomp)
    signal.signal(signal.SIGPROF, _on_timer)
    signal.signal(signal.SIGALRM, _on_timer)
    sys.stdin = sys.stdout = sys.stderr = open(os.devnull, "r+")  # noqa: SIM115 - lives until os._exit
    wall_factor = payload["wall_factor"]
    mode, values, timing = payload["mode"], payload["values"], payload["timing"]
    # not "__main__": like evalplus, a solution's `if __name__ == "__main__":` demo block does not run
    env: dict = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        _arm(payload["load_limit"], payload["load_limit"] * wall_factor)
        exec(compile(payload["code"], "<solution>", "exec"), env)
        fn = env[payload["entry_point"]]
        _disarm()
    except BaseException as exc:  # noqa: BLE001 - any failure of untrusted code is a load error
        _disarm()
        _emit(result_fd, ["load_error", type(exc).__name__[:64]])
        return
    _emit(result_fd, ["loaded"])
    for s, (set_inputs, set_limits) in enumerate(zip(inputs, payload["limits"])):
        for i, inp in enumerate(set_inputs):
            limit = set_limits[i]
            t0 = time.process_time()
            try:
                _arm(limit, limit * wall_factor)
                out = fn(*inp)
                _disarm()
            except _TestTimeout:
                _disarm()
                _emit(result_fd, [s, i, "timeout"])
                if payload["stop_on_error"]:
                    break
                continue
            except BaseException as exc:  # noqa: BLE001
                _disarm()
                _emit(result_fd, [s, i, "exc", type(exc).__name__[:64]])
                if payload["stop_on_error"]:
                    break
                continue
            cpu = time.process_time() - t0
            try:
                if mode == "not_none":
                    out = out if type(out) is bool else out is not None
                elif mode == "set_eq":
                    out = set(out)
                d = digest(out)
                v = None
                if values and small(out):
                    v = json.dumps(encode_value(out), separators=(",", ":"))
                    v = v if len(v) <= VALUE_CAP else None
            except BaseException as exc:  # noqa: BLE001 - unserialisable / hostile outputs fail the test
                _disarm()
                _emit(result_fd, [s, i, "exc", "Output" + type(exc).__name__[:58]])
                if payload["stop_on_error"]:
                    break
                continue
            if v is None and not timing:  # the common record, formatted without json (d is 32 hex digits)
                os.write(result_fd, b'[%d,%d,"ok","%s",null]\n' % (s, i, d.encode()))
                continue
            rec = [s, i, "ok", d, v]
            if timing:
                rec.append(round(cpu, 6))
            os.write(result_fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())


def _child_main(hdr, result_fd, job_dir, ack_w, ack_r, seccomp) -> None:
    try:
        os.close(ack_r)
        _run_child(hdr, result_fd, job_dir, ack_w, seccomp)
        os._exit(0)
    except BaseException:  # noqa: BLE001
        os._exit(3)


# ----------------------------------------------------------------------------------------------------------------
# zygote


def wipe_tree(top: str) -> None:
    """Delete everything below ``top`` (``top`` itself stays). Iterative and relative-path based, because a
    sample may leave directories nested 100,000 deep (recursive rmtree overflows the stack, absolute paths exceed
    PATH_MAX), mode-000 directories, or a chmod-ed ``top``. Raises OSError when something cannot be removed.
    Walks by changing the working directory (restored on return), so only call it in a single-threaded process."""
    prev = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    os.chdir(top)
    stack: list[str] = []  # names from top down to the current directory
    try:
        while True:
            seen, sub = False, None
            with os.scandir(".") as it:
                for entry in it:
                    seen = True
                    if entry.is_dir(follow_symlinks=False):
                        sub = entry.name
                    else:
                        os.unlink(entry.name)
            if sub is not None:
                os.chmod(sub, 0o700)
                os.chdir(sub)
                stack.append(sub)
            elif not seen:
                if not stack:
                    return
                os.chdir("..")
                os.rmdir(stack.pop())
    finally:
        os.fchdir(prev)
        os.close(prev)


def _wipe(modes: dict[str, int]) -> bool:
    """Restore the scratch dirs' modes and empty them; False when that failed (the zygote then retires, so
    the next job gets a fresh sandbox with fresh tmpfs mounts instead of a dirty one)."""
    try:
        for d, mode in modes.items():
            os.chmod(d, mode)
            wipe_tree(d)
        return True
    except Exception:  # noqa: BLE001 - anything left behind could leak into the next job
        return False


def _wait_child(pid: int, ack_r: int, wall: float) -> dict:
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + wall
    acked, timed_out = False, False
    fds = [pidfd, ack_r]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            timed_out = True
            break
        ready, _, _ = select.select(fds, [], [], left)
        if ack_r in ready:
            if os.read(ack_r, 1):
                acked = True
            fds.remove(ack_r)
        if pidfd in ready:
            break
    _, status, ru = os.wait4(pid, 0)
    os.close(pidfd)
    return {"exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "sig": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "deadline": timed_out, "ack": acked, "cpu": round(ru.ru_utime + ru.ru_stime, 4)}


def main() -> None:
    result_fd, work_root = int(sys.argv[1]), sys.argv[2]
    use_seccomp = sys.argv[3] == "1" if len(sys.argv) > 3 else True
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0: no ptrace / procfs mem access to the zygote
    seccomp = Seccomp() if use_seccomp else None
    for mod in filter(None, os.environ.get("ZYGOTE_PRELOAD", "").split(",")):
        with contextlib.suppress(Exception):  # a missing optional package is the completion's problem
            __import__(mod)
    # extra scratch dirs (bubblewrap's private /dev/shm) are named by the trusted side: the rlimits fallback
    # shares the host's /dev/shm, which must never be wiped
    scratch = [work_root] + [d for d in sys.argv[4:] if os.path.isdir(d)]
    modes = {d: os.stat(d).st_mode & 0o7777 for d in scratch}
    os.write(1, (json.dumps({"ready": True, "pid": os.getpid(), "seccomp": use_seccomp}) + "\n").encode())
    while True:
        try:
            hdr = json.loads(_read_frame(0))
        except EOFError:
            return
        job_dir = os.path.join(work_root, "job")
        os.makedirs(job_dir, mode=0o700)
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child_main(hdr, result_fd, job_dir, ack_w, ack_r, seccomp)
        os.close(ack_w)
        info = _wait_child(pid, ack_r, hdr["wall"])
        os.close(ack_r)
        info["clean"] = _wipe(modes)
        os.write(1, (json.dumps(info) + "\n").encode())
        if not info["clean"]:
            return


if __name__ == "__main__":
    main()
