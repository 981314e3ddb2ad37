"""Plain Dream-semantics diffusion sampler (``diffusion_generate``) and the CLI of every sampler.

Faithful to the reference ``DreamGenerationMixin._sample`` (Dream's ``generation_utils.py``) with one fix:
the number of tokens committed per step is computed **per row** (the reference uses the batch mean, which lets
a row with fewer masks overwrite real tokens with the mask id). For batch 1, or rows with equal mask counts,
the output is token-for-token the reference's for the same weights, seed and settings.

CLI (``--sampler plain|fast|lockstep``; ``python -m decoding.fast`` / ``decoding.lockstep`` are the same CLI
with that sampler preselected)::

    python -m decoding.generate --model DIR --prompt "Write a function ..." [--sampler plain --alg entropy
        --steps 64 --max-new-tokens 128 --temperature 0.2 --top-p 0.95 --dtype auto --device auto]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils import ModelOutput

from .model import DreamModel, key_padding_to_4d, padding_position_ids
from .sampling import confidence_for, invalid_token_mask, sample_tokens, shift_logits

TokensHook = Callable[[int | None, torch.Tensor, torch.Tensor | None], torch.Tensor]
LogitsHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DreamGenerateOutput(ModelOutput):
    """``sequences [B*n, P + max_new_tokens]`` (prompt and left pads included); ``history``: one canvas per
    step."""

    sequences: torch.Tensor | None = None
    history: list[torch.Tensor] | None = None


def _prepare_canvas(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int, mask_token_id: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Canvas right-padded with masks, plus (4-D mask, position ids) when the prompt mask has a zero."""
    x = F.pad(input_ids, (0, max_new_tokens), value=mask_token_id)
    if attention_mask is None or not bool((attention_mask == 0).any()):
        return x, None, None
    full_mask = F.pad(attention_mask.long(), (0, max_new_tokens), value=1)
    return x, key_padding_to_4d(full_mask, 0, x.shape[1]), padding_position_ids(full_mask)


def _commit_counts(num_masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                   last_step: bool) -> torch.Tensor:
    """Per-row ``int(n_masked * (1 - s/t))`` in float32 as the reference (all remaining on the last step)."""
    if last_step:
        return num_masked
    return (num_masked.to(torch.float32) * (1 - s / t)).to(torch.long)


def _select_positions(
    full_confidence: torch.Tensor, counts: torch.Tensor, alg_temp: float | None,
    generator: torch.Generator | None
) -> torch.Tensor:
    """Bool ``[B, N]``: per row the ``counts[b]`` positions to commit (top-k, or sampled if
    ``alg_temp > 0``)."""
    chosen = torch.zeros_like(full_confidence, dtype=torch.bool)
    k_max = int(counts.max())
    if k_max == 0:
        return chosen
    if alg_temp is None or alg_temp == 0:
        _, index = torch.topk(full_confidence, k_max, dim=-1)
        keep = torch.arange(k_max, device=index.device)[None] < counts[:, None]
        return chosen.scatter_(1, index, keep)
    probs = F.softmax(full_confidence / alg_temp, dim=-1)
    for row, k in enumerate(counts.tolist()):
        if k > 0:
            index = torch.multinomial(probs[row : row + 1], num_samples=k, generator=generator)
            chosen[row, index[0]] = True
    return chosen


def _origin_update(
    x: torch.Tensor, mask_index: torch.Tensor, mask_logits: torch.Tensor, p_transfer: float | torch.Tensor,
    mask_token_id: int, sampling: dict, generator: torch.Generator | None,
) -> torch.Tensor:
    x0 = torch.full((mask_logits.shape[0],), mask_token_id, dtype=torch.long, device=x.device)
    transfer = torch.rand(x0.shape, device=x.device, generator=generator) < p_transfer
    _, x0[transfer] = sample_tokens(mask_logits[transfer], **sampling, generator=generator)
    x = x.clone()
    x[mask_index] = x0
    return x


@torch.no_grad()
def diffusion_generate(
    model: DreamModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    steps: int = 512,
    eps: float = 1e-3,
    alg: str = "entropy",
    alg_temp: float | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    mask_token_id: int | None = None,
    generation_tokens_hook_func: TokensHook | None = None,
    generation_logits_hook_func: LogitsHook | None = None,
    output_history: bool = False,
    return_dict_in_generate: bool = False,
    num_return_sequences: int = 1,
    progress: bool = False,
    generator: torch.Generator | None = None,
    valid_vocab_size: int | None = None,
) -> torch.Tensor | DreamGenerateOutput:
    """Generate ``max_new_tokens`` tokens by iterative unmasking (Dream's ``diffusion_generate``).

    Args:
        input_ids: ``[B, P]`` prompt ids, LEFT-padded for batches (``P >= 1``).
        attention_mask: ``[B, P]`` 0/1 prompt mask; a mask without zeros takes the reference's "full" path.
        steps / eps: ``timesteps = linspace(1, eps, steps + 1)`` (float32); one forward per step.
        alg: ``origin`` (Bernoulli unmasking) or ``maskgit_plus`` / ``topk_margin`` / ``entropy`` (top-k by
            confidence; with ``alg_temp > 0`` positions are sampled from ``softmax(confidence / alg_temp)``).
        temperature / top_p / top_k: token sampling (temperature 0 = argmax).
        mask_token_id: defaults to ``model.config.mask_token_id``.
        generation_tokens_hook_func: ``(step, x, logits) -> x``; called with ``(None, x, None)`` before step 0
            and after every update (with the shifted, hooked logits).
        generation_logits_hook_func: ``(step, x, logits) -> logits``; every step after the shift.
        output_history / return_dict_in_generate: as the reference; history = canvas after every step.
        num_return_sequences: rows are ``repeat_interleave``d.
        generator: RNG for every random draw (None = torch's global RNG, as the reference).
        valid_vocab_size: opt-in fix: ids ``>= valid_vocab_size`` and the mask id never get sampled (None =
            reference-exact).

    Returns:
        ``[B * num_return_sequences, P + max_new_tokens]`` ids incl. prompt and pads, or a
        :class:`DreamGenerateOutput` when ``return_dict_in_generate``.
    """
    mask_token_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    _validate(input_ids, max_new_tokens, steps, alg, mask_token_id)
    flags = confidence_for(alg)
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    tokens_hook = generation_tokens_hook_func or (lambda step, x, logits: x)
    logits_hook = generation_logits_hook_func or (lambda step, x, logits: logits)
    if num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
    x, attn, position_ids = _prepare_canvas(input_ids, attention_mask, max_new_tokens, mask_token_id)
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    history: list[torch.Tensor] | None = [] if (return_dict_in_generate and output_history) else None

    x = tokens_hook(None, x, None)
    for i in tqdm(range(steps), desc="diffusion steps", disable=not progress, leave=False):
        mask_index = x == mask_token_id
        logits = shift_logits(model(x, attention_mask=attn, position_ids=position_ids).logits)
        logits = logits_hook(i, x, logits)
        sample_logits = logits if valid_vocab_size is None else invalid_token_mask(
            logits, mask_token_id, valid_vocab_size
        )
        mask_logits = sample_logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        last_step = i == steps - 1
        if alg == "origin":
            p_transfer = 1 if last_step else 1 - s / t
            x = _origin_update(x, mask_index, mask_logits, p_transfer, mask_token_id, sampling, generator)
        else:
            confidence, x0 = sample_tokens(mask_logits, **sampling, **flags, generator=generator)
            full_confidence = torch.full_like(x, float("-inf"), dtype=logits.dtype)
            full_confidence[mask_index] = confidence.to(logits.dtype)
            counts = _commit_counts(mask_index.sum(dim=1), t, s, last_step)
            chosen = _select_positions(full_confidence, counts, alg_temp, generator)
            proposal = torch.full_like(x, mask_token_id)
            proposal[mask_index] = x0
            x = torch.where(chosen, proposal, x)
        x = tokens_hook(i, x, logits)
        if history is not None:
            history.append(x.clone())
    if return_dict_in_generate:
        return DreamGenerateOutput(sequences=x, history=history)
    return x


def _validate(input_ids: torch.Tensor, max_new_tokens: int, steps: int, alg: str,
              mask_token_id: int | None) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [B, P] with P >= 1, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1 or steps < 1:
        raise ValueError(f"max_new_tokens and steps must be >= 1 (got {max_new_tokens}, {steps})")
    if mask_token_id is None:
        raise ValueError("no mask_token_id: pass one or use a model whose config has mask_token_id")
    if bool((input_ids[:, 0] == mask_token_id).any()):
        raise ValueError("the first prompt token is the mask id: position 0 can never be predicted (shifted "
                         "logits)")
    confidence_for(alg)


# Sampler-specific options of the CLI: argparse dest -> samplers it applies to (None default = not given).
_SAMPLER_OPTIONS = {
    "steps": ("plain",), "eps": ("plain", "lockstep"), "alg_temp": ("plain",),
    "block_size": ("fast",), "threshold": ("fast",), "steps_per_block": ("fast",), "cache": ("fast",),
    "first_logit": ("fast", "lockstep"), "refresh": ("fast",), "compile": ("fast",),
    "no_eos_guard": ("fast", "lockstep"), "min_content": ("fast", "lockstep"),
    "eos_penalty": ("fast", "lockstep"),
    "mode": ("lockstep",), "r_len": ("lockstep",), "a_len": ("lockstep",), "tau_r": ("lockstep",),
    "tau_a": ("lockstep",), "max_fill_frac": ("lockstep",), "max_steps": ("lockstep",),
    "use_cache": ("lockstep",), "delimiter": ("lockstep",),
}
# Defaults that differ between samplers (plain keeps Dream's reference defaults).
_SAMPLER_DEFAULTS = {
    "plain": {"alg": "entropy", "temperature": 0.2, "top_p": 0.95},
    "fast": {"alg": "maskgit_plus", "temperature": 0.0, "top_p": None},
    "lockstep": {"alg": "maskgit_plus", "temperature": 0.0, "top_p": None},
}
USAGE_EXAMPLES = """examples:
  python -m decoding.generate --model DIR --prompt "Write a function that reverses a string."
  python -m decoding.generate --model DIR --prompt "..." --sampler fast --block-size 32 --threshold 0.9
  python -m decoding.generate --model DIR --prompt "..." --sampler lockstep --r-len 64 --a-len 128 \
--mode jacobi
"""


def build_parser(prog: str = "python -m decoding.generate",
                 sampler: str = "plain") -> argparse.ArgumentParser:
    """The CLI of every sampler (``plain`` = :func:`diffusion_generate`, ``fast``, ``lockstep``)."""
    from .devices import DTYPE_CHOICES
    from .fast import CACHE_MODES, FIRST_LOGIT_MODES, REFRESH_MODES

    p = argparse.ArgumentParser(prog=prog, description="Generate a completion with a Dream checkpoint.",
                                epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Dream checkpoint directory (HF layout)")
    p.add_argument("--prompt", required=True, help="user message (wrapped in the ChatML template)")
    p.add_argument("--sampler", default=sampler, choices=["plain", "fast", "lockstep"],
                   help="plain: Dream's diffusion_generate; fast: block-wise threshold decoding with KV "
                        "cache; lockstep: Reasoning/Answer blocks (default: %(default)s)")
    p.add_argument("--system", default="You are a helpful assistant.", help="system turn ('' for none)")
    p.add_argument("--raw", action="store_true", help="use the prompt text as is, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, help="plain/fast: completion length")
    p.add_argument("--alg", default=None, choices=["origin", "maskgit_plus", "topk_margin", "entropy"],
                   help="confidence score (default: entropy for plain, maskgit_plus otherwise)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.2 for plain, 0 otherwise")
    p.add_argument("--top-p", type=float, default=None, help="default: 0.95 for plain, none otherwise")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--reference-exact", action="store_true",
                   help="allow sampling the mask id and ids beyond the tokenizer (as the reference does)")
    plain = p.add_argument_group("plain sampler")
    plain.add_argument("--steps", type=int, default=None, help="diffusion steps (default: max-new-tokens)")
    plain.add_argument("--eps", type=float, default=None, help="final timestep (default 1e-3; also lockstep)")
    plain.add_argument("--alg-temp", type=float, default=None,
                       help="sample positions from softmax(conf/alg_temp)")
    fast = p.add_argument_group("fast sampler")
    fast.add_argument("--block-size", type=int, default=None, help="default 32")
    fast.add_argument("--threshold", type=float, default=None, help="commit confidence (default 0.9)")
    fast.add_argument("--steps-per-block", type=int, default=None)
    fast.add_argument("--cache", default=None, choices=list(CACHE_MODES), help="default prefix")
    fast.add_argument("--first-logit", default=None, choices=list(FIRST_LOGIT_MODES),
                      help="default overlap (also lockstep)")
    fast.add_argument("--refresh", default=None, choices=list(REFRESH_MODES), help="default full")
    fast.add_argument("--no-eos-guard", action="store_true", default=None, help="also lockstep")
    fast.add_argument("--min-content", type=int, default=None, help="also lockstep")
    fast.add_argument("--eos-penalty", type=float, default=None, help="also lockstep")
    fast.add_argument("--compile", action="store_true", default=None, help="torch.compile the decoder (GPU)")
    lock = p.add_argument_group("lockstep sampler")
    lock.add_argument("--mode", default=None, choices=["gauss_seidel", "jacobi"], help="default gauss_seidel")
    lock.add_argument("--r-len", type=int, default=None, help="R (reasoning) block length (default 64)")
    lock.add_argument("--a-len", type=int, default=None, help="A (answer) block length (default 128)")
    lock.add_argument("--tau-r", type=float, default=None, help="R commit threshold (default 0.9)")
    lock.add_argument("--tau-a", type=float, default=None, help="A commit threshold (default 0.9)")
    lock.add_argument("--max-fill-frac", type=float, default=None, help="default 1.0")
    lock.add_argument("--max-steps", type=int, default=None)
    lock.add_argument("--use-cache", action="store_true", default=None, help="reuse the prompt's K/V")
    lock.add_argument("--delimiter", default=None, help="text between R and A (default: a python code fence)")
    return p


def _check_options(args: argparse.Namespace) -> None:
    """ValueError for an option of another sampler (it would be silently ignored)."""
    wrong = [name for name, samplers in _SAMPLER_OPTIONS.items()
             if getattr(args, name) is not None and args.sampler not in samplers]
    if wrong:
        flags = ", ".join(f"--{name.replace('_', '-')} ({'/'.join(_SAMPLER_OPTIONS[name])})"
                          for name in wrong)
        raise ValueError(f"--sampler {args.sampler} does not use {flags}")


def _given(args: argparse.Namespace, *names: str) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_sampler(model, tokenizer, args: argparse.Namespace, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, generator: torch.Generator) -> tuple[str, dict]:
    """(completion text, metrics) of one prompt with the sampler and options of ``args``."""
    from .tokenizer import decode_completion

    defaults = _SAMPLER_DEFAULTS[args.sampler]
    sampling = {"alg": args.alg or defaults["alg"],
                "temperature": defaults["temperature"] if args.temperature is None else args.temperature,
                "top_p": defaults["top_p"] if args.top_p is None else args.top_p, "top_k": args.top_k}
    vocab = None if args.reference_exact else len(tokenizer)
    prompt_len = input_ids.shape[1]
    if args.sampler == "plain":
        sequences = diffusion_generate(
            model, input_ids, attention_mask, max_new_tokens=args.max_new_tokens,
            steps=args.steps or args.max_new_tokens, **_given(args, "eps", "alg_temp"), **sampling,
            progress=True, generator=generator, valid_vocab_size=vocab)
        return decode_completion(tokenizer, sequences[0, prompt_len:]), {}
    if args.sampler == "fast":
        from .fast import fast_generate

        options = _given(args, "block_size", "threshold", "steps_per_block", "cache", "first_logit",
                         "refresh", "min_content", "eos_penalty", "compile")
        if args.no_eos_guard:
            options["eos_guard"] = False
        out = fast_generate(model, input_ids, attention_mask, max_new_tokens=args.max_new_tokens, **options,
                            **sampling, valid_vocab_size=vocab, generator=generator, progress=True)
        return decode_completion(tokenizer, out.sequences[0, prompt_len:]), out.metrics()
    from .lockstep import DEFAULT_DELIMITER, LockstepCfg, lockstep_sample

    options = {**_given(args, "mode", "r_len", "a_len", "tau_r", "tau_a", "max_fill_frac",
                                                 "max_steps", "use_cache", "eps", "first_logit",
                                                 "min_content", "eos_penalty")}
    if args.no_eos_guard:
        options["eos_guard"] = False
    cfg = LockstepCfg(**options, **sampling)
    delimiter = DEFAULT_DELIMITER if args.delimiter is None else args.delimiter
    out = lockstep_sample(model, input_ids, attention_mask, cfg,
                          delimiter_ids=tokenizer.encode(delimiter, add_special_tokens=False),
                          valid_vocab_size=vocab, generator=generator, progress=True)
    reasoning, answer = out.texts(tokenizer)
    return f"{reasoning[0]}{delimiter}{answer[0]}", out.metrics()


def main(argv: list[str] | None = None, prog: str = "python -m decoding.generate",
         sampler: str = "plain") -> int:
    """Exit 0 with the completion on stdout (metrics on stderr); 2 with one ``error:`` line for bad input."""
    from .checkpoint import load_dream
    from .devices import pick_device, pick_dtype
    from .tokenizer import build_chat_prompt, encode_prompts, load_tokenizer

    args = build_parser(prog, sampler).parse_args(argv)
    try:
        _check_options(args)
        device = pick_device(args.device)
        model = load_dream(args.model, dtype=pick_dtype(args.dtype, device), device=device)
        tokenizer = load_tokenizer(args.model)
        text = args.prompt if args.raw else build_chat_prompt(tokenizer, args.prompt,
                                                              system=args.system or None)
        input_ids, attention_mask = encode_prompts(tokenizer, [text])
        generator = torch.Generator(device=device).manual_seed(args.seed)
        completion, metrics = run_sampler(model, tokenizer, args, input_ids.to(device),
                                          attention_mask.to(device), generator)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(completion)
    if metrics:
        print(" ".join(f"{k}={v:.3g}" for k, v in metrics.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
