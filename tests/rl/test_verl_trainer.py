"""Per-step metrics the ``lockstep`` trainer mode adds to verl's (reward extras + rollout fields)."""

from __future__ import annotations

import pytest

from rl.verl_trainer import lockstep_metrics


def test_means_of_reward_extras_and_rollout_fields() -> None:
    extra_fields = [
        {"reward_extra_info": {"pass_base": 1.0, "pass_plus": 0.0, "pass_ratio": 0.5, "reward_latency_s": 0.2},
         "rollout_tokens_per_s": 100.0, "rollout_seconds": 2.0, "rollout_batch_size": 8, "rollout/nfe": 6.0,
         "global_steps": 3},
        {"reward_extra_info": {"pass_base": -1.0, "pass_plus": -1.0, "pass_ratio": 0.0, "reward_latency_s": 0.4},
         "rollout_tokens_per_s": 300.0, "rollout_seconds": 2.0, "rollout_batch_size": 8, "rollout/nfe": 8.0},
        None,
    ]
    metrics = lockstep_metrics(extra_fields)
    assert metrics["reward/pass_base"] == 1.0  # the sample whose tests did not run (-1) is left out
    assert metrics["reward/pass_plus"] == 0.0
    assert metrics["reward/pass_ratio"] == pytest.approx(0.25)
    assert metrics["reward/latency_s"] == pytest.approx(0.3)
    assert metrics["rollout/tokens_per_s"] == pytest.approx(200.0)
    assert metrics["rollout/batch_size"] == 8.0 and metrics["rollout/nfe"] == pytest.approx(7.0)
    assert "global_steps" not in metrics


def test_no_fields_no_metrics() -> None:
    assert lockstep_metrics([{}, "x"]) == {}


def test_fill_gif_is_found_by_weights_version(tmp_path) -> None:
    from rl.verl_trainer import fill_gif_path

    (tmp_path / "fill_step3.gif").write_bytes(b"GIF89a")
    assert fill_gif_path(str(tmp_path), 3) == str(tmp_path / "fill_step3.gif")
    assert fill_gif_path(str(tmp_path), 4) is None
    assert fill_gif_path(None, 3) is None
