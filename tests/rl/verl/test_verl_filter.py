"""Dynamic filtering (rl/verl/filter.py): the round decision on exact small cases, and the recipe checks."""

from __future__ import annotations

import pytest

from rl.verl.filter import GroupOutcome, decide


def _group(uid: str, rewards: tuple[float, ...], round: int = 1, index: int = 0) -> GroupOutcome:
    return GroupOutcome(uid=uid, round=round, index=index, rewards=rewards)


def test_informative_means_rewards_not_all_equal() -> None:
    assert _group("a", (0.0, 1.0)).informative and _group("a", (0.5, 0.5, 0.25)).informative
    assert not _group("a", (1.0, 1.0, 1.0)).informative and not _group("a", (0.0,)).informative


def test_refill_exactly_the_shortfall_then_select_only_informative_groups() -> None:
    first = [_group("a", (1.0, 1.0), index=3), _group("b", (0.0, 1.0), index=1),
             _group("c", (0.0, 0.0), index=2), _group("d", (1.0, 0.0), index=0)]
    assert decide(first, batch_size=4, rounds=1, enabled=True).refill == 2  # a and c are all-equal
    second = first + [_group("e", (0.0, 0.0), round=2, index=5), _group("f", (0.0, 1.0), round=2, index=4)]
    assert decide(second, batch_size=4, rounds=2, enabled=True).refill == 1
    third = second + [_group("g", (1.0, 0.5), round=3, index=6)]
    done = decide(third, batch_size=4, rounds=3, enabled=True)
    assert done.refill == 0
    assert done.selected == ["d", "b", "f", "g"]  # round, then dataset index
    assert sorted(done.dropped) == ["a", "c", "e"]
    assert done.metrics == {"filter/zero_advantage_fraction": 0.0, "filter/uninformative_fraction": 3 / 7,
                            "filter/refill_rounds": 2.0, "filter/generated_groups": 7.0,
                            "filter/kept_uninformative_groups": 0.0}


def test_round_cap_completes_the_batch_with_the_earliest_uninformative_groups() -> None:
    groups = [_group("a", (0.0, 0.0), index=1), _group("b", (0.0, 1.0), index=0),
              _group("c", (1.0, 1.0), index=0), _group("d", (0.0, 0.0), round=2, index=0)]
    assert decide(groups[:3], batch_size=3, rounds=1, enabled=True, max_rounds=2).refill == 2
    capped = decide(groups, batch_size=3, rounds=2, enabled=True, max_rounds=2)
    assert capped.refill == 0 and capped.selected == ["b", "c", "a"] and capped.dropped == ["d"]
    assert capped.metrics["filter/zero_advantage_fraction"] == pytest.approx(2 / 3)
    assert capped.metrics["filter/kept_uninformative_groups"] == 2.0


def test_without_filtering_the_batch_is_kept_and_its_zero_advantage_fraction_logged() -> None:
    groups = [_group("a", (0.0, 0.0), index=1), _group("b", (0.0, 1.0), index=0)]
    kept = decide(groups, batch_size=2, rounds=1, enabled=False)
    assert kept.selected == ["b", "a"] and kept.dropped == []
    assert (kept.metrics["filter/zero_advantage_fraction"] == 0.5
            and kept.metrics["filter/refill_rounds"] == 0.0)
    assert decide(groups[:1], batch_size=2, rounds=1, enabled=False).refill == 1  # a failed group is replaced


@pytest.mark.parametrize(("override", "message"), [
    ("algorithm.filter_groups.metric=acc", "metric must be 'reward'"),
    ("algorithm.filter_groups.max_num_gen_batches=-1", "max_num_gen_batches must be >= 0"),
    ("trainer.v1.trainer_mode=sync", "trainer.v1.trainer_mode must be 'lockstep'"),
])
def test_recipe_mistakes_in_filtering_are_one_line_errors(override: str, message: str) -> None:
    from launch.recipes import RecipeError
    from launch.train_grpo import compose_recipe
    from rl.verl.config import validate_recipe

    cfg = compose_recipe("humaneval", ["actor_rollout_ref.model.path=/models/dream", override])
    assert cfg.algorithm.filter_groups.enable  # on in the GPU recipe
    with pytest.raises(RecipeError, match=message):
        validate_recipe(cfg, check_files=False)
