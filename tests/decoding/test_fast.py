"""Fast path: block-wise, KV-cached threshold decoding on the tiny Dream (cache exactness, guard,
batching)."""

from __future__ import annotations

import pytest
import torch

from decoding import load_dream
from decoding.fast import fast_generate
from decoding.tiny import make_tiny_dream
from decoding.tokenizer import build_chat_prompt, encode_prompts


# ------------------------------------------------------------------------------------------ tiny model
@pytest.fixture(scope="module")
def prompts(tiny_tok) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [build_chat_prompt(tiny_tok, "Write a function that adds two numbers."),
             build_chat_prompt(tiny_tok, "hi")]
    return encode_prompts(tiny_tok, texts)


@pytest.fixture(scope="module")
def one_layer_model(tmp_path_factory):
    """A 1-layer tiny Dream: layer-0 K/V depend only on token and position, so a cache is exact."""
    path = make_tiny_dream(tmp_path_factory.mktemp("one-layer") / "m", seed=1, num_layers=1,
                           initializer_range=0.3)
    return load_dream(path, dtype=torch.float32)


def test_fast_generate_invariants(tiny_model, prompts) -> None:
    ids, mask = prompts
    out = fast_generate(tiny_model, ids, mask, max_new_tokens=16, block_size=8, threshold=0.05,
                        eos_guard=False)
    p = ids.shape[1]
    assert torch.equal(out.sequences[:, :p], ids)
    assert not (out.sequences == tiny_model.config.mask_token_id).any()
    assert (out.commit_step[:, :p] == -1).all() and (out.commit_step[:, p:] >= 0).all()
    first, second = out.commit_step[:, p : p + 8], out.commit_step[:, p + 8 :]
    assert (first.max(-1).values < second.min(-1).values).all()  # blocks are decoded left to right
    assert out.nfe == sum(out.block_steps) and all(1 <= s <= 8 for s in out.block_steps)


def test_threshold_extremes_fix_the_step_count(tiny_model, prompts) -> None:
    ids, mask = prompts
    one_per_step = fast_generate(tiny_model, ids, mask, max_new_tokens=8, block_size=4, threshold=1.0,
                                 eos_guard=False)
    assert one_per_step.nfe == 8 and one_per_step.block_steps == [4, 4]
    p = ids.shape[1]
    assert sorted(one_per_step.commit_step[0, p:].tolist()) == list(range(8))
    all_at_once = fast_generate(tiny_model, ids, mask, max_new_tokens=8, block_size=4, threshold=1e-9,
                                eos_guard=False)
    assert all_at_once.nfe == 2 and all_at_once.block_steps == [1, 1]
    capped = fast_generate(tiny_model, ids, mask, max_new_tokens=8, block_size=4, threshold=1.0,
                           steps_per_block=2, eos_guard=False)
    assert capped.block_steps == [2, 2] and not (capped.sequences == tiny_model.config.mask_token_id).any()


@pytest.mark.parametrize(("cache", "refresh"), [("prefix", "full"), ("dual", "full"),
                                                ("dual", "incremental")])
def test_cached_equals_uncached_when_cache_is_exact(one_layer_model, prompts, cache, refresh) -> None:
    ids, mask = prompts
    kw = dict(max_new_tokens=12, block_size=4, threshold=0.2, eos_guard=False)
    ref = fast_generate(one_layer_model, ids, mask, cache="none", **kw)
    out = fast_generate(one_layer_model, ids, mask, cache=cache, refresh=refresh, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.commit_step, ref.commit_step)
    assert out.nfe == ref.nfe


def test_cached_first_step_of_each_block_is_exact_on_deep_model(tiny_model, prompts) -> None:
    """With 2 layers the cache is approximate after a block's first step, whose refresh forward is exact."""
    ids, mask = prompts
    kw = dict(max_new_tokens=8, block_size=4, threshold=1.0, eos_guard=False, steps_per_block=1)
    ref = fast_generate(tiny_model, ids, mask, cache="none", **kw)
    for cache in ("prefix", "dual"):
        assert torch.equal(fast_generate(tiny_model, ids, mask, cache=cache, **kw).sequences, ref.sequences)


def test_commit_first_commits_block_start_at_refresh(tiny_model, prompts) -> None:
    ids, mask = prompts
    out = fast_generate(tiny_model, ids, mask, max_new_tokens=8, block_size=4, threshold=1.0,
                        first_logit="commit_first", eos_guard=False)
    p = ids.shape[1]
    assert (out.commit_step[:, p] == 0).all() and (out.commit_step[:, p + 4] == 4).all()
    last = fast_generate(tiny_model, ids, mask, max_new_tokens=8, block_size=4, threshold=0.1,
                         first_logit="last_logit", eos_guard=False)
    assert not (last.sequences == tiny_model.config.mask_token_id).any()


def test_batch_row_equals_row_alone(tiny_model, prompts) -> None:
    ids, mask = prompts
    kw = dict(max_new_tokens=12, block_size=4, threshold=0.05, cache="prefix", eos_guard=False)
    batch = fast_generate(tiny_model, ids, mask, **kw)
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        alone = fast_generate(tiny_model, ids[row : row + 1, real], None, **kw)
        p_alone = int(real.sum())
        assert torch.equal(batch.sequences[row, ids.shape[1] :], alone.sequences[0, p_alone:])


def test_eos_guard_prevents_early_end_flood(tiny_model, prompts) -> None:
    """A huge end-of-text bonus makes EOS the top prediction everywhere: unguarded, it floods the tail at the
    first step; guarded, the first ``min_content`` tokens are content and the end run starts right after."""
    ids, mask = prompts
    eos = tiny_model.config.eos_token_id
    p = ids.shape[1]
    kw = dict(max_new_tokens=8, block_size=8, threshold=0.9, eos_penalty=-30.0, cache="prefix")
    flood = fast_generate(tiny_model, ids, mask, eos_guard=False, **kw)
    assert flood.nfe == 1 and (flood.sequences[:, p:] == eos).all()
    guarded = fast_generate(tiny_model, ids, mask, eos_guard=True, min_content=3, **kw)
    gen = guarded.sequences[:, p:]
    assert (gen[:, :3] != eos).all() and (gen[:, 3:] == eos).all()
    assert guarded.commit_step[:, p:].tolist() == [[0, 1, 2, 3, 3, 3, 3, 3]] * 2


def test_bad_inputs_raise_clear_errors(tiny_model, prompts) -> None:
    ids, mask = prompts
    with pytest.raises(ValueError, match="cache must be"):
        fast_generate(tiny_model, ids, mask, max_new_tokens=4, cache="bogus")
    with pytest.raises(ValueError, match="mask token"):
        fast_generate(tiny_model, torch.full_like(ids, tiny_model.config.mask_token_id), None,
                      max_new_tokens=4)
    with pytest.raises(ValueError, match="positive"):
        fast_generate(tiny_model, ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="refresh must be"):
        fast_generate(tiny_model, ids, mask, max_new_tokens=4, refresh="sometimes")


def test_bench_fast_tiny_smoke(tmp_path, run_bench) -> None:
    """`bench/bench_fast.py --tiny` runs every fast-path row next to the plain sampler and reports ratios."""
    out = tmp_path / "fast.json"
    report = run_bench("bench_fast", ["--tiny", "--batch", "2", "--steps", "4", "--prompt-len", "8",
                                      "--gen-len", "8"], out)
    rows = {r["sampler"]: r for r in report["rows"]}
    assert set(rows) == {"plain", "fast_prefix", "fast_dual", "fast_nocache", "fast_dual_incremental"}
    assert out.exists()
    # 8 tokens, 1 block, <= 4 steps
    assert all(r["nfe"] == 4 and r["speedup_vs_plain"] > 0 for r in rows.values())


def test_cli_prints_completion(tiny_dream_dir, capsys) -> None:
    from decoding.fast import main

    assert main(["--model", str(tiny_dream_dir), "--prompt", "hi", "--max-new-tokens", "8",
                 "--block-size", "4", "--threshold", "0.05", "--device", "cpu"]) == 0
    assert "fast/nfe=" in capsys.readouterr().err
    assert main(["--model", str(tiny_dream_dir), "--prompt", "hi", "--threshold", "2",
                 "--device", "cpu"]) == 2


@pytest.mark.gpu
def test_compiled_fast_path_matches_eager_on_cuda(tiny_dream_dir) -> None:
    model = load_dream(tiny_dream_dir, dtype=torch.float32, device="cuda")
    ids = torch.randint(0, 1500, (4, 24), generator=torch.Generator().manual_seed(0)).cuda()
    kw = dict(max_new_tokens=32, block_size=8, threshold=0.05, eos_guard=False, cache="dual")
    eager = fast_generate(model, ids, None, **kw)
    compiled = fast_generate(model, ids, None, compile=True, **kw)
    assert torch.equal(eager.sequences, compiled.sequences)
