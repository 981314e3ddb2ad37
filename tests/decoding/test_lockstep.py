"""Lockstep R/A decoder: scripted commit sequences (GS vs Jacobi), invariants on the tiny Dream,
equivalences."""

from __future__ import annotations

import math

import pytest
import torch

from decoding import load_dream
from decoding.generate import diffusion_generate
from decoding.lockstep import (
    DEFAULT_DELIMITER,
    LockstepCfg,
    LockstepTokensHook,
    delimiter_ids,
    lockstep_sample,
)
from decoding.tiny import make_tiny_dream
from decoding.tokenizer import build_chat_prompt, encode_prompts

DELIM = [12]


@pytest.fixture(scope="module")
def prompts(tiny_tok) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [build_chat_prompt(tiny_tok, "Write a function that adds two numbers."),
             build_chat_prompt(tiny_tok, "hi")]
    return encode_prompts(tiny_tok, texts)


class Scripted:
    """Logits hook replacing the model's logits with a script: block position j proposes ``tokens[j]`` with
    probability ``probs[j]``; A's probabilities switch to ``a_fresh`` once any R token is committed in ``x``.
    Records every canvas it was called with (one call per forward)."""

    def __init__(self, prompt_len, r_tok, r_p, a_tok, a_stale, a_fresh, mask_id, delim_len=1):
        self.p, self.mask_id = prompt_len, mask_id
        self.r_tok, self.r_p, self.a_tok, self.a_stale, self.a_fresh = r_tok, r_p, a_tok, a_stale, a_fresh
        self.delim_len = delim_len
        self.seen: list[torch.Tensor] = []

    def __call__(self, step, x, logits):
        self.seen.append(x.clone())
        r_len, vocab = len(self.r_tok), logits.shape[-1]
        assert logits.shape[1] == x.shape[1] - self.p  # canvas-aligned
        r_started = (x[:, self.p : self.p + r_len] != self.mask_id).any(-1)
        out = torch.zeros_like(logits)
        for b in range(x.shape[0]):
            a_p = self.a_fresh if bool(r_started[b]) else self.a_stale
            toks = self.r_tok + [0] * self.delim_len + self.a_tok
            probs = self.r_p + [0.5] * self.delim_len + a_p
            for c, (tok, p) in enumerate(zip(toks, probs)):
                out[b, c] = math.log((1 - p) / (vocab - 1))
                out[b, c, tok] = math.log(p)
        return out


def run_scripted(model, prompts, mode, max_fill_frac=1.0, **script):
    ids, mask = prompts
    hook = Scripted(ids.shape[1], mask_id=model.config.mask_token_id, **script)
    cfg = LockstepCfg(mode=mode, r_len=len(script["r_tok"]), a_len=len(script["a_tok"]), tau_r=0.9, tau_a=0.9,
                      max_fill_frac=max_fill_frac, eos_guard=False)
    return lockstep_sample(model, ids, mask, cfg, delimiter_ids=DELIM, logits_hook=hook), hook


SCRIPT = dict(r_tok=[101, 102, 103], r_p=[0.95, 0.6, 0.5], a_tok=[201, 202, 203],
              a_stale=[0.5, 0.45, 0.4], a_fresh=[0.97, 0.96, 0.4])


def blocks(res, values):
    return res.block("r", values)[0].tolist(), res.block("a", values)[0].tolist()


def test_jacobi_commit_sequence_is_exact(tiny_model, prompts) -> None:
    res, hook = run_scripted(tiny_model, prompts, "jacobi", **SCRIPT)
    # step 0: R0 clears tau; A sees no R yet (stale probs) -> top-1 fallback A0.
    # step 1: A sees R0 -> A1 (0.96).
    assert blocks(res, res.commit_step) == ([0, 1, 2], [0, 1, 2])
    assert blocks(res, res.commit_nfe) == ([0, 1, 2], [0, 1, 2])
    assert res.nfe == 3 and res.steps == 3
    assert blocks(res, res.sequences) == ([101, 102, 103], [201, 202, 203])


def ids_len(prompts) -> int:
    return prompts[0].shape[1]


def test_gauss_seidel_commit_sequence_is_exact(tiny_model, prompts) -> None:
    res, hook = run_scripted(tiny_model, prompts, "gauss_seidel", **SCRIPT)
    # step 0: R0 (forward 0), then A decides on a forward that already sees R0 -> A0 and A1 clear tau.
    assert blocks(res, res.commit_step) == ([0, 1, 2], [0, 0, 1])
    assert blocks(res, res.commit_nfe) == ([0, 2, 4], [1, 1, 3])
    assert res.nfe == 5 and res.steps == 3  # step 2 only R is open: one forward
    p, mask_id = ids_len(prompts), tiny_model.config.mask_token_id
    assert hook.seen[1][0, p].item() == 101  # A's forward of step 0 sees the fresh R0 (GS) ...
    jacobi_res, jacobi_hook = run_scripted(tiny_model, prompts, "jacobi", **SCRIPT)
    assert jacobi_hook.seen[0][0, p].item() == mask_id  # ... Jacobi's single forward does not


def test_gauss_seidel_fill_cap_sequence(tiny_model, prompts) -> None:
    res, _ = run_scripted(tiny_model, prompts, "gauss_seidel", max_fill_frac=0.5, **SCRIPT)
    # cap = max(1, floor(0.5 * remaining)) = 1 each step: A0 (0.97) then A1 (0.96) then A2
    assert blocks(res, res.commit_step) == ([0, 1, 2], [0, 1, 2])
    assert res.nfe == 6


def test_eos_guard_in_answer_block(tiny_model, prompts) -> None:
    ids, mask = prompts
    eos = tiny_model.config.eos_token_id
    script = dict(r_tok=[101], r_p=[0.99], a_tok=[30, eos, eos, eos], a_stale=[0.5, 0.99, 0.99, 0.99],
                  a_fresh=[0.5, 0.99, 0.99, 0.99])
    out = {}
    for guard in (True, False):
        hook = Scripted(ids.shape[1], mask_id=tiny_model.config.mask_token_id, **script)
        cfg = LockstepCfg(mode="jacobi", r_len=1, a_len=4, eos_guard=guard, min_content=1)
        out[guard] = lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=DELIM, logits_hook=hook)
    # guarded: the content token first, then the end run is allowed at the frontier and pads the rest
    assert out[True].block("a", out[True].commit_step)[0].tolist() == [0, 1, 1, 1]
    # unguarded: the confident end tokens flood the tail at step 0
    assert out[False].block("a", out[False].commit_step)[0].tolist() == [1, 0, 0, 0]
    assert out[True].answer_ids[0].tolist() == [30, eos, eos, eos]


def test_early_exit_commits_confident_answer_and_finishes(tiny_model, prompts) -> None:
    ids, mask = prompts
    hook = Scripted(ids.shape[1], r_tok=[101, 102, 103], r_p=[0.5, 0.4, 0.3], a_tok=[201, 202, 203],
                    a_stale=[0.8, 0.8, 0.8], a_fresh=[0.8, 0.8, 0.8], mask_id=tiny_model.config.mask_token_id)
    cfg = LockstepCfg(mode="jacobi", r_len=3, a_len=3, early_exit=0.75, eos_guard=False)
    res = lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=DELIM, logits_hook=hook)
    assert res.steps == 1 and res.nfe == 1 and res.exit_step.tolist() == [0, 0]
    assert blocks(res, res.sequences) == ([101, 102, 103], [201, 202, 203])
    assert res.metrics()["lockstep/early_exit_frac"] == 1.0


# ------------------------------------------------------------------------------------------ invariants
def check_invariants(res, cfg, seen, mask_id) -> None:
    lay, final = res.layout, res.sequences
    never = res.commit_step == -1
    assert never[:, : lay.prompt_len].all() and never[:, slice(*lay.span("delim"))].all()
    assert (not never[:, lay.span("r")[0] : lay.span("r")[1]].any()
            and not never[:, slice(*lay.span("a"))].any())
    assert not (final == mask_id).any() and res.steps <= cfg.step_bound
    for k, x_k in enumerate(seen):  # forward k saw exactly the tokens decided by earlier forwards
        assert torch.equal(x_k, res.canvas_at(k, mask_id)), f"forward {k}"
    for name, tau in (("r", cfg.tau_r), ("a", cfg.tau_a)):
        steps, probs = res.block(name, res.commit_step), res.block(name, res.commit_prob)
        for b in range(steps.shape[0]):
            for s in range(res.steps):
                remaining = int((steps[b] >= s).sum())
                now = steps[b] == s
                n = int(now.sum())
                assert (remaining == 0) == (n == 0), "an open block commits every step"
                assert n <= max(1, math.floor(cfg.max_fill_frac * remaining))
                if n > 1:
                    assert (probs[b][now] >= tau - 1e-6).all()


@pytest.mark.parametrize("mode", ["gauss_seidel", "jacobi"])
def test_invariants_on_tiny_model(tiny_model, prompts, mode) -> None:
    ids, mask = prompts
    seen: list[torch.Tensor] = []

    def record(step, x, logits):
        seen.append(x.clone())
        return logits

    cfg = LockstepCfg(mode=mode, r_len=6, a_len=8, tau_r=0.03, tau_a=0.02, max_fill_frac=0.5, eos_guard=False,
                      temperature=0.7, top_p=0.95)
    torch.manual_seed(0)
    res = lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=DELIM, logits_hook=record)
    check_invariants(res, cfg, seen, tiny_model.config.mask_token_id)
    assert torch.equal(res.sequences[:, : ids.shape[1]], ids)
    assert res.nfe == len(seen)
    m = res.metrics()
    assert m["lockstep/nfe"] == res.nfe and 0 < m["lockstep/tokens_per_nfe"] <= 14
    assert res.fill_a.shape == (res.steps, 2) and torch.all(res.fill_a[-1] == 1)


@pytest.mark.parametrize(("mode", "use_cache"), [("gauss_seidel", False), ("jacobi", False),
                                                 ("gauss_seidel", True)])
def test_batch_rows_are_independent(tiny_model, prompts, mode, use_cache) -> None:
    ids, mask = prompts
    cfg = LockstepCfg(mode=mode, r_len=5, a_len=6, tau_r=0.03, tau_a=0.03, max_fill_frac=0.5,
                      use_cache=use_cache, refresh_every=2)
    batch = lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=DELIM)
    p = ids.shape[1]
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        alone = lockstep_sample(tiny_model, ids[row : row + 1, real], None, cfg, delimiter_ids=DELIM)
        q = int(real.sum())
        assert torch.equal(batch.sequences[row, p:], alone.sequences[0, q:])
        assert torch.equal(batch.commit_step[row, p:], alone.commit_step[0, q:])


@pytest.mark.parametrize("mode", ["gauss_seidel", "jacobi"])
def test_fixed_nfe_runs_every_forward_and_changes_nothing(tiny_model, prompts, mode) -> None:
    ids, mask = prompts
    kw = dict(mode=mode, r_len=3, a_len=5, tau_r=0.03, tau_a=0.03)
    free = lockstep_sample(tiny_model, ids, mask, LockstepCfg(**kw), delimiter_ids=DELIM)
    fixed = lockstep_sample(tiny_model, ids, mask, LockstepCfg(fixed_nfe=True, **kw), delimiter_ids=DELIM)
    assert torch.equal(fixed.sequences, free.sequences) and torch.equal(fixed.commit_step, free.commit_step)
    assert fixed.steps == 5 and fixed.nfe == (10 if mode == "gauss_seidel" else 5)
    assert free.nfe < fixed.nfe or mode == "jacobi"


def test_root_forward_mode_matches_split_forward(tiny_model, prompts) -> None:
    """``root_forward`` (needed under FSDP2) gives the same logits as the decoder + head split."""
    from decoding.fast import CanvasForward

    ids, mask = prompts
    p = ids.shape[1]
    x = torch.cat([ids, torch.full((2, 8), tiny_model.config.mask_token_id)], 1)
    full_mask = torch.cat([mask, torch.ones(2, 8, dtype=mask.dtype)], 1)
    for cache, first_logit in (("none", "overlap"), ("prefix", "overlap"), ("dual", "last_logit")):
        split = CanvasForward(tiny_model, full_mask, cache=cache, first_logit=first_logit, root_forward=False)
        root = CanvasForward(tiny_model, full_mask, cache=cache, first_logit=first_logit, root_forward=True)
        for refresh in (True, False):
            a = split.predict(x, p + 2, p + 6, refresh=refresh, window_start=p)
            b = root.predict(x, p + 2, p + 6, refresh=refresh, window_start=p)
            assert a.shape == (2, 4, tiny_model.config.vocab_size) and torch.allclose(a, b, atol=1e-5)


def test_prefix_cache_is_exact_on_one_layer_model(tmp_path_factory, prompts) -> None:
    path = make_tiny_dream(tmp_path_factory.mktemp("one-layer-ls") / "m", seed=1, num_layers=1,
                           initializer_range=0.3)
    model = load_dream(path, dtype=torch.float32)
    ids, mask = prompts
    kw = dict(mode="gauss_seidel", r_len=5, a_len=6, tau_r=0.2, tau_a=0.2, refresh_every=3)
    ref = lockstep_sample(model, ids, mask, LockstepCfg(**kw), delimiter_ids=DELIM)
    cached = lockstep_sample(model, ids, mask, LockstepCfg(use_cache=True, **kw), delimiter_ids=DELIM)
    assert torch.equal(cached.sequences, ref.sequences) and torch.equal(cached.commit_nfe, ref.commit_nfe)


# ------------------------------------------------------------------------------------------ equivalences
@pytest.mark.parametrize(("alg", "temperature"), [("entropy", 0.0), ("maskgit_plus", 0.8)])
def test_single_block_schedule_equals_diffusion_generate(tiny_model, prompts, alg, temperature) -> None:
    ids, mask = prompts
    steps, gen = 6, 10
    torch.manual_seed(3)
    ref = diffusion_generate(tiny_model, ids, mask, max_new_tokens=gen, steps=steps, alg=alg,
                             temperature=temperature, top_p=0.9)
    cfg = LockstepCfg(mode="jacobi", r_len=0, a_len=gen, policy="schedule", max_steps=steps, alg=alg,
                      temperature=temperature, top_p=0.9, eos_guard=False)
    torch.manual_seed(3)
    res = lockstep_sample(tiny_model, ids, mask, cfg)
    assert torch.equal(res.sequences, ref)


def test_tokens_hook_form_equals_lockstep_sample(tiny_model, prompts) -> None:
    ids, mask = prompts
    cfg = LockstepCfg(mode="jacobi", r_len=4, a_len=5, tau_r=0.03, tau_a=0.03, max_fill_frac=0.5)
    direct = lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=DELIM)
    hook = LockstepTokensHook(ids.shape[1], cfg, DELIM, tiny_model.config.mask_token_id,
                              tiny_model.config.eos_token_id, steps=cfg.step_bound)
    seq = diffusion_generate(tiny_model, ids, mask, max_new_tokens=hook.layout.total - ids.shape[1],
                             steps=cfg.step_bound, alg="maskgit_plus", generation_tokens_hook_func=hook)
    assert torch.equal(seq, direct.sequences)
    assert torch.equal(hook.result().commit_step, direct.commit_step)


def test_num_samples_repeats_rows_and_delimiter_helper(tiny_model, tiny_tok, prompts) -> None:
    ids, mask = prompts
    delim = delimiter_ids(tiny_tok)
    assert tiny_tok.decode(delim) == DEFAULT_DELIMITER
    cfg = LockstepCfg(r_len=2, a_len=3, temperature=1.0, tau_r=0.5, tau_a=0.5)
    res = lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=delim, num_samples=3,
                          generator=torch.Generator().manual_seed(0))
    assert res.sequences.shape[0] == 6
    assert torch.equal(res.sequences[:3, : ids.shape[1]], ids[:1].expand(3, -1))
    assert torch.equal(res.block("delim")[0], torch.tensor(delim))
    with pytest.raises(ValueError, match="num_samples"):
        lockstep_sample(tiny_model, ids, mask, cfg, num_samples=0)


def test_texts_and_config_errors(tiny_model, tiny_tok, prompts) -> None:
    a_tok = tiny_tok.encode("def add")[:3]
    script = dict(SCRIPT, a_tok=a_tok + [0] * (3 - len(a_tok)))
    res, _ = run_scripted(tiny_model, prompts, "jacobi", **script)
    reasoning, answers = res.texts(tiny_tok)
    assert answers[0] == tiny_tok.decode(script["a_tok"]) and len(reasoning) == 2
    for bad in (dict(mode="sor"), dict(tau_a=0.0), dict(max_fill_frac=1.5), dict(policy="schedule"),
                dict(a_len=0), dict(early_exit=2.0)):
        with pytest.raises(ValueError):
            LockstepCfg(**bad)
    with pytest.raises(ValueError, match="mask token"):
        lockstep_sample(tiny_model, prompts[0], prompts[1], LockstepCfg(r_len=2, a_len=2),
                        delimiter_ids=[tiny_model.config.mask_token_id])


def test_bench_lockstep_tiny_smoke(tmp_path, run_bench) -> None:
    """`bench/bench_lockstep.py --tiny` runs GS/Jacobi (cached or not) next to the single-block sampler."""
    report = run_bench("bench_lockstep", ["--tiny", "--batch", "2", "--steps", "3", "--prompt-len", "8",
                                          "--gen-len", "10"], tmp_path / "ls.json")
    nfe = {r["sampler"]: r["nfe"] for r in report["rows"]}
    # canvas 10 = R 3 + delimiter 4 + A 3: at most 3 steps; GS runs two forwards per step while both are open
    assert nfe == {"plain": 3, "lockstep_jacobi": 3, "lockstep_gs": 6, "lockstep_jacobi_cached": 3,
                   "lockstep_gs_cached": 6}


@pytest.mark.gpu
def test_lockstep_runs_on_cuda_bf16_with_cache(tiny_dream_dir, tiny_tok) -> None:
    model = load_dream(tiny_dream_dir, dtype=torch.bfloat16, device="cuda")
    texts = [build_chat_prompt(tiny_tok, "Add two numbers."), build_chat_prompt(tiny_tok, "hi")]
    ids, mask = encode_prompts(tiny_tok, texts)
    for mode in ("gauss_seidel", "jacobi"):
        cfg = LockstepCfg(mode=mode, r_len=8, a_len=12, tau_r=0.05, tau_a=0.05, use_cache=True,
                          temperature=0.7)
        res = lockstep_sample(model, ids.cuda(), mask.cuda(), cfg, delimiter_ids=DELIM, num_samples=2,
                              generator=torch.Generator("cuda").manual_seed(0),
                              valid_vocab_size=len(tiny_tok))
        assert not (res.sequences == model.config.mask_token_id).any() and res.sequences.shape[0] == 4


FSDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from decoding import load_dream
from decoding.lockstep import LockstepCfg, lockstep_sample
model = load_dream(sys.argv[1], dtype=torch.float32)
ids = torch.randint(0, 1500, (2, 10), generator=torch.Generator().manual_seed(0))
cfg = LockstepCfg(r_len=3, a_len=4, tau_r=0.05, tau_a=0.05, use_cache=True, fixed_nfe=True)
ref = lockstep_sample(model, ids, None, cfg, delimiter_ids=[12])
mesh = init_device_mesh("cpu", (1,))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
out = lockstep_sample(model, ids, None, cfg, delimiter_ids=[12])
assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe == 8
dist.destroy_process_group()
print("FSDP-OK")
"""


@pytest.mark.slow
def test_lockstep_under_fsdp2_matches_unsharded(tiny_dream_dir) -> None:
    """FSDP2-sharded model (gloo, world size 1, CPU): the root-forward path is taken and decodes the same."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    proc = subprocess.run([sys.executable, "-c", FSDP_SCRIPT, str(tiny_dream_dir), port], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0 and "FSDP-OK" in proc.stdout, proc.stderr[-2000:]
