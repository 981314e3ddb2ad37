"""Ray actors spreading scoring over a real local Ray cluster (kept short: one init, one batch)."""

from __future__ import annotations

import pytest

from rewards import RayRewardPool, RewardConfig, SandboxConfig


@pytest.mark.slow
def test_ray_actors_score_in_input_order(secret_task_list, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = RewardConfig.rl(cache_dir=str(tmp_path), completion_format="solution",
                              sandbox=SandboxConfig(isolation="bwrap"))
        pool = RayRewardPool(cfg=cfg, tasks=secret_task_list, num_actors=2, cpus_per_actor=1)
        right = "def f(x):\n    return (x * 7919 + 13) % 1000003\n"
        items = [("secret", right if i % 3 else "def f(x):\n    return x\n") for i in range(7)]
        items.append(("floaty", "def g(x):\n    return x / 3\n"))
        res = pool.score(items)
        assert [r.reward for r in res] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
        assert [r.task_id for r in res] == [t for t, _ in items]
        assert pool.isolation() == ["bwrap", "bwrap"]
        pool.shutdown()
    finally:
        ray.shutdown()
