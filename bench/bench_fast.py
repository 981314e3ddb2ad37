"""Benchmark the fast path (block KV cache + threshold commits) against the plain Dream sampler, side by side.

Same random-init model, prompts and harness as ``bench/bench_decoding.py`` (full-size Dream-7B in bf16 on
CUDA; prompt 256 / generate 256). The fast path decodes blocks of 32 with ``threshold`` 0.9 and at most
``steps / n_blocks`` steps per block (the last step of a block commits what is left), so at ``--steps 64`` it
runs at most 64 forwards like the plain sampler; random weights are never confident, so NFE = steps and the
ratio measures the cost per step (cached windows, batching). Defaults: 64 steps, batch 1, 8, 32, 64.

    python bench/bench_fast.py --json runs/bench_fast.json
    python bench/bench_fast.py --tiny              # tiny config on CPU (smoke test of the same code)
    python bench/bench_fast.py --compile           # add torch.compile'd prefix-cache rows

Rows: ``fast_prefix``, ``fast_dual``, ``fast_nocache`` (full refresh at every block) and
``fast_dual_incremental`` (each block's refresh recomputes only from the previous block's start).
``achieved_tflops`` counts full-canvas forwards (the harness's formula), an upper bound for cached windows.
"""

from __future__ import annotations

import math
import sys

import bench_decoding  # noqa: E402
import torch

from decoding.fast import fast_generate  # noqa: E402

BLOCK = 32


def fast_sampler(
    cache: str, threshold: float = 0.9, compile: bool = False, refresh: str = "full"
) -> bench_decoding.Sampler:
    """A harness sampler ``(model, ids, gen_len, steps) -> (sequences, nfe)`` for one cache mode."""

    def run(model: torch.nn.Module, input_ids: torch.Tensor, gen_len: int, steps: int):
        block = min(BLOCK, gen_len)
        steps_per_block = max(1, steps // math.ceil(gen_len / block))
        out = fast_generate(model, input_ids, max_new_tokens=gen_len, block_size=block, threshold=threshold,
                            cache=cache, steps_per_block=steps_per_block, compile=compile, refresh=refresh)
        return out.sequences, out.nfe

    return run


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    compile_rows = "--compile" in argv
    argv = [a for a in argv if a != "--compile"]
    if "--tiny" not in argv:
        argv += [] if "--batch" in argv else ["--batch", "1", "8", "32", "64"]
        argv += [] if "--steps" in argv else ["--steps", "64"]
    samplers = {
        "plain": bench_decoding.plain_sampler,
        "fast_prefix": fast_sampler("prefix"),
        "fast_dual": fast_sampler("dual"),
        "fast_nocache": fast_sampler("none"),
        "fast_dual_incremental": fast_sampler("dual", refresh="incremental"),
    }
    if compile_rows:
        samplers["fast_prefix_compiled"] = fast_sampler("prefix", compile=True)
    return bench_decoding.main(argv, samplers=samplers)


if __name__ == "__main__":
    main()
