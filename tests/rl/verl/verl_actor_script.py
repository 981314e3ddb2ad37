"""One rank of the verl-actor checks of ``tests/rl/verl/test_verl_actor.py`` (run as a script: it owns a
process group).

``python verl_actor_script.py MODEL_DIR OUT_DIR`` with verl's ``RANK``/``WORLD_SIZE``/``MASTER_*`` set. Every
rank builds :class:`rl.verl.local.LocalActor` for ``recipe=demo`` with LoRA r=4 on the tiny Dream in
MODEL_DIR, takes its share of 4 fixed rows, runs the old-policy, reference and one PPO update pass through
verl's worker, and writes ``OUT_DIR/rank<r>.pt`` with what the test compares. On one rank it also builds a
second actor with gradient checkpointing, checks the exported peft adapter against ``decoding.load_dream`` +
peft, and records the parameters before/after the update.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]

ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5])


R_LEN = 3  # the recipe's lockstep R block is overridden to 3 tokens (rollout options, below)


def fixed_rows(model_dir: str):
    """4 rows in the decoded lockstep layout: R (R_LEN tokens), the delimiter, A; the scored mask is every
    generated token (the delimiter is neither masked nor scored, as the engine requires it where r_len puts
    it)."""
    from transformers import AutoTokenizer

    from decoding.lockstep import DEFAULT_DELIMITER
    from rl.verl.local import Rows

    delimiter = torch.tensor(AutoTokenizer.from_pretrained(model_dir).encode(DEFAULT_DELIMITER,
                                                                            add_special_tokens=False))
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 1600, (n,), generator=generator) for n in (5, 7, 4, 6)]
    responses = [torch.cat([torch.randint(100, 1600, (R_LEN,), generator=generator), delimiter,
                            torch.randint(100, 1600, (n,), generator=generator)]) for n in (3, 5, 5, 2)]
    masks = [torch.ones(r.numel(), dtype=torch.long) for r in responses]
    for mask in masks:
        mask[R_LEN:R_LEN + delimiter.numel()] = 0
    return Rows(prompts, responses, masks)


def build(model_dir: str, checkpointing: bool):
    from launch.train_grpo import compose_recipe
    from rl.verl.config import prepare_runtime
    from rl.verl.local import LocalActor

    overrides = [f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.model.lora_rank=4",
                 "actor_rollout_ref.model.lora_alpha=8", "actor_rollout_ref.model.target_modules=all-linear",
                 f"actor_rollout_ref.model.enable_gradient_checkpointing={str(checkpointing).lower()}",
                 "actor_rollout_ref.actor.ppo_mini_batch_size=1", "actor_rollout_ref.rollout.n=4",
                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                 "actor_rollout_ref.actor.optim.lr=0.05",
                 "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                 f"actor_rollout_ref.rollout.custom.dream.options.r_len={R_LEN}",
                 f"lockstep.run_dir={os.environ['LOCAL_ACTOR_RUN_DIR']}"]
    cfg = compose_recipe("demo", overrides)
    prepare_runtime(cfg, ROOT)
    torch.manual_seed(0)  # LoRA A init: identical on every rank and in every run
    return LocalActor(cfg)


def full_parameters(actor) -> dict[str, torch.Tensor]:
    return {name.replace("_fsdp_wrapped_module.", ""): p.full_tensor().detach().clone()
            for name, p in actor.engine.module.named_parameters()}


def base_model_logprobs(model_dir: str, rows, adapter: str | None = None) -> list[torch.Tensor]:
    """The estimator on an unsharded model loaded by our own loader (+ the exported adapter), same masks."""
    from transformers import AutoTokenizer

    from decoding import load_dream
    from rl.logprob import masked_logprob
    from rl.verl.engine import EstimatorConfig, build_dense_batch, draw_row_plans

    model = load_dream(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    ids, attention, positions, window = build_dense_batch(rows.prompts, rows.responses, pad_id=0)
    config = EstimatorConfig.from_env()
    fixed_ids = AutoTokenizer.from_pretrained(model_dir).encode(config.fixed_text, add_special_tokens=False)
    plan = draw_row_plans(rows.prompts, rows.responses, positions, config, rows.response_masks,
                          fixed_ids=fixed_ids)
    with torch.no_grad():
        logp = masked_logprob(model, ids, attention, plan, int(model.config.mask_token_id)).logp
    return [logp[row, window - r.numel():] for row, r in enumerate(rows.responses)]


def main(model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    rows = fixed_rows(model_dir)
    share = list(range(rank * len(rows) // world, (rank + 1) * len(rows) // world))
    mine = rows.select(share)
    actor = build(model_dir, checkpointing=False)
    result: dict = {"rows": share}
    result["old"] = actor.log_probs(mine)
    result["reference_before"] = actor.log_probs(mine, reference=True)
    before = full_parameters(actor) if world == 1 else None
    result["metrics"] = actor.update(mine, ADVANTAGES[share], result["old"])
    result["new"] = actor.log_probs(mine)
    result["reference_after"] = actor.log_probs(mine, reference=True)
    result["sharded"] = sum(p.to_local().numel() for p in actor.engine.module.parameters()) < sum(
        p.numel() for p in actor.engine.module.parameters())
    if world == 1:
        after = full_parameters(actor)
        result["changed"] = sorted(n for n in before if not torch.equal(before[n], after[n]))
        result["trainable"] = sorted(n for n, p in actor.engine.module.named_parameters() if p.requires_grad)
        result["base_logprobs"] = base_model_logprobs(model_dir, rows)
        from rl.verl.engine import export_weights

        folder = export_weights(actor.engine.module, out_dir, model_dir)
        result["adapter_logprobs"] = base_model_logprobs(model_dir, rows, adapter=folder)
        checkpointed = build(model_dir, checkpointing=True)
        result["checkpointed_metrics"] = checkpointed.update(rows, ADVANTAGES, checkpointed.log_probs(rows))
        result["checkpointed_new"] = checkpointed.log_probs(rows)
        result["checkpointing_on"] = [any(getattr(m, "gradient_checkpointing", False) is True
                                          for m in a.engine.module.modules()) for a in (actor, checkpointed)]
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
