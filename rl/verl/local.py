"""verl's actor worker with the Dream engine, built in this process: the training path without Ray.

Why: GRPO trains through verl (``launch/train_grpo.py``): its ``TrainingWorker`` drives our Dream engine
(:mod:`rl.verl.engine`: FSDP2, LoRA via peft, the diffusion log-prob estimator) with verl's PPO loss,
mini-batch loop and optimizer. :class:`LocalActor` builds exactly that worker from a composed recipe in the
calling process, so ``bench/bench_grpo_step.py`` can time one step phase by phase and the tests can check
LoRA, the reference policy and FSDP2 gradient averaging on the code a run executes — there is no second
trainer.

Contracts:

* the process group is verl's: ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (and
  ``VERL_PLATFORM=cpu`` without a GPU, which installs :mod:`rl.verl.cpu`) must be set before
  :class:`LocalActor` is built; every rank builds one and calls the same methods (collectives), each with its
  own rows;
* rows are :class:`Rows` (prompt ids, response ids, ``response_mask``: 0 = not generated, as our agent loop
  sets it for the lockstep delimiter); log-probs come back response-only, one tensor per row, as verl stores
  ``old_log_probs``;
* every pass names the global ``step`` whose salt draws the estimator's masks (as the trainer mode does,
  :mod:`rl.verl.trainer`): the old-policy, reference and update passes of one step must use the same ``step``;
* :meth:`LocalActor.update` runs verl's ``train_mini_batch`` with the recipe's PPO settings (clip ratios,
  ``loss_agg_mode``, ``ppo_epochs``) on per-row advantages; the token mean is over the whole dp group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from rl.verl.trainer import ESTIMATOR_STEP_KEY


@dataclass
class Rows:
    """A batch of rollout rows as the trainer holds them (jagged: one tensor per row)."""

    prompts: list[torch.Tensor]
    responses: list[torch.Tensor]
    response_masks: list[torch.Tensor]

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.responses) == len(self.response_masks)) or not self.prompts:
            raise ValueError("Rows needs the same non-zero number of prompts, responses and response masks")
        for row, (response, mask) in enumerate(zip(self.responses, self.response_masks)):
            if response.numel() != mask.numel():
                raise ValueError(f"row {row}: response_mask has {mask.numel()} entries for "
                                 f"{response.numel()} tokens")

    def select(self, index: list[int]) -> Rows:
        return Rows([self.prompts[i] for i in index], [self.responses[i] for i in index],
                    [self.response_masks[i] for i in index])

    def __len__(self) -> int:
        return len(self.prompts)


def _jagged(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(values, layout=torch.jagged)


def _tensordict(rows: Rows, pad_token_id: int, extra: dict[str, list[torch.Tensor]] | None = None) -> Any:
    """The fields verl's agent loop stores for each row (``loss_mask`` = ``response_mask``, as verl sets
    it)."""
    from verl.utils import tensordict_utils as tu

    masks = [m.long() for m in rows.response_masks]
    fields = {
        "prompts": _jagged([p.long() for p in rows.prompts]),
        "responses": _jagged([r.long() for r in rows.responses]),
        "input_ids": _jagged([torch.cat([p, r]).long() for p, r in zip(rows.prompts, rows.responses)]),
        "position_ids": _jagged([torch.arange(p.numel() + r.numel())
                                 for p, r in zip(rows.prompts, rows.responses)]),
        "response_mask": _jagged(masks),
        "loss_mask": _jagged(masks),
    }
    fields.update({key: _jagged(value) for key, value in (extra or {}).items()})
    return tu.get_tensordict(fields, non_tensor_dict={"pad_token_id": int(pad_token_id)})


def _mean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        numbers = [float(v) for v in values if isinstance(v, int | float | np.floating | np.integer)]
        if numbers:
            out[key] = float(np.mean(numbers))
    return out


class LocalActor:
    """verl's ``TrainingWorker`` for the actor of a composed GRPO recipe (see the module docstring)."""

    def __init__(self, cfg: Any) -> None:
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import TrainingWorkerConfig
        from verl.workers.engine_workers import TrainingWorker
        from verl.workers.utils.losses import ppo_loss

        from rl.verl.plugin import ensure_registered

        ensure_registered()
        self.cfg = cfg
        model_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
        actor_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        actor_config.model_config = model_config
        engine = actor_config.engine  # the assignments verl's ActorRolloutRefWorker.init_model makes
        engine.use_dynamic_bsz = False
        engine.micro_batch_size_per_gpu = cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu
        engine.infer_micro_batch_size_per_gpu = \
            cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu
        engine.use_remove_padding = model_config.get("use_remove_padding", False)
        self.worker = TrainingWorker(config=TrainingWorkerConfig(
            model_type=model_config.get("model_type", "language_model"), model_config=model_config,
            engine_config=engine, optimizer_config=actor_config.optim,
            checkpoint_config=actor_config.checkpoint))
        self.worker.reset()
        self.worker.set_loss_fn(partial(ppo_loss, config=actor_config))
        tokenizer = model_config.tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id)

    @property
    def engine(self) -> Any:
        """The Dream engine (:mod:`rl.verl.engine`); ``engine.module`` is the FSDP2-sharded (peft) model."""
        return self.worker.engine

    def log_probs(self, rows: Rows, reference: bool = False, step: int = 0) -> list[torch.Tensor]:
        """Per-token log-prob estimates of each row's response (no gradients): the old-policy pass, or with
        ``reference`` the reference policy (LoRA: the same model with its adapters disabled)."""
        from verl.trainer.ppo.v1.trainer_base import response_from_nested
        from verl.utils import tensordict_utils as tu

        data = _tensordict(rows, self.pad_token_id)
        tu.assign_non_tensor(data, calculate_entropy=False, compute_loss=False,
                             no_lora_adapter=bool(reference), **{ESTIMATOR_STEP_KEY: int(step)},
                             global_token_num=[int(p.numel() + r.numel()) for p, r in
                                               zip(rows.prompts, rows.responses)])
        output = self.worker.infer_batch(data)
        return list(response_from_nested(output["log_probs"], data["response_mask"]).unbind())

    def update(self, rows: Rows, advantages: torch.Tensor, old_log_probs: list[torch.Tensor], seed: int = 0,
               mini_batch_rows: int | None = None, epochs: int | None = None,
               ref_log_probs: list[torch.Tensor] | None = None, step: int = 0) -> dict[str, float]:
        """verl's PPO update of the actor on ``rows`` (default: the recipe's mini-batch size x ``rollout.n``
        rows per optimizer step, ``ppo_epochs`` passes); returns the metrics averaged over optimizer steps.
        ``ref_log_probs`` (from :meth:`log_probs` with ``reference``) are required when
        ``actor.use_kl_loss``."""
        from verl.utils import tensordict_utils as tu

        actor = self.cfg.actor_rollout_ref.actor
        mini_batch = mini_batch_rows \
            or int(actor.ppo_mini_batch_size) * int(self.cfg.actor_rollout_ref.rollout.n)
        per_token = [torch.full((r.numel(),), float(a)) for r, a in zip(rows.responses, advantages.tolist())]
        extra = {"advantages": per_token, "old_log_probs": [lp.float() for lp in old_log_probs]}
        if bool(actor.use_kl_loss):
            if ref_log_probs is None:
                raise ValueError("actor.use_kl_loss needs the reference log-probs (log_probs(rows, "
                                 "reference=True))")
            extra["ref_log_prob"] = [lp.float() for lp in ref_log_probs]
        data = _tensordict(rows, self.pad_token_id, extra)
        tu.assign_non_tensor(data, calculate_entropy=False, global_batch_size=mini_batch,
                             mini_batch_size=mini_batch, epochs=int(epochs or actor.ppo_epochs),
                             seed=int(seed), dataloader_kwargs={"shuffle": bool(actor.shuffle)},
                             temperature=float(self.cfg.actor_rollout_ref.rollout.temperature),
                             **{ESTIMATOR_STEP_KEY: int(step)})
        output = self.worker.train_mini_batch(data)
        return _mean_metrics(dict(output["metrics"])) if output is not None else {}

    def exported_weights(self) -> tuple[dict[str, torch.Tensor], dict | None]:
        """What the trainer sends the rollout server after a step: full CPU tensors (the adapters under LoRA)
        and the peft config (None for full weights), as :func:`rl.rollout_decoding.apply_weights` takes
        them."""
        weights, peft_config = self.engine.get_per_tensor_param(base_sync_done=True)
        named = {}
        for name, tensor in weights:
            tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            named[name] = tensor.detach().to("cpu")
        return named, peft_config
