"""Benchmark Dream decoding on a random-init model: tokens/s, ms per forward, peak memory, achieved TFLOP/s.

Default: the full-size Dream-7B architecture (7,615,616,512 parameters) in bf16 on CUDA, prompt 256 / generate
256, the plain Dream-semantics sampler (``decoding.generate.diffusion_generate``, alg entropy, greedy) at 256
and 64 steps, batch 1 and 8. Random weights never emit EOS early, so NFE = steps: the numbers are cost per
step.

    python bench/bench_decoding.py --json runs/bench_decoding.json
    python bench/bench_decoding.py --tiny            # same code, tiny config on CPU (smoke test)

Other samplers (the fast path) plug in through :func:`run_benchmark` with a ``{name: sampler}`` dict; a
sampler is ``sampler(model, input_ids, gen_len, steps) -> sequences`` or ``-> (sequences, nfe)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from decoding import DreamConfig, DreamModel, dream_7b_config  # noqa: E402
from decoding.generate import diffusion_generate  # noqa: E402

Sampler = Callable[[DreamModel, torch.Tensor, int, int], "torch.Tensor | tuple[torch.Tensor, int]"]


def plain_sampler(model: DreamModel, input_ids: torch.Tensor, gen_len: int, steps: int) -> torch.Tensor:
    """The reference-semantics sampler as Dream's evals run it (entropy confidence, greedy tokens)."""
    return diffusion_generate(model, input_ids, max_new_tokens=gen_len, steps=steps, alg="entropy",
                              temperature=0.0)


def tiny_bench_config() -> DreamConfig:
    return DreamConfig(
        vocab_size=1664, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=2048, mask_token_id=1540,
        pad_token_id=1536, bos_token_id=1536, eos_token_id=1536, initializer_range=0.1,
    )


def build_random_model(config: DreamConfig, dtype: torch.dtype, device: torch.device,
                       seed: int = 0) -> DreamModel:
    """Random-init model materialised directly on the device (no CPU copy of 15 GB)."""
    with torch.device("meta"):
        model = DreamModel(config)
    model = model.to(dtype).to_empty(device=device)  # cast on meta first: no fp32 copy on the device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, config.initializer_range, generator=generator)
    model.reset_rope(device)
    return model.eval()


def forward_flops(config: DreamConfig, n_params: int, batch: int, seq: int) -> float:
    """Matmul FLOPs of one full-canvas forward: 2 * (params - embedding) * tokens + attention
    scores/values."""
    matmul_params = n_params - config.vocab_size * config.hidden_size
    attention = 4 * config.num_hidden_layers * batch * seq * seq * config.hidden_size
    return 2.0 * matmul_params * batch * seq + attention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: DreamModel, sampler: Sampler, *, name: str, batch: int, prompt_len: int, gen_len: int, steps: int,
    device: torch.device, seed: int = 0,
) -> dict:
    """Run one configuration once (after a short warm-up) and return its metrics row."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.mask_token_id, (batch, prompt_len), generator=generator).to(device)
    sampler(model, prompt[:, : min(prompt_len, 8)], min(gen_len, 8), 2)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    result = sampler(model, prompt, gen_len, steps)
    _sync(device)
    seconds = time.perf_counter() - start
    sequences, nfe = result if isinstance(result, tuple) else (result, steps)
    if sequences.shape != (batch, prompt_len + gen_len):
        raise RuntimeError(f"{name}: sampler returned shape {tuple(sequences.shape)}")
    n_params = sum(p.numel() for p in model.parameters())
    flops = forward_flops(model.config, n_params, batch, prompt_len + gen_len) * nfe
    return {
        "sampler": name, "batch": batch, "prompt_len": prompt_len, "gen_len": gen_len, "steps": steps,
        "nfe": nfe,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(batch * gen_len / seconds, 2),
        "ms_per_forward": round(1000 * seconds / max(nfe, 1), 3),
        "tokens_per_step": round(gen_len / max(nfe, 1), 3),
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda"
                            else None),
        "achieved_tflops": round(flops / seconds / 1e12, 6),
    }


def environment(device: torch.device) -> dict:
    import transformers

    info = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device), "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run_benchmark(
    samplers: dict[str, Sampler], *, tiny: bool = False, batches: Sequence[int] = (1, 8),
    steps_list: Sequence[int] = (256, 64), prompt_len: int = 256, gen_len: int = 256,
    device: str | None = None,
    dtype: torch.dtype | None = None, progress: Callable[[dict], None] | None = print,
) -> dict:
    """Benchmark every sampler on every (steps, batch) on one shared random model; returns the JSON report.

    Ratios against the plain sampler at equal (batch, steps) are added when ``"plain"`` is among the samplers.
    """
    dev = torch.device(device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    dtype = dtype or (torch.float32 if dev.type == "cpu" else torch.bfloat16)
    if tiny:
        torch.set_num_threads(1)  # a 64-wide model only oversubscribes extra CPU threads
    config = tiny_bench_config() if tiny else dream_7b_config()
    model = build_random_model(config, dtype, dev)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for steps in steps_list:
        for batch in batches:
            for name, sampler in samplers.items():
                row = measure(model, sampler, name=name, batch=batch, prompt_len=prompt_len, gen_len=gen_len,
                              steps=steps, device=dev)
                rows.append(row)
                if progress:
                    progress(row)
    plain = {(r["batch"], r["steps"]): r for r in rows if r["sampler"] == "plain"}
    for row in rows:
        base = plain.get((row["batch"], row["steps"]))
        if base is not None:
            row["speedup_vs_plain"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    return {"environment": environment(dev), "model": {"config": "tiny" if tiny else "dream-7b",
                                                       "params": n_params,
            "dtype": str(dtype).removeprefix("torch.")}, "rows": rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny config on CPU (smoke test of the same code)")
    parser.add_argument("--batch", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--gen-len", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, samplers: dict[str, Sampler] | None = None) -> dict:
    args = parse_args(argv)
    small = args.tiny
    if not small and not torch.cuda.is_available() and args.device in (None, "cuda"):
        raise SystemExit("the full-size benchmark needs a CUDA GPU; use --tiny for the CPU smoke test")
    report = run_benchmark(
        samplers or {"plain": plain_sampler}, tiny=small,
        batches=args.batch or ((1, 2) if small else (1, 8)),
        steps_list=args.steps or ((16, 4) if small else (256, 64)),
        prompt_len=args.prompt_len or (16 if small else 256), gen_len=args.gen_len or (16 if small else 256),
        device=args.device,
    )
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
