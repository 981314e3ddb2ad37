"""Per-step metrics the ``lockstep`` trainer mode adds to verl's (reward extras + rollout fields)."""

from __future__ import annotations

import pytest

from rl.verl.trainer import lockstep_metrics


def test_means_of_reward_extras_and_rollout_fields() -> None:
    extra_fields = [
        {"reward_extra_info": {"pass_base": 1.0, "pass_plus": 0.0, "pass_ratio": 0.5,
                               "reward_latency_s": 0.2},
         "rollout_tokens_per_s": 100.0, "rollout_seconds": 2.0, "rollout_batch_size": 8, "rollout/nfe": 6.0,
         "global_steps": 3},
        {"reward_extra_info": {"pass_base": -1.0, "pass_plus": -1.0, "pass_ratio": 0.0,
                               "reward_latency_s": 0.4},
         "rollout_tokens_per_s": 300.0, "rollout_seconds": 2.0, "rollout_batch_size": 8, "rollout/nfe": 8.0},
        None,
    ]
    metrics = lockstep_metrics(extra_fields)
    assert metrics["reward/pass_base"] == 0.5  # a sample whose tests never ran (-1) did not pass
    assert metrics["reward/pass_plus"] == 0.0
    assert metrics["reward/pass_ratio"] == pytest.approx(0.25)
    assert metrics["reward/latency_s"] == pytest.approx(0.3)
    assert metrics["rollout/tokens_per_s"] == pytest.approx(200.0)
    assert metrics["rollout/batch_size"] == 8.0 and metrics["rollout/nfe"] == pytest.approx(7.0)
    assert "global_steps" not in metrics


def test_no_fields_no_metrics() -> None:
    assert lockstep_metrics([{}, "x"]) == {}


def test_only_configured_test_sets_get_a_pass_rate() -> None:
    fields = [{"reward_extra_info": {"pass_base": 1.0, "pass_plus": -1.0}},
              {"reward_extra_info": {"pass_base": 0.0, "pass_plus": -1.0}}]
    assert lockstep_metrics(fields, test_sets=("base",)) == {"reward/pass_base": 0.5}


def test_fill_gif_is_found_by_weights_version(tmp_path) -> None:
    from rl.verl.trainer import fill_gif_path

    (tmp_path / "fill_step3.gif").write_bytes(b"GIF89a")
    assert fill_gif_path(str(tmp_path), 3) == str(tmp_path / "fill_step3.gif")
    assert fill_gif_path(str(tmp_path), 4) is None
    assert fill_gif_path(None, 3) is None


def test_rows_are_ordered_by_dataset_index_then_sample_then_output() -> None:
    from rl.verl.trainer import canonical_row_order

    keys = ["9f_1_0", "1a_0_0", "9f_0_0", "1a_1_0", "1a_1_1"]
    indices = [7, 3, 7, 3, 3]  # uids are random per run; dataset indices are not
    order = canonical_row_order(indices, keys)
    assert [keys[i] for i in order] == ["1a_0_0", "1a_1_0", "1a_1_1", "9f_0_0", "9f_1_0"]


def test_transfer_queue_fields_become_lists() -> None:
    import torch
    from tensordict import NonTensorData, NonTensorStack, TensorDict

    from rl.verl.trainer import _as_list

    stack = TensorDict({"index": NonTensorStack(NonTensorData(3), NonTensorData(5))}, batch_size=[2])
    assert _as_list(stack.pop("index"), 2) == [3, 5]
    tensor = TensorDict({"index": torch.tensor([4, 1])}, batch_size=[2])
    assert _as_list(tensor.pop("index"), 2) == [4, 1]
    assert _as_list(NonTensorData(7), 3) == [7, 7, 7]
