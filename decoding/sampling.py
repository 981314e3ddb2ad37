"""Token sampling and confidence scores with Dream's exact semantics (reference ``sample_tokens``).

Order of operations (reference): divide by the temperature if it is positive; top-p (sorted cumulative
softmax, removal mask shifted right by one so the first token over the threshold is kept; removed ->
``finfo.min``); top-k (below the k-th value -> ``finfo.min``); softmax; sample ``x0 ~ Categorical`` when the
temperature is positive (argmax when the distribution is invalid, as the reference's ``except`` branch), else
argmax; then the confidence:

=============== ==========================================================
alg             confidence
=============== ==========================================================
origin          none (positions are committed by a Bernoulli draw)
maskgit_plus    probability of x0
topk_margin     p(top1) - p(top2)
entropy         sum p * log(p + 1e-10) (negative entropy; higher = surer)
=============== ==========================================================

All confidences use the filtered, tempered distribution. Reference-exact mode keeps the mask id and ids beyond
the tokenizer as legal predictions; :func:`invalid_token_mask` is the opt-in fix (Dream issue #54).

Memory: the reference order of operations allocates several copies of the logits (division, an int64 sort, the
cumulative softmax, a removal mask, the filtered logits, probabilities). The decoders' commit step therefore
uses :func:`sample_masked_rows`: the masked rows in chunks (:func:`chunk_rows`), each chunk a private copy
that is tempered, banned and filtered in place (:func:`top_p_logits_lean`: top-p within top-k, no
full-vocabulary sort), with the same tokens and confidences as the reference on the same CPU generator (tested
on exact small cases; measured in ``bench/bench_sampler_memory.py``). Sampling is per chunk: on CUDA the draws
come from the same distributions but the generator is consumed chunk by chunk, so tokens can differ from an
unchunked draw; a chunk whose distribution is invalid (NaN logits) falls back to argmax alone, where the
reference would fall back for all rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
_SIMPLEX_TOL = 1e-6  # torch.distributions simplex constraint, which the reference's Categorical validates


def top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest prefix of sorted tokens whose mass reaches ``top_p`` (first one
    always)."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = cumulative > top_p
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def top_p_logits_lean(logits: torch.Tensor, top_p: float, first_k: int = 256) -> torch.Tensor:
    """:func:`top_p_logits` in place, without sorting the vocabulary: the nucleus is found among the ``k``
    most probable tokens (``k`` doubles until each row's top-``k`` mass exceeds ``top_p``); the kept set is
    the same. Extra memory: one softmax of ``logits`` plus ``[N, k]`` tensors."""
    vocab = logits.size(-1)
    probs = F.softmax(logits, dim=-1)
    k = min(first_k, vocab)
    while True:
        top_probs, top_ids = torch.topk(probs, k, dim=-1)
        cumulative = torch.cumsum(top_probs, dim=-1)
        if k == vocab or bool((cumulative[..., -1] > top_p).all()):
            break
        k = min(2 * k, vocab)
    del probs
    keep = cumulative <= top_p
    keep[..., 1:] = keep[..., :-1].clone()  # the first token over the threshold is kept too
    keep[..., 0] = True
    kept_values = torch.gather(logits, -1, top_ids).masked_fill(~keep, torch.finfo(logits.dtype).min)
    logits.fill_(torch.finfo(logits.dtype).min)
    return logits.scatter_(-1, top_ids, kept_values)


def top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep tokens whose logit is at least the k-th largest (ties at the k-th value are kept)."""
    top_k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _categorical_sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """``Categorical(probs=probs).sample()`` with an optional generator; None where the reference would
    raise."""
    normalised = probs / probs.sum(-1, keepdim=True)
    valid = bool(((normalised >= 0).all(-1) & ((normalised.sum(-1) - 1).abs() < _SIMPLEX_TOL)).all())
    if not valid:
        return None
    try:
        return torch.multinomial(normalised, 1, replacement=True, generator=generator).squeeze(-1)
    except RuntimeError:
        return None


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    margin_confidence: bool = False,
    neg_entropy: bool = False,
    generator: torch.Generator | None = None,
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(confidence [N], x0 [N])`` for logits ``[N, V]`` of N masked positions (reference semantics).

    ``in_place``: ``logits`` is a scratch copy the caller gives away; temperature and filters then modify it
    in place and top-p uses :func:`top_p_logits_lean` (same result, a fraction of the memory)."""
    if temperature > 0:
        logits = logits.div_(temperature) if in_place else logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits_lean(logits, top_p) if in_place else top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    del logits
    x0 = _categorical_sample(probs, generator) if temperature > 0 and probs.shape[0] > 0 else None
    if x0 is not None:
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        top2 = torch.topk(probs, 2, dim=-1).values
        confidence = top2[..., 0] - top2[..., 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


CHUNK_MIN_ELEMENTS = 1 << 20
CHUNK_MAX_ELEMENTS = 1 << 26


def chunk_rows(rows: int, vocab: int, block_elements: int) -> int:
    """Rows of ``vocab`` logits per sampling chunk: an eighth of the block's logits, at least 2**20 and at
    most 2**26 elements (at least one row), so a commit step's scratch memory stays well under the block's
    logits."""
    budget = min(max(block_elements // 8, CHUNK_MIN_ELEMENTS), CHUNK_MAX_ELEMENTS)
    return max(1, min(rows, budget // max(vocab, 1)))


def sample_masked_rows(
    logits: torch.Tensor,
    masked: torch.Tensor,
    adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    **sampling: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_tokens` of ``logits[masked]`` (``logits [B, W, V]``, ``masked [B, W]``) without copying
    it whole.

    Rows are taken in row-major order, in chunks of :func:`chunk_rows`; ``adjust`` modifies a chunk's private
    copy in place before sampling (the vocabulary ban, an end-of-text penalty). Returns ``(confidence [M],
    x0 [M])`` for the M masked positions, equal to the reference on the same generator (module docstring).
    """
    rows, cols = masked.nonzero(as_tuple=True)
    count = int(rows.numel())
    step = chunk_rows(count, logits.shape[-1], logits.numel())
    confidences, tokens = [], []
    for start in range(0, count, step):
        chunk = logits[rows[start:start + step], cols[start:start + step]]  # a copy of this chunk only
        if adjust is not None:
            chunk = adjust(chunk)
        confidence, x0 = sample_tokens(chunk, generator=generator, in_place=True, **sampling)
        confidences.append(confidence)
        tokens.append(x0)
        del chunk
    if not confidences:
        empty = logits.new_empty(0)
        return empty, empty.long()
    return torch.cat(confidences), torch.cat(tokens)


def confidence_for(alg: str) -> dict[str, bool]:
    """``sample_tokens`` confidence flags of a remasking algorithm (``ValueError`` for unknown names)."""
    if alg not in ALGORITHMS:
        raise ValueError(f"unknown alg {alg!r}; choose one of {', '.join(ALGORITHMS)}")
    return {"margin_confidence": alg == "topk_margin", "neg_entropy": alg == "entropy"}


def invalid_token_mask(
    logits: torch.Tensor, mask_token_id: int | None, tokenizer_size: int | None
) -> torch.Tensor:
    """Set the mask id and ids ``>= tokenizer_size`` to ``-inf`` (opt-in; off in reference-exact mode).

    The 7B's logit width (152064) exceeds its tokenizer (151667): unmasked sampling can return undecodable ids
    or the mask id itself (Dream issue #54).
    """
    out = logits.clone()
    if tokenizer_size is not None and tokenizer_size < logits.shape[-1]:
        out[..., tokenizer_size:] = float("-inf")
    if mask_token_id is not None and mask_token_id < logits.shape[-1]:
        out[..., mask_token_id] = float("-inf")
    return out


def shift_logits(logits: torch.Tensor, last_logit: torch.Tensor | None = None) -> torch.Tensor:
    """Dream's alignment: position i is predicted from hidden state i-1.

    Without ``last_logit`` returns ``[L0, L0, L1, ..., L_{N-2}]`` (reference). With ``last_logit`` ``[B, V]``
    (the logit of the position just before a cached window) returns ``[last, L0, ..., L_{N-2}]``.
    """
    first = logits[:, :1] if last_logit is None else last_logit[:, None].to(logits.dtype)
    return torch.cat([first, logits[:, :-1]], dim=1)
