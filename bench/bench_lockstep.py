"""Benchmark lockstep R/A decoding (Gauss-Seidel, Jacobi; uncached and prompt-cached) vs the single-block
sampler.

Equal canvas: the single-block sampler (``diffusion_generate``, entropy, greedy) generates ``gen_len`` tokens;
lockstep splits the same ``gen_len`` into R + 4 delimiter tokens + A. Every sampler runs at most ``steps``
steps (lockstep: ``max_steps``; random weights are never confident, so the threshold rule commits one token
per block and step and the last step commits the rest). Gauss-Seidel costs 2 forwards per step, Jacobi 1; the
report gives NFE, tokens/s, ms per forward, peak memory and ``speedup_vs_plain`` (= vs the single-block
sampler at equal batch and steps). Default: full-size random Dream-7B in bf16 on CUDA, prompt 256,
canvas 256, 128 steps, batch 1, 8, 32.

    python bench/bench_lockstep.py --json runs/bench_lockstep.json
    python bench/bench_lockstep.py --tiny          # tiny config on CPU (smoke test of the same code)
"""

from __future__ import annotations

import sys

import bench_decoding  # noqa: E402
import torch

from decoding.lockstep import LockstepCfg, lockstep_sample  # noqa: E402

# any four fixed ids below every vocabulary's mask id (values irrelevant)
DELIMITER = (198, 73594, 12669, 198)


def lockstep_sampler(mode: str, use_cache: bool) -> bench_decoding.Sampler:
    """A harness sampler ``(model, ids, gen_len, steps) -> (sequences, nfe)``: R and A split ``gen_len``."""

    def run(model: torch.nn.Module, input_ids: torch.Tensor, gen_len: int, steps: int):
        delim = [i % model.config.mask_token_id for i in DELIMITER[: max(0, min(4, gen_len - 2))]]
        r_len = (gen_len - len(delim)) // 2
        cfg = LockstepCfg(mode=mode, r_len=r_len, a_len=gen_len - len(delim) - r_len, max_steps=steps,
                          use_cache=use_cache, eos_guard=True)
        out = lockstep_sample(model, input_ids, None, cfg, delimiter_ids=delim)
        return out.sequences, out.nfe

    return run


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" not in argv:
        argv += [] if "--batch" in argv else ["--batch", "1", "8", "32"]
        argv += [] if "--steps" in argv else ["--steps", "128"]
    samplers = {
        "plain": bench_decoding.plain_sampler,
        "lockstep_jacobi": lockstep_sampler("jacobi", use_cache=False),
        "lockstep_gs": lockstep_sampler("gauss_seidel", use_cache=False),
        "lockstep_jacobi_cached": lockstep_sampler("jacobi", use_cache=True),
        "lockstep_gs_cached": lockstep_sampler("gauss_seidel", use_cache=True),
    }
    return bench_decoding.main(argv, samplers=samplers)


if __name__ == "__main__":
    main()
