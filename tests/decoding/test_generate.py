"""diffusion_generate: token-for-token parity with a transcription of Dream's reference loop, batching,
hooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from decoding import DreamModel
from decoding.generate import DreamGenerateOutput, diffusion_generate, main
from decoding.sampling import shift_logits

ROOT = Path(__file__).resolve().parents[2]

MAX_NEW = 12
STEPS = 8


def _reference_sample_tokens(logits, temperature, top_p, top_k, margin=False, neg_entropy=False):
    """The reference's sample_tokens, written out independently (torch.distributions.Categorical included)."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        order_logits, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(order_logits, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop),
                                    torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        try:
            x0 = torch.distributions.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        except Exception:  # the reference falls back to argmax on any sampling error
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin:
        ordered = torch.sort(probs, dim=-1, descending=True)[0]
        confidence = ordered[:, 0] - ordered[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def _reference_generate(model, input_ids, *, alg, alg_temp, temperature, top_p, top_k, steps,
                        max_new, eps=1e-3):
    """Transcription of DreamGenerationMixin._sample for an unpadded batch (attention 'full', global RNG)."""
    mask_id = model.config.mask_token_id
    x = F.pad(input_ids, (0, max_new), value=mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x, attention_mask="full").logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + mask_id
            transfer = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer] = _reference_sample_tokens(mask_logits[transfer], temperature, top_p, top_k)
            x[mask_index] = x0.clone()
            continue
        confidence, x0 = _reference_sample_tokens(
            mask_logits, temperature, top_p, top_k, margin=alg == "topk_margin", neg_entropy=alg == "entropy"
        )
        num_mask = mask_index.sum() / mask_index.shape[0]
        k = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if k > 0:
            if alg_temp is None or alg_temp == 0:
                _, index = torch.topk(full_confidence, k)
            else:
                index = torch.multinomial(F.softmax(full_confidence / alg_temp, dim=-1), num_samples=k)
            proposal = torch.zeros_like(x) + mask_id
            proposal[mask_index] = x0.clone()
            rows = torch.arange(x.size(0)).unsqueeze(1).expand_as(index)
            x[rows, index] = proposal[rows, index]
    return x


def _prompt(model: DreamModel, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.mask_token_id, (1, n), generator=g)


SETTINGS = [
    dict(alg="origin", alg_temp=None, temperature=0.0, top_p=None, top_k=None),
    dict(alg="maskgit_plus", alg_temp=None, temperature=0.0, top_p=None, top_k=None),
    dict(alg="topk_margin", alg_temp=None, temperature=0.0, top_p=None, top_k=None),
    dict(alg="entropy", alg_temp=None, temperature=0.0, top_p=None, top_k=None),
    dict(alg="origin", alg_temp=None, temperature=0.7, top_p=0.9, top_k=None),
    dict(alg="entropy", alg_temp=None, temperature=0.5, top_p=0.95, top_k=50),
    dict(alg="maskgit_plus", alg_temp=0.5, temperature=0.8, top_p=None, top_k=None),
    dict(alg="topk_margin", alg_temp=None, temperature=1.0, top_p=None, top_k=20),
]


@pytest.mark.parametrize("settings", SETTINGS,
                         ids=lambda s: f"{s['alg']}-T{s['temperature']}-a{s['alg_temp']}")
def test_matches_reference_transcription(tiny_model: DreamModel, settings: dict) -> None:
    prompt = _prompt(tiny_model)
    torch.manual_seed(1234)
    expected = _reference_generate(tiny_model, prompt.clone(), steps=STEPS, max_new=MAX_NEW, **settings)
    torch.manual_seed(1234)
    got = diffusion_generate(tiny_model, prompt.clone(), max_new_tokens=MAX_NEW, steps=STEPS, **settings)
    assert got.shape == (1, prompt.shape[1] + MAX_NEW)
    assert torch.equal(got, expected)
    assert not (got == tiny_model.config.mask_token_id).any()
    assert torch.equal(got[:, : prompt.shape[1]], prompt)


def test_explicit_generator_is_reproducible(tiny_model: DreamModel) -> None:
    prompt = _prompt(tiny_model)
    runs = [
        diffusion_generate(
            tiny_model, prompt, max_new_tokens=MAX_NEW, steps=STEPS, alg="entropy", temperature=0.9,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus"])
def test_left_padded_batch_row_equals_row_alone(tiny_model: DreamModel, alg: str) -> None:
    short, long = _prompt(tiny_model, 4, seed=1), _prompt(tiny_model, 7, seed=2)
    pad = tiny_model.config.pad_token_id
    batch = torch.cat([torch.cat([torch.full((1, 3), pad), short], dim=1), long])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    out = diffusion_generate(tiny_model, batch, mask, max_new_tokens=MAX_NEW, steps=STEPS, alg=alg)
    alone_short = diffusion_generate(tiny_model, short, max_new_tokens=MAX_NEW, steps=STEPS, alg=alg)
    alone_long = diffusion_generate(tiny_model, long, max_new_tokens=MAX_NEW, steps=STEPS, alg=alg)
    assert torch.equal(out[0, 3:], alone_short[0])
    assert torch.equal(out[1], alone_long[0])
    assert torch.equal(out[0, :3], torch.full((3,), pad))  # left pads kept


def test_per_row_counts_never_overwrite_real_tokens(tiny_model: DreamModel) -> None:
    """A hook that fills row 0's canvas early: the batch-mean count would write masks over real tokens."""
    prompt = torch.cat([_prompt(tiny_model, 5, seed=3)] * 2)
    mask_id = tiny_model.config.mask_token_id

    def fill_row0(step, x, logits):
        if step is None:
            x = x.clone()
            x[0, 5:-2] = 7
        return x

    out = diffusion_generate(tiny_model, prompt, max_new_tokens=MAX_NEW, steps=STEPS, alg="entropy",
                             generation_tokens_hook_func=fill_row0)
    assert not (out == mask_id).any()
    assert torch.equal(out[0, 5:-2], torch.full((MAX_NEW - 2,), 7))
    assert torch.equal(out[:, :5], prompt)


def test_hooks_are_called_at_reference_points(tiny_model: DreamModel) -> None:
    prompt = _prompt(tiny_model)
    token_calls, logit_calls = [], []

    def tokens_hook(step, x, logits):
        token_calls.append((step, x.clone(), None if logits is None else logits.clone()))
        return x

    def logits_hook(step, x, logits):
        logit_calls.append((step, x.clone()))
        assert torch.equal(logits[:, 0], logits[:, 1])  # already shifted
        boosted = logits.clone()
        boosted[..., 42] += 1e4  # force token 42 everywhere
        return boosted

    out = diffusion_generate(
        tiny_model, prompt, max_new_tokens=MAX_NEW, steps=STEPS, alg="maskgit_plus",
        generation_tokens_hook_func=tokens_hook, generation_logits_hook_func=logits_hook,
        output_history=True, return_dict_in_generate=True,
    )
    assert isinstance(out, DreamGenerateOutput)
    assert [c[0] for c in token_calls] == [None, *range(STEPS)]
    assert token_calls[0][2] is None and (token_calls[0][1][0, 6:] == tiny_model.config.mask_token_id).all()
    assert [c[0] for c in logit_calls] == list(range(STEPS))
    assert all(call[2][0, :, 42].min() > 1e3 for call in token_calls[1:])  # tokens hook sees hooked logits
    assert torch.equal(out.sequences[0, 6:], torch.full((MAX_NEW,), 42))
    assert len(out.history) == STEPS and torch.equal(out.history[-1], out.sequences)
    assert torch.equal(out.history[0], token_calls[1][1])


def test_num_return_sequences_and_history_flag(tiny_model: DreamModel) -> None:
    prompt = _prompt(tiny_model)
    out = diffusion_generate(tiny_model, prompt, max_new_tokens=4, steps=2, alg="entropy", temperature=1.0,
                             num_return_sequences=3, output_history=False, return_dict_in_generate=True)
    assert out.sequences.shape == (3, 10) and out.history is None


def test_valid_vocab_size_excludes_mask_and_out_of_tokenizer_ids(tiny_model: DreamModel, tiny_tok) -> None:
    prompt = _prompt(tiny_model)
    mask_id = tiny_model.config.mask_token_id

    def favour_invalid(step, x, logits):
        boosted = logits.clone()
        boosted[..., mask_id] += 100
        boosted[..., -1] += 50  # id beyond the tokenizer
        return boosted

    out = diffusion_generate(tiny_model, prompt, max_new_tokens=MAX_NEW, steps=STEPS, alg="entropy",
                             generation_logits_hook_func=favour_invalid, valid_vocab_size=len(tiny_tok))
    assert (out[:, 6:] < len(tiny_tok)).all() and not (out == mask_id).any()


def test_shift_logits_with_last_logit() -> None:
    logits = torch.arange(6.0).view(1, 3, 2)
    assert shift_logits(logits).tolist() == [[[0, 1], [0, 1], [2, 3]]]
    assert shift_logits(logits, torch.tensor([[9.0, 9.0]])).tolist() == [[[9, 9], [0, 1], [2, 3]]]


def test_bad_inputs_raise_value_error(tiny_model: DreamModel) -> None:
    with pytest.raises(ValueError, match="unknown alg"):
        diffusion_generate(tiny_model, _prompt(tiny_model), max_new_tokens=2, steps=2, alg="greedy")
    with pytest.raises(ValueError, match="position 0"):
        diffusion_generate(tiny_model, torch.tensor([[tiny_model.config.mask_token_id, 3]]), max_new_tokens=2)


def test_cli_prints_completion_and_rejects_bad_dir(tiny_dream_dir, tmp_path, capsys) -> None:
    rc = main(["--model", str(tiny_dream_dir), "--prompt", "Write add(a, b)", "--steps", "4",
               "--max-new-tokens", "8", "--device", "cpu"])
    assert rc == 0
    assert capsys.readouterr().out.endswith("\n")  # the decoded completion line
    assert main(["--model", str(tmp_path), "--prompt", "x", "--device", "cpu"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_bench_tiny_smoke(tmp_path) -> None:
    """`bench/bench_decoding.py --tiny` runs the benchmark code end to end on CPU and writes its JSON
    report."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_decoding.py"
    spec = importlib.util.spec_from_file_location("bench_decoding", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--batch", "1", "2", "--steps", "4", "--prompt-len", "8", "--gen-len", "8",
                "--json", str(out)])
    report = __import__("json").loads(out.read_text())
    rows = report["rows"]
    assert [(r["batch"], r["steps"]) for r in rows] == [(1, 4), (2, 4)]
    assert all(r["tokens_per_s"] > 0 and r["nfe"] == 4 and r["speedup_vs_plain"] == 1.0 for r in rows)
    assert report["model"]["config"] == "tiny"


def test_sample_tokens_exact_small_cases() -> None:
    from decoding.sampling import (
        confidence_for,
        invalid_token_mask,
        sample_tokens,
        top_k_logits,
        top_p_logits,
    )

    probs = torch.tensor([[0.5, 0.3, 0.2]])
    logits = probs.log()
    low = torch.finfo(torch.float32).min
    # cumulative 0.5, 0.8, 1.0 > 0.6 -> shifted right: the first token over the threshold (0.3) is kept
    assert top_p_logits(logits, 0.6)[0, 2] == low and (top_p_logits(logits, 0.6)[0, :2]
                                                       == logits[0, :2]).all()
    assert (top_k_logits(logits, 1)[0, 1:] == low).all()
    conf, x0 = sample_tokens(logits)
    assert x0.tolist() == [0] and torch.allclose(conf, torch.tensor([0.5]))
    margin, _ = sample_tokens(logits, **confidence_for("topk_margin"))
    assert torch.allclose(margin, torch.tensor([0.2]))
    entropy, _ = sample_tokens(logits, **confidence_for("entropy"))
    assert torch.allclose(entropy, (probs * (probs + 1e-10).log()).sum(-1))
    kept, _ = sample_tokens(logits, top_p=0.6, **confidence_for("maskgit_plus"))
    assert torch.allclose(kept, torch.tensor([0.5 / 0.8]))  # confidence from the filtered distribution
    assert sample_tokens(logits, temperature=1.0, top_k=1)[1].tolist() == [0]
    masked = invalid_token_mask(torch.zeros(1, 5), mask_token_id=1, tokenizer_size=3)
    assert masked.tolist() == [[0.0, float("-inf"), 0.0, float("-inf"), float("-inf")]]


def test_cli_runs_every_sampler_and_rejects_options_of_another(tiny_dream_dir, capsys) -> None:
    """``--sampler plain|fast|lockstep`` reuse the library samplers (same tokens as calling them directly);
    an option of another sampler is a one-line error instead of being silently ignored."""
    from decoding import load_dream, load_tokenizer
    from decoding.fast import fast_generate
    from decoding.fast import main as fast_main
    from decoding.lockstep import LockstepCfg, lockstep_sample
    from decoding.tokenizer import build_chat_prompt, decode_completion, encode_prompts

    common = ["--model", str(tiny_dream_dir), "--prompt", "Write add(a, b)", "--device", "cpu", "--seed", "3"]
    model, tok = load_dream(tiny_dream_dir, dtype=torch.float32), load_tokenizer(tiny_dream_dir)
    ids, mask = encode_prompts(tok, [build_chat_prompt(tok, "Write add(a, b)",
                                                       system="You are a helpful assistant.")])

    assert main([*common, "--sampler", "fast", "--max-new-tokens", "8", "--block-size", "4"]) == 0
    expected = fast_generate(model, ids, mask, max_new_tokens=8, block_size=4, valid_vocab_size=len(tok),
                             generator=torch.Generator().manual_seed(3))
    out = capsys.readouterr()
    assert out.out == decode_completion(tok, expected.sequences[0, ids.shape[1]:]) + "\n"
    assert "nfe=" in out.err  # the sampler's metrics go to stderr

    assert main([*common, "--sampler", "lockstep", "--r-len", "3", "--a-len", "5", "--mode", "jacobi"]) == 0
    result = lockstep_sample(model, ids, mask, LockstepCfg(mode="jacobi", r_len=3, a_len=5),
                             delimiter_ids=tok.encode("\n```python\n", add_special_tokens=False),
                             valid_vocab_size=len(tok), generator=torch.Generator().manual_seed(3))
    reasoning, answer = result.texts(tok)
    assert capsys.readouterr().out == f"{reasoning[0]}\n```python\n{answer[0]}\n"

    # decoding.fast = --sampler fast
    assert fast_main([*common, "--max-new-tokens", "8", "--block-size", "4"]) == 0
    assert capsys.readouterr().out == out.out
    assert main([*common, "--r-len", "3", "--block-size", "4"]) == 2
    assert capsys.readouterr().err == ("error: --sampler plain does not use --block-size (fast), --r-len "
                                       "(lockstep)\n")


@pytest.mark.parametrize("module", ["decoding.generate", "decoding.fast", "decoding.lockstep", "decoding.viz",
                                    "decoding.tiny"])
def test_python_m_has_no_runpy_warning(module) -> None:
    """``python -m decoding.X`` used to warn ``'decoding.X' found in sys.modules after import of package``
    (the package imported its CLI submodules); ``decoding.lockstep`` used to exit 0 doing nothing."""
    run = subprocess.run([sys.executable, "-W", "default", "-m", module, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "RuntimeWarning" not in run.stderr, run.stderr
    assert "usage:" in run.stdout
    if module == "decoding.lockstep":
        assert "--sampler {plain,fast,lockstep}" in run.stdout and "--r-len" in run.stdout
        bare = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert bare.returncode == 2 and "required: --model, --prompt" in bare.stderr


def test_auto_dtype_is_fp32_on_cpu_and_bf16_on_cuda() -> None:
    from decoding.devices import pick_dtype

    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype 'fp8' is not one of auto"):
        pick_dtype("fp8", torch.device("cpu"))
