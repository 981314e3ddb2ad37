"""Plain Dream-semantics diffusion sampler (``diffusion_generate``) and its CLI.

Faithful to the reference ``DreamGenerationMixin._sample`` (see ``shared/notes/decoding.md`` §5) with one fix:
the number of tokens committed per step is computed **per row** (the reference uses the batch mean, which lets a
row with fewer masks overwrite real tokens with the mask id). For batch 1, or rows with equal mask counts, the
output is token-for-token the reference's for the same weights, seed and settings.

CLI::

    python -m decoding.generate --model DIR --prompt "Write a function ..." [--alg entropy --steps 64
        --max-new-tokens 128 --temperature 0.2 --top-p 0.95 --dtype bf16 --device cuda]
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
    """``sequences [B*n, P + max_new_tokens]`` (prompt and left pads included); ``history``: one canvas per step."""

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


def _commit_counts(num_masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last_step: bool) -> torch.Tensor:
    """Per-row ``int(n_masked * (1 - s/t))`` in float32 as the reference (all remaining on the last step)."""
    if last_step:
        return num_masked
    return (num_masked.to(torch.float32) * (1 - s / t)).to(torch.long)


def _select_positions(
    full_confidence: torch.Tensor, counts: torch.Tensor, alg_temp: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Bool ``[B, N]``: per row the ``counts[b]`` positions to commit (top-k, or sampled if ``alg_temp > 0``)."""
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
        generation_tokens_hook_func: ``(step, x, logits) -> x``; called with ``(None, x, None)`` before step 0 and
            after every update (with the shifted, hooked logits).
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


def _validate(input_ids: torch.Tensor, max_new_tokens: int, steps: int, alg: str, mask_token_id: int | None) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [B, P] with P >= 1, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1 or steps < 1:
        raise ValueError(f"max_new_tokens and steps must be >= 1 (got {max_new_tokens}, {steps})")
    if mask_token_id is None:
        raise ValueError("no mask_token_id: pass one or use a model whose config has mask_token_id")
    if bool((input_ids[:, 0] == mask_token_id).any()):
        raise ValueError("the first prompt token is the mask id: position 0 can never be predicted (shifted logits)")
    confidence_for(alg)


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m decoding.generate", description="Generate a completion with a Dream checkpoint."
    )
    parser.add_argument("--model", required=True, help="Dream checkpoint directory (HF layout)")
    parser.add_argument("--prompt", required=True, help="user message (wrapped in the ChatML template)")
    parser.add_argument("--system", default="You are a helpful assistant.", help="system turn ('' for none)")
    parser.add_argument("--raw", action="store_true", help="use the prompt text as is, without the chat template")
    parser.add_argument("--alg", default="entropy", choices=["origin", "maskgit_plus", "topk_margin", "entropy"])
    parser.add_argument("--alg-temp", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: max-new-tokens)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--reference-exact", action="store_true",
        help="allow sampling the mask id and ids beyond the tokenizer (as the reference does)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_dream
    from .tokenizer import build_chat_prompt, decode_completion, encode_prompts, load_tokenizer

    args = _parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        model = load_dream(args.model, dtype=dtype, device=device)
        tokenizer = load_tokenizer(args.model)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = args.prompt if args.raw else build_chat_prompt(tokenizer, args.prompt, system=args.system or None)
    input_ids, attention_mask = encode_prompts(tokenizer, [text])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        sequences = diffusion_generate(
            model, input_ids.to(device), attention_mask.to(device), max_new_tokens=args.max_new_tokens,
            steps=args.steps or args.max_new_tokens, eps=args.eps, alg=args.alg, alg_temp=args.alg_temp,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, progress=True, generator=generator,
            valid_vocab_size=None if args.reference_exact else len(tokenizer),
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(decode_completion(tokenizer, sequences[0, input_ids.shape[1] :]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
