"""Tokenizer helpers: load Dream's tokenizer via transformers, build ChatML prompts, pad left, decode safely.

Dream's tokenizer is Qwen2 byte-level BPE plus ``<|beginoftext|>`` and ``<|mask|>``; eos = pad =
``<|endoftext|>`` and ``<|im_end|>`` ends an assistant turn. The hub checkpoint names a "remote code"
tokenizer class (``tokenizer_class: DreamTokenizer`` with an ``auto_map`` to ``tokenization_dream.py``). We
never run remote code: :class:`DreamTokenizer` below is our own class of that name (Qwen2 BPE from
``vocab.json``/``merges.txt`` or ``tokenizer.json``, same added tokens), registered with ``AutoTokenizer`` for
model_type ``Dream`` when :mod:`decoding` is imported. So ``AutoTokenizer.from_pretrained(dream_dir)`` — and
every library that calls it without ``trust_remote_code``, e.g. verl's ``hf_tokenizer`` — loads the real hub
folder with our class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BEGIN_OF_TEXT = "<|beginoftext|>"
MASK = "<|mask|>"

# Qwen2.5-style ChatML with Dream's default system turn.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)



class DreamTokenizer(Qwen2Tokenizer):
    """Dream's tokenizer without remote code: Qwen2 byte-level BPE, prompts padded on the left.

    Same name as the hub's remote class so that ``tokenizer_config.json``
    (``tokenizer_class: DreamTokenizer``) resolves to it, and a folder we save names the same class the hub
    folder does.
    """

    padding_side = "left"


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a Dream checkpoint directory (no remote code). ``ValueError`` if there is
    none."""
    import decoding  # noqa: F401  (registers DreamTokenizer with AutoTokenizer)

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; expected a Dream checkpoint directory")
    has_files = (root / "tokenizer.json").is_file() or (root / "vocab.json").is_file()
    if not has_files:
        raise ValueError(f"{root} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{root}: cannot read the tokenizer files: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TEXT
    if tokenizer.mask_token is None and MASK in tokenizer.get_vocab():
        tokenizer.mask_token = MASK
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_chat_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: str | Sequence[dict[str, str]],
    system: str | None = DEFAULT_SYSTEM_PROMPT,
    add_generation_prompt: bool = True,
) -> str:
    """ChatML prompt text for a user string or a list of ``{"role", "content"}`` messages.

    A system turn ``system`` is prepended unless the messages already start with one; ``system=None`` gives no
    system turn at all. With ``add_generation_prompt`` the text ends with ``<|im_start|>assistant\\n``.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = list(messages)
    if not messages:
        raise ValueError("build_chat_prompt needs at least one message")
    has_system = messages[0].get("role") == "system"
    if system is not None and not has_system:
        messages = [{"role": "system", "content": system}, *messages]
    if system is None and not has_system:
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")
    template = tokenizer.chat_template or CHATML_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, texts: str | Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompt texts, LEFT-padded with the pad id: ``(input_ids [B, P], attention_mask [B, P])``
    (long).

    Special-token strings in the text (``<|im_start|>`` ...) map to their ids; nothing else is added.
    """
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("encode_prompts needs at least one text")
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return left_pad(rows, tokenizer.pad_token_id)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [B, P]`` left-padded with ``pad_id`` and the matching 0/1 ``attention_mask`` (long).

    Every prompt needs >= 1 token: Dream predicts token j from position j - 1 (ValueError otherwise).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: Dream predicts token j from position j - 1, a prompt is required")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids that end a completion: ``<|endoftext|>`` (eos/pad) and ``<|im_end|>``."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in (END_OF_TEXT, IM_END) if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def decode_completion(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int] | torch.Tensor) -> str:
    """Text of a completion, cut at the first end-of-text / ``<|im_end|>``.

    Ids outside the tokenizer (the logit width exceeds it, as in the 7B) and the mask id are dropped, so
    decoding an unfinished or unconstrained canvas never raises.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    stops = stop_token_ids(tokenizer)
    size = len(tokenizer)
    mask_id = tokenizer.mask_token_id
    kept: list[int] = []
    for token in ids:
        token = int(token)
        if token in stops:
            break
        if 0 <= token < size and token != mask_id:
            kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=True)


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, sequences: torch.Tensor, prompt_length: int
) -> list[str]:
    """Decode ``sequences[:, prompt_length:]`` of a generate output (``[B, P + L]``) row by row."""
    return [decode_completion(tokenizer, row[prompt_length:]) for row in sequences]
