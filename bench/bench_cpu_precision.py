"""fp32 vs bf16 autocast for the demo's log-prob + update work on CPU, side by side in one run.

Why: verl's FSDP engine computes in bf16 by default; ``recipe=demo`` overrides it to fp32 because on a CPU
without native bf16 matmuls bf16 is much slower (docs/demo.md, "Compute in fp32 on CPU"). This script measures
that claim on the same work the engine does per GRPO step: the coupled two-pass diffusion log-prob
(``rl.logprob.masked_logprob``) of a rollout batch with the committed demo warm start, forward + backward
(update) and forward only (old-log-prob pass), in fp32 and under ``torch.autocast("cpu", bfloat16)``.

    python bench/bench_cpu_precision.py                # 64 rollouts x (prompt 125 + completion 50), 2 threads
    python bench/bench_cpu_precision.py --threads 1 --micro 8

Prints one row per precision and the bf16 / fp32 time ratio. Inputs are random token ids (cost depends on the
shapes only); every configuration sees the same ids and the same mask plan; one warm-up pass runs first.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def time_passes(model, ids, plan, mask_id: int, micro: int, dtype: torch.dtype) -> tuple[float, float]:
    """Seconds for forward+backward over the batch (in ``micro`` rows at a time) and for forward only."""
    from rl.logprob import masked_logprob

    context = nullcontext if dtype == torch.float32 else lambda: torch.autocast("cpu", dtype=dtype)
    attention = torch.ones_like(ids)
    start = time.perf_counter()
    for s in range(0, ids.shape[0], micro):
        rows = slice(s, s + micro)
        with context():
            est = masked_logprob(model, ids[rows], attention[rows], plan.select(rows), mask_id,
                                 with_entropy=True)
        est.logp.sum().backward()
    middle = time.perf_counter()
    with torch.no_grad():
        for s in range(0, ids.shape[0], micro):
            rows = slice(s, s + micro)
            with context():
                masked_logprob(model, ids[rows], attention[rows], plan.select(rows), mask_id)
    return middle - start, time.perf_counter() - middle


def main(argv: list[str] | None = None) -> int:
    from decoding.checkpoint import load_dream
    from rl.logprob import draw_coupled_masks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "recipes" / "assets" / "demo_warmstart"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=125)
    parser.add_argument("--completion-len", type=int, default=50)
    parser.add_argument("--micro", type=int, default=64,
                        help="rows per forward (the recipe's micro-batch: 32-64)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_dream(args.model, dtype=torch.float32)
    model.train()
    mask_id = int(model.config.mask_token_id)
    ids = torch.randint(0, 1000, (args.rollouts, args.prompt_len + args.completion_len))
    maskable = torch.ones(args.rollouts, args.completion_len, dtype=torch.bool)
    plan = draw_coupled_masks(maskable, maskable, generator=torch.Generator().manual_seed(0))
    time_passes(model, ids[: args.micro], plan.select(slice(0, args.micro)), mask_id, args.micro,
                torch.float32)
    rows = {dtype: time_passes(model, ids, plan, mask_id, args.micro, dtype)
            for dtype in (torch.float32, torch.bfloat16)}
    model.zero_grad(set_to_none=True)
    print(f"{args.rollouts} rollouts x ({args.prompt_len} + {args.completion_len}) tokens, micro "
          f"{args.micro}, {args.threads} threads")
    print("| precision | fwd+bwd (s) | fwd (s) |\n|---|---|---|")
    for dtype, (both, forward) in rows.items():
        print(f"| {str(dtype).removeprefix('torch.')} | {both:.2f} | {forward:.2f} |")
    (f32_both, f32_fwd), (bf_both, bf_fwd) = rows[torch.float32], rows[torch.bfloat16]
    print(f"bf16 / fp32 time: fwd+bwd {bf_both / f32_both:.1f}x, fwd {bf_fwd / f32_fwd:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
