"""Batched Dream decoding for the verl rollout server: config, model loading, sampling, weight installs.

Why a separate module: :mod:`rl.verl.rollout` is verl plumbing (actors, registries); this is the part that
touches the model and :mod:`decoding`, and it is usable (and tested) without Ray or verl.

Contract of :func:`sample_batch`: prompts are token-id lists (the agent loop already applied the chat
template); every completion is the canvas exactly as it was decoded (lockstep: the whole R block with its
pad/EOS run, the delimiter, the whole A block with its tail; other samplers: all ``max_new_tokens``
positions), so the trainer scores each token at the position and in the context the sampler committed it in.
Two per-row views come with it: the *scored* mask (each generated block's content through its first stop token
``<|endoftext|>`` / ``<|im_end|>``; the run after it and the delimiter are context only) and the *reward text*
(R text + delimiter + A text, each block cut at its first stop), what a user reads and the reward scores.
``docs/rl.md`` (Masks and salts) explains the choice.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from typing import Any

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
SAMPLERS = ("fast", "lockstep", "diffusion")


@dataclass(frozen=True)
class DreamSamplerConfig:
    """Rollout settings (``actor_rollout_ref.rollout.custom.dream.*``).

    ``sampler``: ``fast`` (:func:`decoding.fast.fast_generate`: block-wise cached threshold decoding),
    ``lockstep`` (Reasoning/Answer blocks decoded in lockstep) or ``diffusion`` (reference Dream denoising);
    ``options``: keyword arguments forwarded verbatim to that sampler (``alg``, ``block_size``, ``threshold``,
    ``steps``...); ``max_batch``: most rows decoded in one batch; ``batch_wait_s``: how long the server lets
    requests accumulate before decoding when nobody announced how many to expect (validation);
    ``expect_timeout_s``: how long it waits for the rows a training step announced
    (:meth:`rl.verl.rollout.DreamRolloutServer.expect_rows`) before it decodes what arrived and warns;
    ``gif_every``/``gif_dir``: every N training steps, save an animated GIF of the lockstep canvas fill of the
    first row (lockstep sampler only; 0 = never); ``score_reasoning_run``: also score the R block's run after
    its first stop (default: context only; ``recipe=demo`` turns it on, measured in ``docs/demo.md``).
    Temperature/top-p/top-k come from verl's rollout config.
    """

    sampler: str = "fast"
    max_batch: int = 64
    batch_wait_s: float = 0.05
    expect_timeout_s: float = 300.0
    response_length: int = 512
    gif_every: int = 0
    gif_dir: str | None = None
    score_reasoning_run: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"rollout.custom.dream.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.max_batch < 1 or self.response_length < 1:
            raise ValueError("rollout.custom.dream: max_batch and response_length must be >= 1")
        if self.batch_wait_s < 0 or self.expect_timeout_s <= 0:
            raise ValueError("rollout.custom.dream: batch_wait_s must be >= 0 and expect_timeout_s > 0")
        if self.gif_every < 0 or (self.gif_every > 0 and not self.gif_dir):
            raise ValueError("rollout.custom.dream: gif_every must be >= 0 and needs gif_dir")

    @classmethod
    def from_dict(cls, values: dict[str, Any], response_length: int) -> DreamSamplerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown rollout.custom.dream keys {unknown}; known: {sorted(known)}")
        values = dict(values)
        values["response_length"] = int(values.get("response_length") or response_length)
        values["options"] = dict(values.get("options") or {})
        return cls(**values)


@dataclass
class SampleResult:
    """Completions (the decoded canvas of each row, whole), their scored masks and reward texts (module
    docstring), the stop ids, per-row extra fields and, for the lockstep sampler, the decoder's trace
    (:class:`decoding.lockstep_trace.LockstepResult`)."""

    completions: list[list[int]]
    scored_masks: list[list[int]]
    reward_texts: list[str]
    stop_ids: set[int]
    row_extras: list[dict[str, Any]]
    trace: Any = None
    # per row: (start, length) of tokens not generated
    fixed_spans: list[tuple[int, int] | None] | None = None


# Extra fields of a rollout row. The scored mask (1 = in the loss) becomes verl's response_mask in our agent
# loop (rl/verl/rollout.py); the reward text reaches rl/verl/reward.py:compute_score through verl's
# extra_info.
SCORED_MASK_FIELD = "lockstep_scored_mask"


def load_rollout_model(path: str, dtype: str, device: str,
                       trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Our Dream model (eval mode) and tokenizer from a checkpoint directory; CPU always runs float32."""
    from decoding import load_dream
    from decoding.tokenizer import load_tokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"rollout.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = torch.float32 if device == "cpu" else _DTYPES[dtype]
    model = load_dream(path, dtype=torch_dtype, device=device)
    model.eval()
    return model, load_tokenizer(path)



def cut_after_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """Tokens up to and including the first stop id (all tokens if none)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: index + 1]
    return tokens


def block_spans(length: int, fixed_span: tuple[int, int] | None) -> list[tuple[int, int]]:
    """(start, end) of the generated blocks of a completion: the parts before and after the fixed span."""
    if fixed_span is None:
        return [(0, length)]
    start, size = fixed_span
    return [(0, start), (start + size, length)]


def scored_mask(tokens: list[int], stop_ids: set[int], fixed_span: tuple[int, int] | None,
                score_reasoning_run: bool = False) -> list[int]:
    """1 on each generated block's content through its first stop token, 0 on the run after it and on the
    fixed span: what enters the loss (the stop token carries the length decision; the rest is context).
    ``score_reasoning_run``: the first block of a lockstep canvas (R) is scored whole, its run included."""
    mask = [0] * len(tokens)
    for lo, hi in block_spans(len(tokens), fixed_span):
        whole = score_reasoning_run and fixed_span is not None and lo == 0
        kept = hi - lo if whole else len(cut_after_stop(tokens[lo:hi], stop_ids))
        mask[lo:lo + kept] = [1] * kept
    return mask


def reward_text(tokenizer: Any, tokens: list[int], fixed_span: tuple[int, int] | None) -> str:
    """The text a user reads: each generated block cut at its first stop, the fixed span (delimiter)
    between."""
    from decoding.tokenizer import decode_completion

    blocks = [decode_completion(tokenizer, tokens[lo:hi]) for lo, hi in block_spans(len(tokens), fixed_span)]
    if fixed_span is None:
        return blocks[0]
    start, size = fixed_span
    return blocks[0] + tokenizer.decode(tokens[start:start + size]) + blocks[1]


def _generation_kwargs(sampling_params: dict[str, Any], config: DreamSamplerConfig) -> dict[str, Any]:
    temperature = float(sampling_params.get("temperature", 1.0) or 0.0)
    top_p = sampling_params.get("top_p")
    top_k = sampling_params.get("top_k")
    kwargs: dict[str, Any] = {
        "max_new_tokens": config.response_length,
        "temperature": temperature,
        "top_p": None if top_p is None or float(top_p) >= 1.0 else float(top_p),
        "top_k": None if top_k is None or int(top_k) <= 0 else int(top_k),
    }
    kwargs.update(config.options)
    return kwargs


def _lockstep_canvas(model: Any, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     kwargs: dict[str, Any]) -> tuple[list[list[int]], Any, dict,
                                                      list[tuple[int, int] | None]]:
    """Lockstep R/A decode; each completion is the canvas after the prompt, exactly as decoded:
    R block (``r_len`` tokens, pad run included), delimiter, A block (``a_len`` tokens, tail included)."""
    from decoding.lockstep import LockstepCfg, lockstep_sample, resolve_options

    options = dict(kwargs)
    budget = options.pop("max_new_tokens")
    options, delimiter = resolve_options(options)
    cfg = LockstepCfg(**options)
    delimiter_ids = tokenizer.encode(delimiter, add_special_tokens=False)
    if cfg.r_len + len(delimiter_ids) + cfg.a_len > budget:
        raise ValueError("lockstep canvas r_len + delimiter + a_len = "
                         f"{cfg.r_len + len(delimiter_ids) + cfg.a_len} exceeds the response length {budget} "
                         "(data.max_response_length)")
    result = lockstep_sample(model, input_ids, attention_mask, cfg, delimiter_ids=delimiter_ids,
                             valid_vocab_size=len(tokenizer))
    rows = result.sequences[:, result.layout.prompt_len:].tolist()
    spans: list[tuple[int, int] | None] = [(cfg.r_len, len(delimiter_ids))] * len(rows)
    metrics = {"nfe": float(result.nfe), "steps": float(result.steps), "wall_s": float(result.wall_s),
               "tokens_per_s": float(sum(len(r) for r in rows)) / max(float(result.wall_s), 1e-9)}
    return rows, result, metrics, spans


def generate_canvas(model: Any, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    kwargs: dict[str, Any], sampler: str
                    ) -> tuple[list[list[int]], Any, dict, list[tuple[int, int] | None]]:
    """Run decoding's sampler: completions (the decoded canvas after the prompt, whole), its trace (or None),
    metrics and per row the (start, length) of fixed tokens inside the completion (the lockstep delimiter;
    None for other samplers)."""
    prompt_len = input_ids.shape[1]
    if sampler == "fast":
        from decoding.fast import fast_generate

        result = fast_generate(model, input_ids, attention_mask, **kwargs)
        rows = result.sequences[:, prompt_len:].tolist()
        return rows, None, result.metrics(""), [None] * len(rows)
    if sampler == "lockstep":
        return _lockstep_canvas(model, tokenizer, input_ids, attention_mask, kwargs)
    generate = importlib.import_module("decoding.generate")
    sequences = generate.diffusion_generate(model, input_ids, attention_mask=attention_mask, **kwargs)
    if hasattr(sequences, "sequences"):
        sequences = sequences.sequences
    rows = sequences[:, prompt_len:].tolist()
    return rows, None, {}, [None] * len(rows)


@torch.no_grad()
def sample_batch(model: Any, tokenizer: Any, prompts: list[list[int]], sampling_params: dict[str, Any],
                 config: DreamSamplerConfig, seed: int) -> SampleResult:
    """Decode ``prompts`` as one batch with a fixed seed; see the module docstring for the output contract."""
    from decoding.tokenizer import left_pad, stop_token_ids

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = left_pad(prompts, int(pad_id), device)
    torch.manual_seed(seed)
    completions, trace, metrics, spans = generate_canvas(model, tokenizer, input_ids, attention_mask,
                                                          _generation_kwargs(sampling_params, config),
                                                          config.sampler)
    stops = stop_token_ids(tokenizer)
    extras = [{f"rollout/{k}": v for k, v in metrics.items()} for _ in completions]
    return SampleResult(completions=completions, stop_ids=stops, row_extras=extras, trace=trace,
                        fixed_spans=spans,
                        scored_masks=[scored_mask(row, stops, span, config.score_reasoning_run)
                                      for row, span in zip(completions, spans)],
                        reward_texts=[reward_text(tokenizer, row, span)
                                      for row, span in zip(completions, spans)])


def save_fill_gif(trace: Any, tokenizer: Any, folder: str, global_steps: int) -> str:
    """Animated GIF of the lockstep canvas fill of the batch's first row: ``<folder>/fill_step<N>.gif``."""
    from pathlib import Path

    from decoding.viz import render_frames, save_gif

    Path(folder).mkdir(parents=True, exist_ok=True)
    return str(save_gif(render_frames(trace, tokenizer, row=0),
                        Path(folder) / f"fill_step{global_steps}.gif"))


def apply_weights(model: Any, named_tensors: dict[str, torch.Tensor], peft_config: dict | None) -> Any:
    """Install trained weights into the rollout copy; returns the (possibly peft-wrapped) model.

    LoRA (``peft_config`` given): wraps the model with the same adapter config on first call, then loads the
    adapter tensors (peft state-dict names, as verl's ``collect_lora_params`` produces them). Full weights:
    ``load_state_dict`` of the given tensors. Raises ``ValueError`` if a tensor matches nothing.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if peft_config is not None:
        from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

        if not isinstance(model, PeftModel):
            allowed = {f.name for f in fields(LoraConfig)}
            config = LoraConfig(**{k: v for k, v in peft_config.items() if k in allowed and k != "peft_type"})
            model = get_peft_model(model, config)
            model.eval()
        state = {k: v.to(device=device, dtype=dtype) for k, v in named_tensors.items()}
        result = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"adapter tensors not in the rollout model: {unexpected[:5]}")
        return model
    state = {k: v.to(device=device, dtype=dtype) for k, v in named_tensors.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"weights not in the rollout model: {result.unexpected_keys[:5]}")
    return model
