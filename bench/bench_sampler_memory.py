"""Peak extra memory of one lockstep commit step's sampler, as a multiple of the block's logits tensor.

Why: an earlier estimate said that at ``max_batch: 64`` one commit step allocated ~8x the block logits (a full
copy for the vocabulary ban, the masked gather, temperature scaling, an int64 top-p sort over the vocabulary,
the cumulative softmax, the filtered logits, the probabilities): tens of GB on a 7B, so an 80 GB H100 could
run out of memory. This script measures it with the torch profiler's memory accounting
(``profile_memory=True``: every allocation and free, attributed to the op that made it; the running sum in
event order gives the peak) on CPU, at a scaled-down size with the recipe's sampling settings (temperature 1,
top-p 0.95, vocabulary ban, every position masked: the first step), for

* ``before``: the commit step's sampling as it was (``invalid_token_mask`` copy, ``logits[masked]``,
  :func:`decoding.sampling.sample_tokens` with the sorted top-p filter);
* ``after``: :func:`decoding.sampling.sample_masked_rows` as :func:`decoding.policy.decide_block` calls it
  (chunks of a private copy, in-place ban/temperature/top-p within top-k).

Both run on the same logits in the same process; the sampled tokens are checked equal. The ratio is
independent of the absolute size as long as the block is larger than 8 x 2**20 elements (the chunk floor)::

    python bench/bench_sampler_memory.py                       # batch 16 x 64 positions x 32,768 vocabulary
    python bench/bench_sampler_memory.py --json runs/sampler_memory.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from decoding.sampling import invalid_token_mask, sample_masked_rows, sample_tokens  # noqa: E402

SETTINGS = {"temperature": 1.0, "top_p": 0.95, "top_k": None}


def peak_extra_bytes(run: Callable[[], object]) -> tuple[int, object]:
    """Peak of the running allocation total while ``run`` executes (torch profiler memory accounting), in
    bytes, above the level at its start; and ``run``'s result."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = run()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level = peak = 0
    for event in events:
        level += int(event.self_cpu_memory_usage)
        peak = max(peak, level)
    return peak, result


def before(logits: torch.Tensor, masked: torch.Tensor, mask_id: int, vocab: int, seed: int):
    banned = invalid_token_mask(logits, mask_id, vocab)
    return sample_tokens(banned[masked], generator=torch.Generator().manual_seed(seed), **SETTINGS)


def after(logits: torch.Tensor, masked: torch.Tensor, mask_id: int, vocab: int, seed: int):
    def ban(rows: torch.Tensor) -> torch.Tensor:
        rows[..., vocab:] = float("-inf")
        rows[..., mask_id] = float("-inf")
        return rows

    return sample_masked_rows(logits, masked, ban, torch.Generator().manual_seed(seed), **SETTINGS)


def measure(batch: int, width: int, vocab: int, seed: int = 0) -> dict:
    """Before/after peaks on one random block of logits ``[batch, width, vocab]`` (fp32, all positions
    masked)."""
    torch.manual_seed(seed)
    logits = torch.randn(batch, width, vocab) * 4
    masked = torch.ones(batch, width, dtype=torch.bool)
    valid, mask_id = vocab - 400, vocab - 401
    block = logits.numel() * logits.element_size()
    report: dict = {"shape": [batch, width, vocab], "dtype": "float32",
                    "block_logits_mib": round(block / 2**20, 1),
                    "settings": {**SETTINGS, "vocabulary_ban": True, "masked": "all"}}
    tokens = {}
    for name, function in (("before", before), ("after", after)):
        peak, (_, x0) = peak_extra_bytes(lambda f=function: f(logits, masked, mask_id, valid, seed))
        tokens[name] = x0
        report[name] = {"peak_extra_mib": round(peak / 2**20, 1), "x_block_logits": round(peak / block, 2)}
    report["same_tokens"] = bool(torch.equal(tokens["before"], tokens["after"]))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=64, help="positions of the block")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.batch, args.width) < 1 or args.vocab < 1024:
        raise SystemExit("bench_sampler_memory: --batch and --width must be >= 1 and --vocab >= 1024")
    report = measure(args.batch, args.width, args.vocab, args.seed)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    print(f"peak extra memory per commit step: before {report['before']['x_block_logits']}x, "
          f"after {report['after']['x_block_logits']}x the block logits ({report['block_logits_mib']} MiB); "
          f"same tokens: {report['same_tokens']}")
    return report


if __name__ == "__main__":
    main()
