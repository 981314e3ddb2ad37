"""DreamActor on a tiny Dream: LoRA / full fine-tuning gradients, reference policy, checkpointing, bf16, FSDP2,
adapter save/load and lockstep rollouts (whose trajectory log-prob must reproduce the sampler's own)."""

from __future__ import annotations

import socket

import pytest
import torch

from decoding.lockstep import LockstepCfg
from rl.actor import ActorConfig, DreamActor, LoraSettings, RolloutConfig, shard_fsdp2
from rl.logprob import MaskPlan, draw_coupled_masks

IDS = torch.tensor([[3, 7, 1, 2, 9, 5, 11], [4, 4, 6, 8, 1, 12, 2]])
LOSS = torch.ones(2, 4, dtype=torch.bool)


def _plan(seed: int = 0) -> MaskPlan:
    return draw_coupled_masks(LOSS, LOSS, generator=torch.Generator().manual_seed(seed))


def _lora_actor(factory, **overrides) -> DreamActor:
    settings = dict(lora=LoraSettings(rank=4, alpha=8), param_dtype="float32")
    settings.update(overrides)
    return DreamActor(factory(seed=0), ActorConfig(**settings))


def _sgd_steps(actor: DreamActor, steps: int = 3, lr: float = 0.5) -> None:
    optimizer = torch.optim.SGD(actor.trainable_parameters(), lr=lr)
    actor.train()
    for step in range(steps):
        optimizer.zero_grad()
        (-actor.logprob(IDS, None, _plan(step)).logp.sum()).backward()
        optimizer.step()


def test_lora_gradients_reach_only_adapters(tiny_dream_factory) -> None:
    actor = _lora_actor(tiny_dream_factory)
    actor.train()
    actor.logprob(IDS, None, _plan()).logp.sum().backward()
    named = dict(actor.module.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.grad is None for n, p in named.items() if n not in trainable)  # base frozen
    lora_b = [p for n, p in named.items() if "lora_B" in n]
    assert len(lora_b) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down); never lm_head
    assert all(float(p.grad.abs().sum()) > 0 for p in lora_b)
    _sgd_steps(actor, steps=1)
    actor.module.zero_grad()
    actor.logprob(IDS, None, _plan()).logp.sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for n, p in named.items() if "lora_A" in n)


def test_reference_is_the_base_model_after_an_update(tiny_dream_factory) -> None:
    actor = _lora_actor(tiny_dream_factory)
    base = tiny_dream_factory(seed=0)
    _sgd_steps(actor)
    with torch.no_grad():
        policy = actor.logprob(IDS, None, _plan(7)).logp
        with actor.reference():
            reference = actor.logprob(IDS, None, _plan(7)).logp
        base_logp = DreamActor(base, ActorConfig(lora=None, param_dtype="float32")).logprob(IDS, None, _plan(7)).logp
        after = actor.logprob(IDS, None, _plan(7)).logp
    torch.testing.assert_close(reference, base_logp, atol=1e-6, rtol=1e-6)
    assert (policy - reference).abs().max() > 1e-2
    assert torch.equal(policy, after)  # leaving the context re-enables the adapters


def test_full_finetuning_and_reference_copy(tiny_dream_factory) -> None:
    actor = DreamActor(tiny_dream_factory(seed=0), ActorConfig(lora=None, param_dtype="float32"))
    assert len(actor.trainable_parameters()) == len(list(actor.module.parameters()))
    with pytest.raises(RuntimeError, match="keep_reference_copy"), actor.reference():
        pass
    kept = DreamActor(tiny_dream_factory(seed=0), ActorConfig(lora=None, param_dtype="float32", keep_reference_copy=True))
    with torch.no_grad():
        start = kept.logprob(IDS, None, _plan(3)).logp
    _sgd_steps(kept, lr=0.05)
    with torch.no_grad(), kept.reference():
        reference = kept.logprob(IDS, None, _plan(3)).logp
    with torch.no_grad():
        moved = kept.logprob(IDS, None, _plan(3)).logp
    assert torch.equal(reference, start) and (moved - start).abs().max() > 1e-3
    with pytest.raises(ValueError, match="keep_reference_copy is for full fine-tuning"):
        ActorConfig(keep_reference_copy=True)


def test_adapter_save_load_roundtrip(tiny_dream_factory, tmp_path) -> None:
    from peft import PeftModel

    actor = _lora_actor(tiny_dream_factory)
    _sgd_steps(actor)
    out = actor.save(tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    fresh = _lora_actor(tiny_dream_factory)
    fresh.load_adapter(out)
    reloaded = DreamActor(PeftModel.from_pretrained(tiny_dream_factory(seed=0), str(out)), ActorConfig(lora=None, param_dtype="float32"))
    with torch.no_grad():
        expected = actor.logprob(IDS, None, _plan(5)).logp
        torch.testing.assert_close(fresh.logprob(IDS, None, _plan(5)).logp, expected)
        torch.testing.assert_close(reloaded.logprob(IDS, None, _plan(5)).logp, expected)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        fresh.load_adapter(tmp_path)


def test_gradient_checkpointing_keeps_gradients(tiny_dream_factory) -> None:
    grads = []
    for checkpointing in (False, True):
        actor = _lora_actor(tiny_dream_factory, gradient_checkpointing=checkpointing)
        _sgd_steps(actor, steps=1)  # make lora_B non-zero so every adapter has a gradient
        actor.module.zero_grad()
        actor.logprob(IDS, None, _plan()).logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in actor.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_bf16_base_with_float32_adapters(tiny_dream_factory) -> None:
    actor = _lora_actor(tiny_dream_factory, param_dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in actor.module.named_parameters()}
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    actor.train()
    logp = actor.logprob(IDS, None, _plan()).logp
    logp.sum().backward()
    assert torch.isfinite(logp).all() and logp.dtype == torch.float32
    assert any(float(p.grad.abs().sum()) > 0 for p in actor.trainable_parameters())


def test_bad_lora_settings_fail_clearly(tiny_dream_factory) -> None:
    with pytest.raises(ValueError, match="rank >= 1"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match="do not match the model"):
        _lora_actor(tiny_dream_factory, lora=LoraSettings(target_modules=["no_such_proj"]))
    with pytest.raises(ValueError, match="param_dtype"):
        ActorConfig(param_dtype="int8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_one_rank_matches_unsharded(tiny_dream_factory) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    plain = _lora_actor(tiny_dream_factory)
    sharded = _lora_actor(tiny_dream_factory)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        shard_fsdp2(sharded.module, init_device_mesh("cpu", (1,)))
        for actor in (plain, sharded):
            actor.train()
            actor.logprob(IDS, None, _plan()).logp.sum().backward()
        grads_plain = {n: p.grad for n, p in plain.module.named_parameters() if p.grad is not None}
        grads_sharded = {
            n.replace("_fsdp_wrapped_module.", ""): p.grad.full_tensor()
            for n, p in sharded.module.named_parameters() if p.grad is not None
        }
        assert grads_plain.keys() == grads_sharded.keys() and grads_plain
        for name, grad in grads_plain.items():
            torch.testing.assert_close(grads_sharded[name], grad, atol=1e-6, rtol=1e-5)
        with torch.no_grad(), sharded.reference():
            assert torch.isfinite(sharded.logprob(IDS, None, _plan()).logp).all()
    finally:
        dist.destroy_process_group()


def _rollout_cfg(**overrides) -> RolloutConfig:
    knobs = dict(mode="gauss_seidel", r_len=4, a_len=3, tau_r=0.3, tau_a=0.3, temperature=1.0, eos_guard=False)
    knobs.update(overrides)
    return RolloutConfig(lockstep=LockstepCfg(**knobs), delimiter_ids=(13,), seed=0)


def test_rollout_layout_and_trajectory_logprob_equals_sampler_probability(tiny_dream_factory) -> None:
    actor = _lora_actor(tiny_dream_factory)
    _sgd_steps(actor, steps=1)  # a policy that differs from the base: rollout must use the adapters
    rollout = actor.rollout([[3, 7, 1], [5, 2]], n=3, cfg=_rollout_cfg())
    assert rollout.input_ids.shape == (6, 3 + 4 + 1 + 3) and rollout.group_size == 3
    assert rollout.attention_mask[3:, 0].eq(0).all() and rollout.attention_mask[:, 1:].eq(1).all()
    assert torch.equal(rollout.input_ids[:, 3 + 4], torch.full((6,), 13))  # the fixed delimiter
    assert rollout.maskable[:, 4].eq(False).all() and rollout.maskable.sum() == 6 * 7
    assert not bool((rollout.input_ids == actor.mask_token_id).any())
    assert rollout.answer_ids.shape == (6, 3) and rollout.metrics["lockstep/nfe"] > 0
    assert actor.module.training  # mode restored
    # Replaying every stage of the commit order scores each token in the very context the sampler used:
    # with maskgit_plus at temperature 1 that is the probability it drew the token with.
    plan = rollout.draw_plan("trajectory", num_draws=64)
    with torch.no_grad():
        estimate = actor.logprob(rollout.input_ids, rollout.attention_mask, plan).logp
    scored = rollout.loss_mask
    torch.testing.assert_close(estimate[scored], rollout.commit_prob[scored].log(), atol=1e-5, rtol=1e-5)


def test_rollout_rejects_greedy_groups(tiny_dream_factory) -> None:
    actor = _lora_actor(tiny_dream_factory)
    with pytest.raises(ValueError, match="temperature > 0"):
        actor.rollout([[3, 7, 1]], n=2, cfg=_rollout_cfg(temperature=0.0))
    with pytest.raises(ValueError, match="is empty"):
        actor.rollout([[]], n=1, cfg=_rollout_cfg())


@pytest.mark.gpu
def test_bf16_actor_on_cuda(tiny_dream_factory) -> None:
    actor = DreamActor(tiny_dream_factory(seed=0).cuda(), ActorConfig(lora=LoraSettings(rank=4, alpha=8)))
    actor.train()
    plan = draw_coupled_masks(LOSS.cuda(), LOSS.cuda(), generator=torch.Generator().manual_seed(0))
    logp = actor.logprob(IDS.cuda(), None, plan).logp
    logp.sum().backward()
    assert torch.isfinite(logp).all() and all(p.grad is not None for p in actor.trainable_parameters())


_TWO_RANK_SCRIPT = r'''
import os, sys, torch, torch.distributed as dist

IDS = torch.tensor([[3, 7, 1, 2, 9, 5, 11], [4, 4, 6, 8, 1, 12, 2]])
LOSS = torch.ones(2, 4, dtype=torch.bool)

def make():  # heavy imports only in the ranks, not in the launcher
    sys.path.insert(0, os.environ["RL_TESTS_DIR"])
    from conftest import build_tiny_dream
    from rl.actor import ActorConfig, DreamActor, LoraSettings
    actor = DreamActor(build_tiny_dream(seed=0), ActorConfig(lora=LoraSettings(rank=4, alpha=8), param_dtype="float32"))
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero adapters, identical on every rank
        for p in actor.trainable_parameters():
            p.normal_(0, 0.1)
    return actor.train()

def work(rank, port, out):
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from rl.actor import shard_fsdp2
    from rl.logprob import draw_coupled_masks
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    plan = draw_coupled_masks(LOSS, LOSS, generator=torch.Generator().manual_seed(0))
    actor = make()
    shard_fsdp2(actor.module, init_device_mesh("cpu", (2,)))
    rows = slice(rank, rank + 1)
    actor.logprob(IDS[rows], None, plan.select(rows)).logp.sum().backward()  # FSDP averages over ranks
    grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad.full_tensor() for n, p in actor.module.named_parameters()
             if p.grad is not None}
    if rank == 0:
        reference = make()
        (reference.logprob(IDS, None, plan).logp.sum() / 2).backward()
        expected = {n: p.grad for n, p in reference.module.named_parameters() if p.grad is not None}
        worst = max(float((grads[n] - g).abs().max()) for n, g in expected.items())
        sharded = sum(p.to_local().numel() for p in actor.module.parameters()) < sum(p.numel() for p in reference.module.parameters())
        torch.save({"keys_equal": grads.keys() == expected.keys(), "worst": worst, "sharded": sharded}, out)
    dist.barrier()  # rank 1 must not tear gloo down while rank 0 is still computing (SIGABRT seen in CI)
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(work, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
'''


@pytest.mark.slow
def test_fsdp2_two_ranks_shard_and_average_gradients(tmp_path) -> None:
    """Two gloo ranks, one row each: the sharded LoRA gradients equal the unsharded full-batch mean."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANK_SCRIPT)
    out = tmp_path / "result.pt"
    env = dict(os.environ, RL_TESTS_DIR=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), str(_free_port()), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(out)
    assert result["keys_equal"] and result["sharded"]
    assert result["worst"] < 1e-5


def test_from_checkpoint_dir_rollout_texts_and_adapter_reload(tiny_dream_dir, tmp_path) -> None:
    """The HF-layout tiny Dream: load, roll out with texts, save the adapter, reload it on a fresh base."""
    from decoding.tokenizer import build_chat_prompt, decode_completion, load_tokenizer

    tokenizer = load_tokenizer(tiny_dream_dir)
    cfg = ActorConfig(lora=LoraSettings(rank=4, alpha=8), param_dtype="float32")
    actor = DreamActor.from_pretrained(tiny_dream_dir, cfg)
    prompt = tokenizer.encode(build_chat_prompt(tokenizer, "Write add(a, b)."), add_special_tokens=False)
    delimiter = tokenizer.encode("\n```python\n", add_special_tokens=False)
    lockstep = LockstepCfg(r_len=6, a_len=6, temperature=1.0, tau_r=0.5, tau_a=0.5)
    rollout_cfg = RolloutConfig(lockstep=lockstep, delimiter_ids=tuple(delimiter), valid_vocab_size=len(tokenizer))
    rollout = actor.rollout([prompt], n=2, cfg=rollout_cfg, tokenizer=tokenizer)
    assert rollout.answers == [decode_completion(tokenizer, row) for row in rollout.answer_ids]
    assert rollout.reasonings is not None and len(rollout.reasonings) == 2
    _sgd_steps(actor, steps=1, lr=0.1)
    out = actor.save(tmp_path / "adapter")
    again = DreamActor.from_pretrained(tiny_dream_dir, cfg, adapter_dir=out)
    plan = rollout.draw_plan("coupled", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = actor.logprob(rollout.input_ids, rollout.attention_mask, plan).logp
        torch.testing.assert_close(again.logprob(rollout.input_ids, rollout.attention_mask, plan).logp, expected)
