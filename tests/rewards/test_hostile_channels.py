"""Hostile completions aimed at what one job shares with the next (issue #20, classes 2, 3, 4 and 6), on the
real sandbox (bubblewrap + fork-server + seccomp, no mocks):

- poisoning the result channel (file-status flags, pipe size) so that later honest samples lose their records;
- leaving tens of thousands of sibling directories so that cleaning up stalls the worker;
- leaking through metadata of the scratch roots (extended attributes, timestamps, inode numbers);
- flooding the result channel with lines so that the trusted process's memory grows.

Cross-job attacks use the one-worker ``scorer1``, so the attacker and its victims run back to back on the same
zygote. Each attack is followed by honest samples that must still pass.
"""

from __future__ import annotations

import tracemalloc

import pytest

from rewards._digest import digest

ANSWER = "(x * 7919 + 13) % 1000003"
SECRET_REF = f"def f(x):\n    return {ANSWER}\n"  # the conftest's tasks' reference solutions
BIG_REF = "def h(n):\n    return [i / 7 for i in range(n)]\n"
F_SETPIPE_SZ = 1031
FIONBIO = 0x5421

# --- class 2: result channel poisoning ----------------------------------------------------------------------

_EVERY_FD = "    for fd in range(3, 256):\n        try:\n{body}        except OSError:\n            pass\n"
POISON = {
    "nonblock_and_shrink": "            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | "
                           "os.O_NONBLOCK)\n"
                           f"            fcntl.fcntl(fd, {F_SETPIPE_SZ}, 4096)\n",
    "fionbio_and_shrink": f"            fcntl.ioctl(fd, {FIONBIO}, struct.pack('i', 1))\n"
                          f"            fcntl.fcntl(fd, {F_SETPIPE_SZ}, 4096)\n",
    "set_blocking_false_and_shrink": f"            fcntl.fcntl(fd, {F_SETPIPE_SZ}, 4096)\n"
                                     "            os.set_blocking(fd, False)\n",
}


def _poisoner(body: str, ret: str) -> str:
    return ("import fcntl, os, struct\ndef {fn}:\n" + _EVERY_FD.format(body=body) + f"    return {ret}\n")


@pytest.mark.parametrize("name", sorted(POISON))
def test_a_sample_cannot_poison_the_result_channel_of_later_samples(scorer1, name) -> None:
    bad = scorer1.score([("secret", _poisoner(POISON[name], "0").replace("{fn}", "f(x)"))])[0]
    assert bad.reward == 0.0 and bad.status != "infra_error", bad
    honest = scorer1.score([("bigfloat", BIG_REF)] * 3 + [("secret", SECRET_REF)] * 2)
    assert all(r.all_pass and r.status == "ok" for r in honest), [r.details for r in honest]
    assert scorer1.pool.stats["infra_errors_reported"] == 0


def test_a_sample_that_poisons_its_own_channel_still_gets_its_records_through(scorer1) -> None:
    """Flags and pipe size the sample sets on its own channel must not lose the harness's (large) records."""
    code = _poisoner(POISON["nonblock_and_shrink"], "[i / 7 for i in range(n)]").replace("{fn}", "h(n)")
    r = scorer1.score([("bigfloat", code)])[0]
    assert r.all_pass and r.status == "ok", r.details


def test_a_sample_that_closes_its_channel_is_retried_then_fails_alone(scorer1) -> None:
    """The harness cannot write its records: retried as an infrastructure failure (never scored as a plain
    test failure); since the channel is the job's own, a failure on every attempt is the sample's, and the
    batch still completes (no infra_error, nothing raised)."""
    before = dict(scorer1.pool.stats)
    closer = f"import os\ndef f(x):\n    for fd in range(3, 256):\n        try: os.close(fd)\n" \
             f"        except OSError: pass\n    return {ANSWER}\n"
    bad, good = scorer1.score([("secret", closer), ("secret", SECRET_REF)])
    assert bad.status == "protocol_violation" and bad.reward == 0.0 and bad.details["attempts"] == 2, bad
    assert good.all_pass and good.status == "ok"
    stats = scorer1.pool.stats
    assert stats["infra_failures"] - before["infra_failures"] == 2  # both attempts were retried as machinery
    assert stats["sample_faults"] - before["sample_faults"] == 1
    assert stats["infra_errors_reported"] == before["infra_errors_reported"]


# --- class 3: clean-up must be linear; a sample never fails a batch -----------------------------------------

SIBLINGS = {
    "tmp": "/tmp/s", "dev_shm": "/dev/shm/s", "job_dir": "s",
}


@pytest.mark.parametrize("where", sorted(SIBLINGS))
def test_tens_of_thousands_of_sibling_dirs_do_not_stall_the_worker(scorer, where) -> None:
    """The sample's result stands (it is correct), and nothing about the worker fails the batch."""
    before = dict(scorer.pool.stats)
    code = (f"import os\ndef f(x):\n    if x == 0:\n        for i in range(30000):\n"
            f"            try: os.mkdir('{SIBLINGS[where]}%d' % i)\n            except OSError: break\n"
            f"    return {ANSWER}\n")
    results = scorer.score([("secret", code), ("secret", SECRET_REF), ("secret", SECRET_REF)])
    assert [r.status for r in results] == ["ok"] * 3, [r.details for r in results]
    assert all(r.all_pass for r in results), [r.details for r in results]
    assert scorer.pool.stats["infra_failures"] == before["infra_failures"]


def test_the_fallback_wipe_handles_tens_of_thousands_of_siblings() -> None:
    """The rlimits fallback (no private mounts) empties its scratch dir after every job, in linear time."""
    import marshal
    import warnings

    from rewards.sandbox import Job, SandboxConfig, SandboxPool

    def job(code: str) -> Job:
        return Job(code=code, entry_point="f", inputs=marshal.dumps([[[0]]], 2), limits=[[3.0]],
                   cpu_budget_s=4.0, wall_budget_s=20.0)

    spam = "import os\ndef f(x):\n    for i in range(10000): os.mkdir('s%d' % i)\n    return 7\n"
    look = "import os\ndef f(x):\n    return len(os.listdir('.'))\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with SandboxPool(1, SandboxConfig(isolation="rlimits", max_retries=0)) as pool:
            spammed, looked = pool.run([job(spam), job(look)])
            stats = dict(pool.stats)
    assert spammed.infra_error is None and spammed.records[1].startswith(b'[0,0,"ok"'), spammed
    assert looked.records[1] == b'[0,0,"ok","%s",null]' % digest(0).encode(), looked  # the dir was empty
    assert stats["infra_failures"] == 0 and stats["recycled"] == 0


# --- class 4: nothing a job writes, metadata included, is visible to the next job ---------------------------

STAMP_NS = 1234567890123456789
# advances the inode counters, then marks the scratch roots (last, so nothing overwrites the stamps)
WRITER = (
    "import os\ndef f(x):\n"
    "    for d in ('/tmp', '/dev/shm'):\n"
    "        for i in range(3000):\n            open(f'{d}/n{i}', 'w').close()\n"
    "            os.unlink(f'{d}/n{i}')\n    for d in ('/tmp', '/dev/shm', '.', '/tmp/job'):\n"
    "        for op in (lambda: os.setxattr(d, 'user.leak', b'1'),\n"
    f"                   lambda: os.utime(d, ns=({STAMP_NS}, {STAMP_NS}))):\n"
    "            try: op()\n            except OSError: pass\n"
    f"    return {ANSWER}\n")
READERS = {
    "xattr": "seen = [d for d in ('/tmp', '/dev/shm', '.') if os.listxattr(d)]",
    "timestamps": f"seen = [d for d in ('/tmp', '/dev/shm', '.') if {STAMP_NS} in (os.stat(d).st_mtime_ns, "
                  "os.stat(d).st_atime_ns)]",
    "inode_numbers": "seen = []\n    for d in ('/tmp', '/dev/shm'):\n"
                     "        open(d + '/probe', 'w').close()\n"
                     "        seen += [d] if os.stat(d + '/probe').st_ino > 1000 else []",
}


@pytest.mark.parametrize("channel", sorted(READERS))
def test_scratch_metadata_does_not_survive_into_the_next_job(scorer1, channel) -> None:
    reader = f"import os\ndef f(x):\n    {READERS[channel]}\n    return -1 if seen else {ANSWER}\n"
    results = scorer1.score([("secret", WRITER), ("secret", reader)])
    assert results[0].all_pass, results[0].details
    assert results[1].all_pass, results[1].details


def test_a_later_sample_cannot_copy_an_earlier_answer_through_xattrs(scorer1) -> None:
    """The issue's attack: a correct sample stores its answers, a later one of the same task replays them."""
    store = ("import os, json\ndef f(x):\n    y = " + ANSWER + "\n    for d in ('/tmp', '/dev/shm'):\n"
             "        try:\n            old = json.loads(os.getxattr(d, 'user.a'))\n        except OSError:\n"
             "            old = {}\n        old[str(x)] = y\n"
             "        try: os.setxattr(d, 'user.a', json.dumps(old).encode())\n        except OSError: pass\n"
             "    return y\n")
    replay = ("import os, json\ndef f(x):\n    for d in ('/tmp', '/dev/shm'):\n        try:\n"
              "            return json.loads(os.getxattr(d, 'user.a'))[str(x)]\n"
              "        except (OSError, KeyError):\n"
              "            pass\n    return -1\n")
    results = scorer1.score([("secret", store), ("secret", replay)])
    assert results[0].all_pass
    assert results[1].reward == 0.0 and results[1].n_passed == 0, results[1].details


# --- class 6: trusted-side memory is bounded whatever a sample prints ---------------------------------------

FLOODS = {
    "newlines": "b'\\n' * (1 << 20)",
    "short_lines": "b'12\\n' * 349525",
    "one_long_line": "b'x' * (1 << 20)",
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_flooding_the_result_channel_keeps_trusted_memory_bounded(scorer, flood) -> None:
    code = (f"import os\ndef f(x):\n    chunk = {FLOODS[flood]}\n    for fd in range(3, 256):\n        try:\n"
            "            for _ in range(30): os.write(fd, chunk)\n        except OSError:\n            pass\n"
            f"    return {ANSWER}\n")
    tracemalloc.start()
    try:
        results = scorer.score([("secret", code), ("secret", code)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(r.reward == 0.0 and r.status in ("protocol_violation", "output_overflow") for r in results), \
        [(r.status, r.details) for r in results]
    assert peak < 16 * 1024**2, peak  # two 30 MB floods at once (the trusted side once held ~10x the flood)
    assert scorer.score([("secret", SECRET_REF)])[0].all_pass
