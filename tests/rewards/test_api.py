"""Public API on caller-supplied tasks: extraction statuses, reward shaping, expected values given directly,
the rlimits+seccomp fallback and the refusal when bubblewrap is required but missing."""

from __future__ import annotations

import pytest

from rewards import EvalPlusScorer, RewardConfig, SandboxConfig, Task, score_batch
from rewards.sandbox import probe_bwrap, resolve_isolation

FENCED = "Here you go:\n```python\ndef f(x):\n    return (x * 7919 + 13) % 1000003\n```"
HALF_RIGHT = "```python\ndef f(x):\n    return (x * 7919 + 13) % 1000003 if x < 3 else 0\n```"


def _given_values_task() -> Task:
    return Task(task_id="double", prompt="def double(xs):\n", entry_point="double",
                base_inputs=[[[1, 2]], [[]]],
                plus_inputs=[[[5]]], expected_base=[[2, 4], []], expected_plus=[[10]])


def test_rewards_shaping_and_statuses(scorer) -> None:
    # same pool and tables, different shaping (no second pool needed)
    binary = EvalPlusScorer.__new__(EvalPlusScorer)
    binary.__dict__.update(scorer.__dict__)
    binary.cfg = RewardConfig.rl(completion_format="auto", format_weight=0.5, reward="pass_ratio",
                                 answer_marker="[A]", no_code_reward=-1.0)
    res = binary.score([("secret", "[R] think [A] " + FENCED), ("secret", "[R] think [A] " + HALF_RIGHT),
                        ("secret", "[R] no answer block"), ("secret", "[R] x [A] def f(:")])
    assert (res[0].reward, res[0].format_reward, res[0].status) == (1.5, 1.0, "ok")
    assert res[1].n_passed == 3 and res[1].n_tests == 7 and res[1].reward == pytest.approx(3 / 7 + 0.5)
    assert res[1].base_status == "fail" and res[1].plus_status == "fail" and not res[1].all_pass
    assert (res[2].status, res[2].reward) == ("no_answer_block", -1.0)
    assert (res[3].status, res[3].reward) == ("syntax_error", -1.0)


def test_unknown_task_is_a_clear_error(scorer) -> None:
    with pytest.raises(ValueError, match="unknown task_id"):
        scorer.score([("nope", "x")])


def test_score_batch_with_expected_values_given_directly(tmp_path) -> None:
    cfg = RewardConfig.rl(workers=1, cache_dir=str(tmp_path), sandbox=SandboxConfig(isolation="bwrap"))
    good = "```python\ndef double(xs):\n    return [2 * x for x in xs]\n```"
    bad = "```python\ndef double(xs):\n    return [x + x for x in xs][:1]\n```"
    res = score_batch([("double", good), ("double", bad)], tasks=[_given_values_task()], cfg=cfg)
    assert [r.reward for r in res] == [1.0, 0.0]
    assert res[1].n_passed == 2  # [] and [10] are right; [2, 4] -> [2] is wrong


def test_samples_with_the_heaviest_reference_run_first(tmp_path) -> None:
    """Longest-first scheduling: the pool receives a batch's samples by decreasing reference cost (so a heavy
    sample queued last does not leave the other workers idle); results still come back in input order."""
    slow_ref = "def slow(n):\n    return sum(i * i for i in range(n))\n"
    fast_ref = "def fast(n):\n    return n + 1\n"
    slow = Task(task_id="slow", prompt="def slow(n):\n", entry_point="slow", base_inputs=[[300000], [300001]],
                reference_solution=slow_ref)
    fast = Task(task_id="fast", prompt="def fast(n):\n", entry_point="fast", base_inputs=[[1], [2]],
                reference_solution=fast_ref)
    cfg = RewardConfig.rl(workers=1, completion_format="solution", cache_dir=str(tmp_path),
                          sandbox=SandboxConfig(isolation="bwrap"))
    with EvalPlusScorer([slow, fast], cfg=cfg) as scorer:
        assert scorer.expected_cost(slow) > 10 * scorer.expected_cost(fast)
        submitted: list[str] = []
        real_submit = scorer.pool.submit

        def recording_submit(job):
            submitted.append(job.entry_point)
            return real_submit(job)

        scorer.pool.submit = recording_submit
        results = scorer.score([("fast", fast_ref), ("slow", slow_ref),
                                ("fast", "def fast(n):\n    return n\n")])
    assert submitted == ["slow", "fast", "fast"]
    assert [(r.task_id, r.all_pass) for r in results] == [("fast", True), ("slow", True), ("fast", False)]


def test_task_validation() -> None:
    with pytest.raises(ValueError, match="oracle"):
        Task(task_id="t", prompt="", entry_point="f", base_inputs=[[1]], expected_base=[1], oracle="fuzzy")
    with pytest.raises(ValueError, match="reference_solution"):
        Task(task_id="t", prompt="", entry_point="f", base_inputs=[[1]])
    with pytest.raises(ValueError, match="reward"):
        RewardConfig(reward="sigmoid")


def test_rlimits_fallback_still_judges_and_blocks_fork(tmp_path) -> None:
    cfg = RewardConfig.rl(workers=1, cache_dir=str(tmp_path), completion_format="solution",
                          sandbox=SandboxConfig(isolation="rlimits", memory_bytes=1024**3))
    fork_probe = ("import os\ndef double(xs):\n    try:\n        os.fork()\n    except OSError:\n"
                  "        return [2 * x for x in xs]\n    return []\n")
    with EvalPlusScorer([_given_values_task()], cfg=cfg) as s:
        assert s.isolation == "rlimits"
        res = s.score([("double", fork_probe), ("double", "def double(xs):\n    return xs\n")])
    assert [r.reward for r in res] == [1.0, 0.0]


def test_refuses_without_bubblewrap_when_required(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    probe_bwrap.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="refused"):
            resolve_isolation(SandboxConfig(isolation="bwrap"))
        with pytest.warns(RuntimeWarning, match="SANDBOX DEGRADED"):
            assert resolve_isolation(SandboxConfig(isolation="auto")) == "rlimits"
    finally:
        probe_bwrap.cache_clear()
