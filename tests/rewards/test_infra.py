"""Infrastructure failures and degraded hosts, on the real sandbox: a worker killed mid-job is restarted and
the job re-run (counted, never scored 0, never lost); a failure that persists is reported as "infra_error"
with no reward; a host without user namespaces is detected at start-up and either refused or used loudly
degraded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from rewards import EvalPlusScorer, RewardConfig, SandboxConfig
from rewards._zygote import wipe_tree
from rewards.api import SandboxInfraError

ANSWER = "(x * 7919 + 13) % 1000003"
SECRET_REF = f"def f(x):\n    return {ANSWER}\n"  # the conftest's 'secret' task
# 0.12 s of CPU per test, 0.84 s for the 7 tests: long enough to be caught in flight, and at most half of
# every limit (0.5 s per test, 2 s per sample in the conftest) so that a busy machine can never make it
# time out
SLOW = ("import time\ndef f(x):\n    t = time.process_time()\n"
        "    while time.process_time() - t < 0.12: pass\n"
        f"    return {ANSWER}\n")


def _kill_workers_in_flight(pool, n_busy: int, timeout_s: float = 60.0) -> int:
    """Wait until ``n_busy`` zygotes are running a job (they have a forked child), then SIGKILL those workers'
    bubblewrap processes from outside. Returns how many were killed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = []
        for w in list(pool.workers):
            proc = w.proc
            if proc is None or proc.poll() is not None:
                continue
            with_child = [p for p in psutil.Process(proc.pid).children(recursive=True)
                          if "python" in p.name() and p.parent() is not None
                          and "python" in p.parent().name()]
            if with_child:
                busy.append(proc.pid)
        if len(busy) >= n_busy:
            for pid in busy:
                os.kill(pid, 9)
            return len(busy)
        time.sleep(0.01)
    raise AssertionError("no job went in flight")


def _score_in_thread(scorer, items) -> tuple[threading.Thread, list, list]:
    done: list = []
    errors: list = []

    def run() -> None:
        try:
            done.extend(scorer.score(items))
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            errors.append(exc)

    th = threading.Thread(target=run)
    th.start()
    return th, done, errors


def test_worker_killed_mid_job_is_retried_not_scored(scorer) -> None:
    failures_before = scorer.pool.stats["infra_failures"]
    th, done, errors = _score_in_thread(scorer, [("secret", SLOW)] * 2)
    killed = _kill_workers_in_flight(scorer.pool, 1)
    th.join(120)
    assert not errors and len(done) == 2
    assert all(r.all_pass and r.reward == 1.0 and r.status == "ok" for r in done), [r.details for r in done]
    assert scorer.pool.stats["infra_failures"] - failures_before == killed
    assert max(r.details["attempts"] for r in done) == 2


def test_persistent_infra_failure_is_reported_never_scored(tmp_path, secret_task_list) -> None:
    """No retries left: the item comes back as infra_error with reward None, the batch raises
    SandboxInfraError carrying every result (the honest sample's included), and the pool recovers for the next
    batch."""
    cfg = RewardConfig.rl(workers=1, cache_dir=str(tmp_path), completion_format="solution",
                          sandbox=SandboxConfig(isolation="bwrap", memory_bytes=1024**3, max_retries=0))
    with EvalPlusScorer(secret_task_list, cfg=cfg) as s:
        th, done, errors = _score_in_thread(s, [("secret", SLOW), ("secret", SECRET_REF)])
        _kill_workers_in_flight(s.pool, 1)
        th.join(120)
        assert not done and len(errors) == 1 and isinstance(errors[0], SandboxInfraError)
        first, second = errors[0].results
        assert (first.status == "infra_error" and first.reward is None
                and "zygote exited" in first.details["infra_error"])
        assert second.status == "ok" and second.reward == 1.0
        assert s.pool.stats["infra_errors_reported"] == 1
        assert s.score([("secret", SECRET_REF)])[0].reward == 1.0


# Emulates a container whose seccomp profile forbids new user namespaces (Docker's default does), for this
# process and the bubblewrap it starts: no mocks, bubblewrap really fails to create its sandbox.
NO_USERNS = """
import errno, json, warnings
from rewards import _zygote as z
from rewards.sandbox import SandboxConfig, resolve_isolation
sc = z.Seccomp(deny_list=False)
sc.rule(z._errno_action(errno.EPERM), "unshare")
sc.rule(z._errno_action(errno.EPERM), "clone", (0, z._CMP_MASKED_EQ, 0x10000000, 0x10000000))
sc.rule(z._errno_action(errno.ENOSYS), "clone3")
sc.load()
out = {}
try:
    resolve_isolation(SandboxConfig(isolation="bwrap"))
except RuntimeError as exc:
    out["refused"] = str(exc)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out["auto"] = resolve_isolation(SandboxConfig(isolation="auto"))
out["warnings"] = [str(w.message) for w in caught]
print(json.dumps(out))
"""


def test_startup_without_user_namespaces_refuses_or_degrades_loudly() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_USERNS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "refused" in out["refused"] and "namespace" in out["refused"]
    assert out["auto"] == "rlimits"
    assert any("SANDBOX DEGRADED" in w for w in out["warnings"])
    assert "SANDBOX DEGRADED" in proc.stderr  # logged as well, not only a Python warning


def test_wipe_tree_handles_deep_locked_trees_and_never_follows_links(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    top = tmp_path / "scratch"
    top.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(top)
        for _ in range(1200):  # deeper than recursive rmtree's stack allows
            os.mkdir("d")
            os.chdir("d")
        os.mkdir("locked")
        os.chmod("locked", 0)
    finally:
        os.chdir(cwd)
    (top / "link").symlink_to(outside)
    (top / "d" / "file").write_text("y")
    wipe_tree(str(top))
    assert list(top.iterdir()) == [] and (outside / "keep").read_text() == "x"
    assert os.getcwd() == cwd


def test_wipe_tree_lists_each_directory_once(tmp_path) -> None:
    """30,000 sibling directories: the old wipe re-listed the parent after every removal (quadratic,
    minutes)."""
    top = tmp_path / "scratch"
    top.mkdir()
    for i in range(30000):
        (top / f"s{i}").mkdir()
    for i in range(50):
        (top / f"s{i}" / "f").write_text("x")
    stats = wipe_tree(str(top))
    assert list(top.iterdir()) == [] and stats == {"dirs": 30001, "removed": 30050}


def _deep_tree(root: str, depth: int) -> None:
    cwd = os.getcwd()
    try:
        os.chdir(root)
        for _ in range(depth):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(cwd)


def test_fallback_worker_dir_is_removed_even_when_rmtree_cannot() -> None:
    """What a killed fallback zygote may leave behind (too deep for rmtree) is still removed at close, and the
    trusted process's working directory is untouched."""
    from rewards.sandbox import SandboxPool

    cwd = os.getcwd()
    pool = SandboxPool(1, SandboxConfig(isolation="rlimits"))
    tmp = pool.workers[0]._tmp.name
    _deep_tree(os.path.join(tmp, "work"), 1200)
    pool.close()
    assert not os.path.exists(tmp) and os.getcwd() == cwd


@pytest.mark.parametrize("bad", [{"isolation": "docker"}])
def test_bad_isolation_setting_is_a_clear_error(bad) -> None:
    with pytest.raises(ValueError, match="isolation must be"):
        SandboxConfig(**bad)
