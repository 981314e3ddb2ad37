"""Checkpoint resolution, model loading and batched generation for checkpoint evaluation.

Why: checkpoints come in three shapes — a full HF Dream directory, a peft LoRA adapter directory (whose base is
``base_model=`` or the adapter's ``base_model_name_or_path``), or a trainer step directory
(``<run>/global_step_N``) holding one of those a few levels down (verl writes ``actor/lora_adapter`` /
``actor/huggingface``). :func:`resolve_checkpoint` turns any of them into a :class:`ModelSource` with clear
errors; :func:`load_model` loads base + adapter (merged or not); :func:`generate_texts` runs the configured
sampler on a batch of prompt texts and returns decoded completions plus token counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evals.results import parse_step

ADAPTER_FILE = "adapter_config.json"
MODEL_FILE = "config.json"
# Where trainers put the loadable model inside a step directory, most specific first.
KNOWN_SUBDIRS = ("actor/lora_adapter", "lora_adapter", "adapter", "actor/huggingface", "huggingface", "model")


@dataclass(frozen=True)
class ModelSource:
    """What to load: ``model_dir`` (a full Dream dir) plus an optional peft ``adapter_dir`` on top of it."""

    model_dir: Path
    adapter_dir: Path | None
    step: int | None

    def describe(self) -> str:
        return f"{self.model_dir}" + (f" + adapter {self.adapter_dir}" if self.adapter_dir else "")


def _find_loadable(root: Path) -> Path | None:
    """``root`` itself when it holds a model/adapter, else a known subdir, else the shallowest match (depth 3)."""
    if (root / ADAPTER_FILE).is_file() or (root / MODEL_FILE).is_file():
        return root
    for sub in KNOWN_SUBDIRS:
        if (root / sub / ADAPTER_FILE).is_file() or (root / sub / MODEL_FILE).is_file():
            return root / sub
    for depth in (2, 3):
        hits = sorted(
            p.parent for name in (ADAPTER_FILE, MODEL_FILE) for p in root.glob("/".join(["*"] * (depth - 1) + [name]))
        )
        if hits:
            return hits[0]
    return None


def resolve_checkpoint(checkpoint: str | Path, base_model: str | Path | None = None,
                       step: int | None = None) -> ModelSource:
    """Resolve ``checkpoint`` (+ ``base_model`` for adapters) into a :class:`ModelSource`.

    Raises ValueError with the reason when the path is missing, holds no model or adapter, or an adapter's
    base cannot be found.
    """
    root = Path(checkpoint).expanduser()
    if not root.is_dir():
        raise ValueError(f"checkpoint {root} is not a directory")
    found = _find_loadable(root)
    if found is None:
        raise ValueError(f"checkpoint {root} holds no Dream model ({MODEL_FILE}) or LoRA adapter ({ADAPTER_FILE})")
    step = step if step is not None else parse_step(found)
    if not (found / ADAPTER_FILE).is_file():
        return ModelSource(found, None, step)
    if base_model is None:
        base_model = json.loads((found / ADAPTER_FILE).read_text()).get("base_model_name_or_path")
        if not base_model:
            raise ValueError(f"adapter {found} names no base model: pass base_model=PATH")
    base = Path(base_model).expanduser()
    if not (base / MODEL_FILE).is_file():
        raise ValueError(f"base model {base} (for adapter {found}) is not a Dream checkpoint dir: pass base_model=PATH")
    return ModelSource(base, found, step)


def load_model(source: ModelSource, dtype: torch.dtype, device: torch.device, merge_adapter: bool = True
               ) -> tuple[torch.nn.Module, Any]:
    """Load the Dream model (+ LoRA adapter, merged when ``merge_adapter``) in eval mode, and its tokenizer.

    The tokenizer comes from the adapter dir when it ships one (trainers may save it there), else the model dir.
    """
    from decoding import load_dream
    from decoding.tokenizer import load_tokenizer

    model = load_dream(source.model_dir, dtype=dtype, device=device)
    tok_dir = source.model_dir
    if source.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.adapter_dir))
        if merge_adapter:
            model = model.merge_and_unload()
        if (source.adapter_dir / "tokenizer_config.json").is_file():
            tok_dir = source.adapter_dir
    model.eval()
    return model, load_tokenizer(tok_dir)


def _sampler(name: str) -> Callable[..., Any]:
    """The generation function of sampler ``name`` (imported lazily: each lives in its own module)."""
    if name == "plain":
        from decoding.generate import diffusion_generate

        return diffusion_generate
    if name == "fast":
        from decoding.fast import fast_generate

        return fast_generate
    if name == "lockstep":
        from decoding.lockstep import lockstep_sample

        return lockstep_sample
    raise ValueError(f"generation.sampler={name} is not one of plain, fast, lockstep")


def check_sampler_kwargs(sampler: str, kwargs: dict[str, Any]) -> None:
    """ValueError naming the unknown settings (or invalid values, for lockstep) before any model is loaded."""
    import inspect

    if sampler == "lockstep":
        import dataclasses

        from decoding.lockstep import LockstepCfg

        known = {f.name for f in dataclasses.fields(LockstepCfg)}
    else:
        params = inspect.signature(_sampler(sampler)).parameters
        known = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"generation.{sampler}: unknown setting(s) {unknown}; known: {sorted(known)}")
    if sampler == "lockstep":
        LockstepCfg(**kwargs)  # validates values with clear messages


def _sequences(output: Any) -> torch.Tensor:
    """The ``[B, P+G]`` token tensor of any sampler's return value."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("sequences", "tokens"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"sampler returned {type(output).__name__} without a sequences tensor")


@dataclass
class BatchOutput:
    """Decoded completions of one batch: the text to score, optional reasoning text, token counts, wall time."""

    completions: list[str]
    reasoning: list[str | None]
    num_tokens: list[int]  # content tokens (up to the first stop token; R + A blocks for lockstep)
    canvas_tokens: int  # completion positions decoded for the whole batch (what the sampler paid for)
    seconds: float


def _content_length(row: list[int], stops: set[int]) -> int:
    return next((i for i, t in enumerate(row) if t in stops), len(row))


def generate_texts(model: torch.nn.Module, tokenizer: Any, prompts: list[str], sampler: str,
                   kwargs: dict[str, Any], seed: int, delimiter: str = "", progress: bool = False) -> BatchOutput:
    """Generate one completion per (chat-formatted) prompt text with a fixed seed.

    ``plain``/``fast``: ``kwargs`` go to the sampler; the completion is the decoded text after the prompt.
    ``lockstep``: ``kwargs`` build a ``LockstepCfg``; ``delimiter`` (fixed text between the R and A blocks,
    e.g. an answer marker and an opening code fence) is tokenized; the completion is
    ``reasoning + delimiter + answer`` and the R block text is also returned as ``reasoning``.
    ``progress``: the sampler shows its own bar over the batch's steps (removed when the batch is done).
    """
    from decoding.tokenizer import decode_completion, encode_prompts, stop_token_ids

    generate = _sampler(sampler)
    device = next(model.parameters()).device
    input_ids, attention_mask = encode_prompts(tokenizer, prompts)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    call_kwargs = dict(kwargs)
    if sampler == "lockstep":
        from decoding.lockstep import LockstepCfg

        # valid_vocab_size: the GRPO rollout bans ids beyond the tokenizer (rl/rollout_decoding.py); so does evaluation
        call_kwargs = {"cfg": LockstepCfg(**kwargs), "valid_vocab_size": len(tokenizer),
                       "delimiter_ids": tokenizer.encode(delimiter, add_special_tokens=False) if delimiter else ()}
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        output = generate(model, input_ids, attention_mask, **call_kwargs, progress=progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    stops = stop_token_ids(tokenizer)
    prompt_len = input_ids.shape[1]
    if sampler == "lockstep":
        reasoning, answers = output.texts(tokenizer)
        counts = [_content_length(r, stops) + _content_length(a, stops)
                  for r, a in zip(output.reasoning_ids.tolist(), output.answer_ids.tolist())]
        canvas = output.sequences.shape[0] * (output.sequences.shape[1] - prompt_len)
        texts = [r + delimiter + a for r, a in zip(reasoning, answers)]
        return BatchOutput(texts, list(reasoning), counts, canvas, seconds)
    completion_ids = _sequences(output)[:, prompt_len:].cpu()
    counts = [_content_length(row, stops) for row in completion_ids.tolist()]
    texts = [decode_completion(tokenizer, row) for row in completion_ids]
    return BatchOutput(texts, [None] * len(texts), counts, completion_ids.numel(), seconds)
