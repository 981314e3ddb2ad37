"""One GRPO step of Dream with LoRA, timed phase by phase: rollout / reward / log-prob / update, plus peak memory.

Why: issue 6 asks what one training step of the full-size Dream-7B costs on one GPU and where the time goes.
The step is the real pipeline of ``rl/``: lockstep Gauss-Seidel R/A rollouts (``DreamActor.rollout``, prompt KV
cache on, temperature 1, top-p 0.95 as in ``recipes/humaneval.yaml``), sandboxed EvalPlus rewards
(``rewards.api.Scorer`` on HumanEval+ tasks), one coupled complementary mask plan drawn for the batch, the old
log-prob pass, then ``rl.grpo.grpo_update`` (LoRA r=16 on all linear layers, bf16 base weights, non-reentrant
gradient checkpointing, AdamW, the recipe's 2 PPO epochs / mini-batch 16 / micro-batch 4).

On the GPU machine (random-init full-size Dream-7B, 7.6B parameters, bf16; 4 prompts x 4 samples, prompt 256,
R 128 + A 256, at most 64 lockstep steps)::

    python bench/bench_grpo_step.py --json runs/bench_grpo_step.json
    python bench/bench_grpo_step.py --tiny           # the tiny Dream on CPU: smoke test of the same code

Honest caveats, also written into the JSON:

* Random weights write garbage, so nearly every answer fails code extraction and never reaches the sandbox;
  ``reward`` is what this step's reward stage really cost. ``reward_all_tests`` scores the tasks' canonical
  solutions for the same number of rows (every test executed in the sandbox): the reward latency once a
  policy writes working code. Expected outputs are computed and the sandbox is warmed before timing.
* Equal rewards give every group zero advantage, which GRPO's dynamic filtering would drop; the benchmark
  turns filtering off so the update runs (and is timed) on every row. ``groups_all_equal_fraction`` says
  how many groups training would have skipped.
* Random weights are never confident, so the threshold policy runs to the step cap (``--steps``): the rollout
  numbers are cost per step at the cap. Prompts are random token ids (cost depends on length only). Without
  ``--tokenizer`` (a Dream checkpoint folder) texts come from the tiny code BPE and the rollout samples ids
  inside it, so answers decode in full (sampling cost is the same).

Before the timed step a warm-up step with tiny shapes runs every phase (kernels, allocator, sandbox workers).
Peak memory: ``torch.cuda.max_memory_allocated`` per phase on CUDA; peak RSS of this process on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_decoding  # noqa: E402

from decoding import dream_7b_config, load_dream, load_tokenizer, make_tiny_dream  # noqa: E402
from decoding.lockstep import DEFAULT_DELIMITER, LockstepCfg  # noqa: E402
from rl.actor import ActorConfig, DreamActor, LoraSettings, Rollout, RolloutConfig  # noqa: E402
from rl.grpo import GRPOConfig, batch_logprob, grpo_update, informative_groups, make_grpo_batch  # noqa: E402

PHASES = ("rollout", "reward", "mask_plan", "old_logprob", "ref_logprob", "update")
DEFAULT_TASKS = ("HumanEval/0", "HumanEval/2")


@dataclass
class StepSettings:
    """Shapes and knobs of one GRPO step (rows = prompts * n; ``steps`` caps the lockstep steps)."""

    prompts: int = 4
    n: int = 4
    prompt_len: int = 256
    r_len: int = 128
    a_len: int = 256
    steps: int = 64
    mode: str = "gauss_seidel"
    use_cache: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    ppo_epochs: int = 2
    mini_batch: int = 16
    micro_batch: int = 4
    kl_coef: float = 0.0
    lr: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"GRPO needs n >= 2 samples per prompt, got n={self.n}")
        for name in ("prompts", "prompt_len", "a_len", "steps", "ppo_epochs", "mini_batch", "micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def warmup(self) -> StepSettings:
        """Tiny shapes that still run every phase once (2 rows, short canvas, 2 steps)."""
        return replace(self, prompts=1, n=2, prompt_len=min(self.prompt_len, 8), r_len=min(self.r_len, 4),
                       a_len=min(self.a_len, 4), steps=2, ppo_epochs=1, mini_batch=2, micro_batch=2)


class PhaseClock:
    """Wall time (device-synchronised) and peak device memory of each named phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            self.peak_gib[name] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.seconds[name] = time.perf_counter() - start


def build_actor(tiny: bool, device: torch.device, dtype: str, settings: StepSettings, workdir: Path,
                tokenizer_dir: Path | None) -> tuple[DreamActor, Any]:
    """The LoRA actor (tiny Dream checkpoint, or random-init Dream-7B built on the device) and a tokenizer."""
    tiny_dir = make_tiny_dream(workdir / "tiny-dream", seed=settings.seed)
    tokenizer = load_tokenizer(tokenizer_dir or tiny_dir)
    if tiny:
        model = load_dream(tiny_dir, dtype=torch.float32, device=device)
    else:
        model = bench_decoding.build_random_model(dream_7b_config(), torch.bfloat16, device, seed=settings.seed)
    lora = LoraSettings(rank=settings.lora_rank, alpha=settings.lora_alpha)
    actor = DreamActor(model, ActorConfig(lora=lora, gradient_checkpointing=True, param_dtype=dtype))
    return actor.train(), tokenizer


def reward_scorer(task_ids: Sequence[str], workers: int | None) -> Any:
    """A warm :class:`rewards.api.Scorer` over the chosen HumanEval+ tasks (expected outputs computed now)."""
    from rewards import RewardConfig, Scorer, load_tasks

    tasks, _ = load_tasks("humaneval")
    missing = [t for t in task_ids if t not in tasks]
    if missing:
        raise ValueError(f"unknown HumanEval+ task ids {missing} (e.g. HumanEval/0)")
    scorer = Scorer([tasks[t] for t in task_ids], cfg=RewardConfig.rl(workers=workers))
    scorer.score([(t, tasks[t].reference_solution) for t in task_ids])  # start the sandbox workers
    return scorer


def score_rows(scorer: Any, texts: Sequence[str], task_ids: Sequence[str], n: int) -> tuple[torch.Tensor, dict]:
    """Score row i against task ``task_ids[(i // n) % len]``; rewards ``[N]`` and a summary of the outcomes."""
    items = [(task_ids[(row // n) % len(task_ids)], text) for row, text in enumerate(texts)]
    results = scorer.score(items)
    rewards = torch.tensor([float(r.reward or 0.0) for r in results])
    summary = {
        "rows": len(results),
        "sandboxed": sum("isolation" in r.details for r in results),
        "passed": sum(bool(r.all_pass) for r in results),
        "reward_mean": rewards.mean().item(),
        "statuses": dict(Counter(r.status for r in results)),
        "isolation": scorer.isolation,
    }
    return rewards, summary


def run_step(actor: DreamActor, tokenizer: Any, scorer: Any, task_ids: Sequence[str], settings: StepSettings,
             optimizer: torch.optim.Optimizer, clock: PhaseClock, progress: bool = False) -> dict:
    """One GRPO step, each phase timed by ``clock``; returns the step's non-timing facts."""
    valid_vocab = len(tokenizer)
    delimiter = tuple(tokenizer.encode(DEFAULT_DELIMITER, add_special_tokens=False))
    generator = torch.Generator().manual_seed(settings.seed)
    prompts = torch.randint(0, valid_vocab, (settings.prompts, settings.prompt_len), generator=generator).tolist()
    lockstep = LockstepCfg(mode=settings.mode, r_len=settings.r_len, a_len=settings.a_len, max_steps=settings.steps,
                           temperature=1.0, top_p=0.95, use_cache=settings.use_cache)
    rollout_cfg = RolloutConfig(lockstep=lockstep, delimiter_ids=delimiter, seed=settings.seed,
                                valid_vocab_size=valid_vocab, progress=progress)
    with clock.phase("rollout"):
        rollout: Rollout = actor.rollout(prompts, settings.n, rollout_cfg, tokenizer=tokenizer)
    texts = [r + DEFAULT_DELIMITER + a for r, a in zip(rollout.reasonings or [], rollout.answers or [])]
    with clock.phase("reward"):
        rewards, reward_summary = score_rows(scorer, texts, task_ids, settings.n)
    cfg = GRPOConfig(ppo_epochs=settings.ppo_epochs, mini_batch_size=settings.mini_batch,
                     micro_batch_size=settings.micro_batch, kl_coef=settings.kl_coef, filter_groups=False,
                     shuffle_seed=settings.seed)
    with clock.phase("mask_plan"):
        plan = rollout.draw_plan("coupled", generator=torch.Generator().manual_seed(settings.seed))
        batch = make_grpo_batch(rollout.input_ids, rollout.attention_mask, rollout.loss_mask, plan, rewards,
                                settings.n, cfg)
    with clock.phase("old_logprob"):
        batch = replace(batch, old_logp=batch_logprob(actor, batch, cfg.micro_batch_size))
    if cfg.kl_coef > 0.0:
        with clock.phase("ref_logprob"):
            batch = replace(batch, ref_logp=batch_logprob(actor, batch, cfg.micro_batch_size, reference=True))
    with clock.phase("update"):
        update = grpo_update(actor, batch, optimizer, cfg)
    rows = rollout.input_ids.shape[0]
    generated = int(rollout.maskable.sum())
    return {
        "rows": rows, "sequence_len": int(rollout.input_ids.shape[1]), "generated_tokens": generated,
        "scored_tokens": int(batch.loss_mask.sum()), "rollout_metrics": rollout.metrics,
        "rewards": reward_summary, "texts": texts,
        "groups_all_equal_fraction": 1.0 - informative_groups(rewards, settings.n).float().mean().item(),
        "update": update,
    }


def parameter_counts(actor: DreamActor) -> dict[str, int]:
    """Total (base + adapters), trainable (the LoRA adapters) and base-model parameter counts."""
    params = list(actor.module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"total": total, "trainable": trainable, "base": total - trainable}


def run_benchmark(settings: StepSettings, *, tiny: bool, device: str | None = None,
                  task_ids: Sequence[str] = DEFAULT_TASKS, reward_workers: int | None = None,
                  tokenizer_dir: Path | None = None, warmup: bool = True) -> dict:
    """Build the actor and scorer, warm up, run one timed GRPO step; returns the JSON report."""
    dev = torch.device(device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    if tiny:
        torch.set_num_threads(1)  # a 64-wide model only oversubscribes extra CPU threads
    dtype = "float32" if dev.type == "cpu" else "bfloat16"
    torch.manual_seed(settings.seed)
    with tempfile.TemporaryDirectory() as workdir:
        actor, tokenizer = build_actor(tiny, dev, dtype, settings, Path(workdir), tokenizer_dir)
    optimizer = torch.optim.AdamW(actor.trainable_parameters(), lr=settings.lr, weight_decay=0.0)
    scorer = reward_scorer(task_ids, reward_workers)
    try:
        if warmup:  # zero advantages: AdamW moves no weight, so the timed step sees the initial policy
            run_step(actor, tokenizer, scorer, task_ids, settings.warmup(), optimizer, PhaseClock(dev))
        clock = PhaseClock(dev)
        start = time.perf_counter()
        step = run_step(actor, tokenizer, scorer, task_ids, settings, optimizer, clock, progress=not tiny)
        step_s = time.perf_counter() - start
        references = [scorer.tasks[task_ids[(row // settings.n) % len(task_ids)]].reference_solution
                      for row in range(step["rows"])]
        with clock.phase("reward_all_tests"):
            _, all_tests = score_rows(scorer, references, task_ids, settings.n)
    finally:
        scorer.close()
    return build_report(settings, dev, dtype, tiny, task_ids, actor, clock, step, step_s, all_tests)


def build_report(settings: StepSettings, dev: torch.device, dtype: str, tiny: bool, task_ids: Sequence[str],
                 actor: DreamActor, clock: PhaseClock, step: dict, step_s: float, all_tests: dict) -> dict:
    """The JSON report: settings, parameter counts, per-phase seconds/shares/peaks, rollout and reward facts."""
    timed = [p for p in PHASES if p in clock.seconds]
    total = sum(clock.seconds[p] for p in timed)
    phases = {p: {"seconds": round(clock.seconds[p], 4), "share": round(clock.seconds[p] / total, 4),
                  "peak_memory_gib": round(clock.peak_gib[p], 3) if p in clock.peak_gib else None} for p in timed}
    rollout_s = clock.seconds["rollout"]
    metrics = step["rollout_metrics"]
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return {
        "environment": bench_decoding.environment(dev),
        "model": {"config": "tiny" if tiny else "dream-7b", "dtype": dtype, "lora_rank": settings.lora_rank,
                  "gradient_checkpointing": True, "params": parameter_counts(actor)},
        "settings": {**asdict(settings), "reward_tasks": list(task_ids), "estimator": "coupled"},
        "phases": phases,
        "step_seconds": round(step_s, 4),
        "rollout": {"rows": step["rows"], "sequence_len": step["sequence_len"],
                    "generated_tokens": step["generated_tokens"], "nfe": metrics.get("lockstep/nfe"),
                    "steps": metrics.get("lockstep/steps"),
                    "tokens_per_s": round(step["generated_tokens"] / rollout_s, 2),
                    "ms_per_forward": round(1000 * rollout_s / max(metrics.get("lockstep/nfe", 1.0), 1.0), 3)},
        "reward": {**step["rewards"], "groups_all_equal_fraction": step["groups_all_equal_fraction"]},
        "reward_all_tests": {**all_tests, "seconds": round(clock.seconds["reward_all_tests"], 4)},
        "update": {**{k: round(v, 6) for k, v in step["update"].items()}, "scored_tokens": step["scored_tokens"]},
        "peak_memory_gib": round(max(clock.peak_gib.values()), 3) if clock.peak_gib else None,
        "peak_rss_gib": round(peak_rss_gib, 3),
        "sample_text": step["texts"][0][:200] if step["texts"] else "",
    }


def format_table(report: dict) -> str:
    """A plain-text phase table with the headline numbers under it."""
    lines = [f"{'phase':<14}{'seconds':>10}{'share':>8}{'peak GiB':>10}"]
    for name, row in report["phases"].items():
        peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(f"{name:<14}{row['seconds']:>10.3f}{row['share']:>8.1%}{peak:>10}")
    params, roll, rew = report["model"]["params"], report["rollout"], report["reward_all_tests"]
    lines += [
        f"step {report['step_seconds']:.3f} s | rollout {roll['tokens_per_s']:.1f} tok/s, nfe {roll['nfe']:.0f}, "
        f"{roll['ms_per_forward']:.2f} ms/forward | params {params['total']:,} total, {params['trainable']:,} trainable",
        f"reward: {report['reward']['sandboxed']}/{report['reward']['rows']} rows sandboxed; all-tests scoring of "
        f"{rew['rows']} canonical solutions {rew['seconds']:.3f} s ({rew['passed']} passed)",
        f"peak GPU memory {report['peak_memory_gib']} GiB | peak RSS {report['peak_rss_gib']} GiB",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = StepSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Dream on CPU (smoke test of the same code)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=None, help=f"prompts per step (default {d.prompts}; tiny 2)")
    parser.add_argument("--n", type=int, default=None, help=f"samples per prompt (default {d.n}; tiny 2)")
    parser.add_argument("--prompt-len", type=int, default=None, help=f"default {d.prompt_len}; tiny 16")
    parser.add_argument("--r-len", type=int, default=None, help=f"default {d.r_len}; tiny 8")
    parser.add_argument("--a-len", type=int, default=None, help=f"default {d.a_len}; tiny 16")
    parser.add_argument("--steps", type=int, default=None, help=f"lockstep step cap (default {d.steps}; tiny 8)")
    parser.add_argument("--mode", choices=("gauss_seidel", "jacobi"), default=d.mode)
    parser.add_argument("--no-cache", action="store_true", help="no prompt KV cache during the rollout")
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank)
    parser.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    parser.add_argument("--ppo-epochs", type=int, default=d.ppo_epochs)
    parser.add_argument("--mini-batch", type=int, default=None, help=f"default {d.mini_batch}; tiny 4")
    parser.add_argument("--micro-batch", type=int, default=None, help=f"default {d.micro_batch}; tiny 2")
    parser.add_argument("--kl-coef", type=float, default=d.kl_coef, help="> 0 adds the reference log-prob pass")
    parser.add_argument("--reward-tasks", nargs="+", default=list(DEFAULT_TASKS), help="HumanEval+ task ids")
    parser.add_argument("--reward-workers", type=int, default=None, help="sandbox workers (default: CPU count)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a Dream checkpoint folder (tokenizer only)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> StepSettings:
    """Flags over the defaults (full-size) or the tiny smoke-test shapes."""
    base = StepSettings(prompts=2, n=2, prompt_len=16, r_len=8, a_len=16, steps=8, mini_batch=4,
                        micro_batch=2) if args.tiny else StepSettings()
    given = {"prompts": args.prompts, "n": args.n, "prompt_len": args.prompt_len, "r_len": args.r_len,
             "a_len": args.a_len, "steps": args.steps, "mini_batch": args.mini_batch, "micro_batch": args.micro_batch}
    return replace(base, **{k: v for k, v in given.items() if v is not None}, mode=args.mode,
                   use_cache=not args.no_cache, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                   ppo_epochs=args.ppo_epochs, kl_coef=args.kl_coef, seed=args.seed)


def main(argv: list[str] | None = None) -> dict:
    """CLI: run the benchmark, print the table, write ``--json``; bad flags exit with a one-line message."""
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available() and args.device in (None, "cuda"):
        raise SystemExit("the full-size GRPO step needs a CUDA GPU; use --tiny for the CPU smoke test")
    try:
        settings = settings_from_args(args)
        LoraSettings(rank=settings.lora_rank, alpha=settings.lora_alpha)
        report = run_benchmark(settings, tiny=args.tiny, device=args.device, task_ids=args.reward_tasks,
                               reward_workers=args.reward_workers, tokenizer_dir=args.tokenizer,
                               warmup=not args.no_warmup)
    except ValueError as err:
        raise SystemExit(f"bench_grpo_step: {err}") from err
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    print(format_table(report))
    return report


if __name__ == "__main__":
    main()
