"""One GRPO step of Dream through the verl path, timed phase by phase: rollout / reward / log-prob / update /
weight sync, plus peak memory.

Why: what one training step of the full-size Dream-7B costs on one GPU and where the time goes, measured on
the step training really runs. Each phase calls the code a run executes:

* rollout: :func:`rl.rollout_decoding.sample_batch` on a rollout copy of the model, as the Dream rollout
  server (``rl/verl/rollout.py``) calls it, with the recipe's ``rollout.custom.dream`` decoder (lockstep
  Gauss-Seidel R/A, prompt KV cache, temperature 1, top-p 0.95 in ``recipes/_grpo_7b.yaml``) at the shapes
  below;
* reward: sandboxed EvalPlus scoring (``rewards.api.EvalPlusScorer`` on HumanEval+ tasks);
* advantages: verl's ``compute_grpo_outcome_advantage``;
* old_logprob / ref_logprob / update: verl's actor ``TrainingWorker`` with our Dream engine (FSDP2, LoRA via
  peft, the coupled estimator, verl's PPO loss and optimizer) built in this process by :mod:`rl.verl.local`,
  with the recipe's settings (LoRA r/alpha, gradient checkpointing, PPO epochs, mini/micro batches);
* update_weights: the engine's exported weights installed into the rollout copy
  (:func:`rl.rollout_decoding.apply_weights`, what the server does after every step).

On the GPU machine (a Dream-v0-Instruct-7B folder, bf16; 4 prompts x 4 samples, prompt 256, R 128 + A 256, at
most 64 lockstep steps)::

    python bench/bench_grpo_step.py --model /models/Dream-v0-Instruct-7B --json runs/bench_grpo_step.json
    python bench/bench_grpo_step.py --tiny           # a tiny random Dream on CPU: smoke test of the same code

Honest caveats, also written into the JSON:

* Prompts are random token ids (cost depends on length only); their answers rarely extract as code, so
  ``reward`` is what this step's reward stage really cost. ``reward_all_tests`` scores the tasks' canonical
  solutions for the same number of rows (every test executed in the sandbox): the reward latency once a
  policy writes working code. Expected outputs are computed and the sandbox is warmed before timing.
* Equal rewards give every group zero advantage; the update still runs (and is timed) on every row.
  ``groups_all_equal_fraction`` says how many groups dynamic filtering would drop.
* The threshold policy stops when confident; on random prompts it often runs to the step cap (``--steps``).

Before the timed step a warm-up step with tiny shapes runs every phase (kernels, allocator, sandbox workers).
Peak memory: ``torch.cuda.max_memory_allocated`` per phase on CUDA; peak RSS of this process on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import bench_decoding  # noqa: E402
import numpy as np
import torch

PHASES = ("rollout", "reward", "advantages", "old_logprob", "ref_logprob", "update", "update_weights")
DEFAULT_TASKS = ("HumanEval/0", "HumanEval/2")
ROOT = Path(__file__).resolve().parents[1]


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
        if (self.prompts * self.n) % self.mini_batch or self.mini_batch % self.n:
            raise ValueError(f"mini_batch ({self.mini_batch} rows) must be a multiple of n ({self.n}) and "
                             f"divide the {self.prompts * self.n} rows of a step (verl's mini-batches are "
                             "whole groups)")

    def warmup(self) -> StepSettings:
        """Tiny shapes that still run every phase once (2 rows, short A block, 2 steps). ``r_len`` stays: the
        engine finds the lockstep delimiter where the recipe's R block ends (rl/verl/engine.py)."""
        return replace(self, prompts=1, n=2, prompt_len=min(self.prompt_len, 8), a_len=min(self.a_len, 4),
                       steps=2,
                       ppo_epochs=1, mini_batch=2, micro_batch=2)


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


def setup_process(device: torch.device) -> None:
    """What verl's worker needs before verl is imported: a one-rank process group, the CPU platform shim."""
    if device.type == "cpu":
        os.environ["VERL_PLATFORM"] = "cpu"
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)


def step_recipe(model_dir: Path, settings: StepSettings, device: torch.device, run_dir: Path) -> Any:
    """``recipe=humaneval`` with this benchmark's shapes; ``trainer.device=cpu`` applies the CPU settings."""
    from launch.train_grpo import compose_recipe
    from rl.verl.config import prepare_runtime

    arr, dream = "actor_rollout_ref", "actor_rollout_ref.rollout.custom.dream"
    overrides = [
        f"{arr}.model.path={model_dir}", f"{arr}.model.lora_rank={settings.lora_rank}",
        f"{arr}.model.lora_alpha={settings.lora_alpha}", f"{arr}.rollout.n={settings.n}",
        f"{arr}.actor.ppo_mini_batch_size={settings.mini_batch // settings.n}",
        f"{arr}.actor.ppo_micro_batch_size_per_gpu={settings.micro_batch}",
        f"{arr}.rollout.log_prob_micro_batch_size_per_gpu={settings.micro_batch}",
        f"{arr}.actor.ppo_epochs={settings.ppo_epochs}", f"{arr}.actor.optim.lr={settings.lr}",
        f"{arr}.actor.use_kl_loss={str(settings.kl_coef > 0).lower()}",
        f"{arr}.actor.kl_loss_coef={settings.kl_coef}",
        f"{dream}.options.mode={settings.mode}", f"{dream}.options.r_len={settings.r_len}",
        f"{dream}.options.a_len={settings.a_len}",
        f"{dream}.options.use_cache={str(settings.use_cache).lower()}",
        f"+{dream}.options.max_steps={settings.steps}", f"{dream}.max_batch={settings.prompts * settings.n}",
        f"data.max_response_length={settings.r_len + settings.a_len + 16}",
        f"trainer.device={'cpu' if device.type == 'cpu' else 'cuda'}", f"lockstep.run_dir={run_dir}",
    ]
    cfg = compose_recipe("humaneval", overrides)
    prepare_runtime(cfg, ROOT)
    return cfg


@dataclass
class Pipeline:
    """The pieces one step runs: verl's actor worker, the rollout copy and its decoder settings."""

    cfg: Any
    actor: Any
    rollout_model: Any
    tokenizer: Any
    sampler: Any


def build_pipeline(settings: StepSettings, model_dir: Path, device: torch.device, run_dir: Path) -> Pipeline:
    from rl.rollout_decoding import DreamSamplerConfig, load_rollout_model
    from rl.verl.local import LocalActor

    cfg = step_recipe(model_dir, settings, device, run_dir)
    torch.manual_seed(settings.seed)
    actor = LocalActor(cfg)
    rollout = cfg.actor_rollout_ref.rollout
    model, tokenizer = load_rollout_model(str(model_dir), str(rollout.dtype), device.type)
    custom = dict(rollout.custom.dream)
    custom["options"] = dict(custom["options"])
    sampler = DreamSamplerConfig.from_dict(custom, int(cfg.data.max_response_length))
    return Pipeline(cfg, actor, model, tokenizer, sampler)


def reward_scorer(task_ids: Sequence[str], workers: int | None) -> Any:
    """A warm :class:`rewards.api.EvalPlusScorer` over the chosen HumanEval+ tasks (expected outputs computed
    now)."""
    from rewards import EvalPlusScorer, RewardConfig, load_tasks

    tasks, _ = load_tasks("humaneval")
    missing = [t for t in task_ids if t not in tasks]
    if missing:
        raise ValueError(f"unknown HumanEval+ task ids {missing} (e.g. HumanEval/0)")
    scorer = EvalPlusScorer([tasks[t] for t in task_ids], cfg=RewardConfig.rl(workers=workers))
    scorer.score([(t, tasks[t].reference_solution) for t in task_ids])  # start the sandbox workers
    return scorer


def score_rows(scorer: Any, texts: Sequence[str], task_ids: Sequence[str],
               n: int) -> tuple[torch.Tensor, dict]:
    """Score row i against task ``task_ids[(i // n) % len]``; rewards ``[N]`` and a summary of the
    outcomes."""
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


def rollout_rows(pipe: Pipeline, settings: StepSettings,
                 prompts: list[list[int]]) -> tuple[Any, list[str], dict]:
    """Decode ``n`` samples per prompt as the rollout server does; rows for the actor, texts for the
    reward."""
    from rl.rollout_decoding import sample_batch
    from rl.verl.local import Rows

    requests = [p for p in prompts for _ in range(settings.n)]
    rollout = pipe.cfg.actor_rollout_ref.rollout
    params = {"temperature": float(rollout.temperature), "top_p": float(rollout.top_p)}
    sampler = replace(pipe.sampler, options={**pipe.sampler.options, "r_len": settings.r_len,
                                             "a_len": settings.a_len,
                                             "max_steps": settings.steps})
    result = sample_batch(pipe.rollout_model, pipe.tokenizer, requests, params, sampler, seed=settings.seed)
    # the decoded canvas, scored through each block's first stop (the rollout server's response_mask), and the
    # rollout's own text of the completion for the reward, as in training (docs/rl.md, "Masks and salts")
    masks = [torch.tensor(mask, dtype=torch.long) for mask in result.scored_masks]
    rows = Rows([torch.tensor(p) for p in requests], [torch.tensor(c) for c in result.completions], masks)
    texts = list(result.reward_texts)
    return rows, texts, result.row_extras[0] if result.row_extras else {}


def grpo_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """verl's GRPO advantage of each row (groups = consecutive ``n`` rows, std-normalised as the recipe)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    index = np.arange(rewards.numel()) // n
    advantages, _ = compute_grpo_outcome_advantage(rewards.float().unsqueeze(1),
                                                   torch.ones(rewards.numel(), 1),
                                                   index, norm_adv_by_std_in_grpo=True)
    return advantages[:, 0]


def run_step(pipe: Pipeline, scorer: Any, task_ids: Sequence[str], settings: StepSettings,
             clock: PhaseClock) -> dict:
    """One GRPO step, each phase timed by ``clock``; returns the step's non-timing facts."""
    from rl.rollout_decoding import apply_weights

    valid_vocab = len(pipe.tokenizer)
    generator = torch.Generator().manual_seed(settings.seed)
    prompts = torch.randint(0, valid_vocab - 300, (settings.prompts, settings.prompt_len),
                            generator=generator)
    with clock.phase("rollout"):
        rows, texts, rollout_metrics = rollout_rows(pipe, settings, prompts.tolist())
    with clock.phase("reward"):
        rewards, reward_summary = score_rows(scorer, texts, task_ids, settings.n)
    with clock.phase("advantages"):
        advantages = grpo_advantages(rewards, settings.n)
    with clock.phase("old_logprob"):
        old = pipe.actor.log_probs(rows)
    reference = None
    if settings.kl_coef > 0.0:
        with clock.phase("ref_logprob"):
            reference = pipe.actor.log_probs(rows, reference=True)
    with clock.phase("update"):
        update = pipe.actor.update(rows, advantages, old, seed=settings.seed,
                                   mini_batch_rows=settings.mini_batch,
                                   epochs=settings.ppo_epochs, ref_log_probs=reference)
    with clock.phase("update_weights"):
        named, peft_config = pipe.actor.exported_weights()
        pipe.rollout_model = apply_weights(pipe.rollout_model, named, peft_config)
    grouped = rewards.view(-1, settings.n)
    return {
        "rows": len(rows),
        "sequence_len": max(p.numel() + r.numel() for p, r in zip(rows.prompts, rows.responses)),
        "generated_tokens": int(sum(int(m.sum()) for m in rows.response_masks)),
        "rollout_metrics": rollout_metrics, "rewards": reward_summary, "texts": texts,
        "groups_all_equal_fraction": float((grouped.max(1).values == grouped.min(1).values).float().mean()),
        "update": update,
    }


def parameter_counts(actor: Any) -> dict[str, int]:
    """Total (base + adapters), trainable (the LoRA adapters) and base-model parameter counts."""
    params = list(actor.engine.module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"total": total, "trainable": trainable, "base": total - trainable}


def run_benchmark(settings: StepSettings, *, model_dir: Path | None, device: str | None = None,
                  task_ids: Sequence[str] = DEFAULT_TASKS, reward_workers: int | None = None,
                  warmup: bool = True) -> dict:
    """Build verl's actor, the rollout copy and the scorer, warm up, run one timed GRPO step; the JSON report.
    ``model_dir=None``: a tiny random Dream on CPU (the smoke test)."""
    tiny = model_dir is None
    dev = torch.device(device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    setup_process(dev)
    if tiny:
        torch.set_num_threads(1)  # a 64-wide model only oversubscribes extra CPU threads
    with tempfile.TemporaryDirectory() as workdir:
        if tiny:
            from decoding import make_tiny_dream

            model_dir = make_tiny_dream(Path(workdir) / "tiny-dream", seed=settings.seed)
        pipe = build_pipeline(settings, Path(model_dir), dev, Path(workdir) / "run")
        scorer = reward_scorer(task_ids, reward_workers)
        try:
            if warmup:
                run_step(pipe, scorer, task_ids, settings.warmup(), PhaseClock(dev))
            clock = PhaseClock(dev)
            start = time.perf_counter()
            step = run_step(pipe, scorer, task_ids, settings, clock)
            step_s = time.perf_counter() - start
            references = [scorer.tasks[task_ids[(row // settings.n) % len(task_ids)]].reference_solution
                          for row in range(step["rows"])]
            with clock.phase("reward_all_tests"):
                _, all_tests = score_rows(scorer, references, task_ids, settings.n)
        finally:
            scorer.close()
        dtype = str(pipe.cfg.actor_rollout_ref.rollout.dtype) if dev.type == "cuda" else "float32"
        return build_report(settings, dev, dtype, tiny, task_ids, pipe.actor, clock, step, step_s, all_tests)


def build_report(settings: StepSettings, dev: torch.device, dtype: str, tiny: bool, task_ids: Sequence[str],
                 actor: Any, clock: PhaseClock, step: dict, step_s: float, all_tests: dict) -> dict:
    """The JSON report: settings, parameter counts, per-phase seconds/shares/peaks, rollout and reward
    facts."""
    timed = [p for p in PHASES if p in clock.seconds]
    total = sum(clock.seconds[p] for p in timed)
    phases = {p: {"seconds": round(clock.seconds[p], 4), "share": round(clock.seconds[p] / total, 4),
                  "peak_memory_gib": round(clock.peak_gib[p], 3) if p in clock.peak_gib else None}
              for p in timed}
    rollout_s = clock.seconds["rollout"]
    metrics = step["rollout_metrics"]
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return {
        "environment": bench_decoding.environment(dev),
        "model": {"config": "tiny" if tiny else "dream-7b", "dtype": dtype, "lora_rank": settings.lora_rank,
                  "params": parameter_counts(actor)},
        "path": "verl actor TrainingWorker + Dream engine (rl/verl/local.py), rollout via "
                "rl/rollout_decoding.py",
        "settings": {**asdict(settings), "reward_tasks": list(task_ids), "estimator": "coupled",
                     "recipe": "humaneval"},
        "phases": phases,
        "step_seconds": round(step_s, 4),
        "rollout": {"rows": step["rows"], "sequence_len": step["sequence_len"],
                    "generated_tokens": step["generated_tokens"], "nfe": metrics.get("rollout/nfe"),
                    "steps": metrics.get("rollout/steps"),
                    "tokens_per_s": round(step["generated_tokens"] / rollout_s, 2),
                    "ms_per_forward": round(1000 * rollout_s / max(metrics.get("rollout/nfe", 1.0), 1.0), 3)},
        "reward": {**step["rewards"], "groups_all_equal_fraction": step["groups_all_equal_fraction"]},
        "reward_all_tests": {**all_tests, "seconds": round(clock.seconds["reward_all_tests"], 4)},
        "update": {k: round(v, 6) for k, v in step["update"].items()},
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
        f"step {report['step_seconds']:.3f} s | rollout {roll['tokens_per_s']:.1f} tok/s, nfe "
        f"{roll['nfe']:.0f}, {roll['ms_per_forward']:.2f} ms/forward | params {params['total']:,} total, "
        f"{params['trainable']:,} trainable",
        f"reward: {report['reward']['sandboxed']}/{report['reward']['rows']} rows sandboxed; all-tests "
        f"scoring of {rew['rows']} canonical solutions {rew['seconds']:.3f} s ({rew['passed']} passed)",
        f"peak GPU memory {report['peak_memory_gib']} GiB | peak RSS {report['peak_rss_gib']} GiB",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = StepSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Dream on CPU (smoke test of the same code)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=None,
                        help=f"prompts per step (default {d.prompts}; tiny 2)")
    parser.add_argument("--n", type=int, default=None, help=f"samples per prompt (default {d.n}; tiny 2)")
    parser.add_argument("--prompt-len", type=int, default=None, help=f"default {d.prompt_len}; tiny 16")
    parser.add_argument("--r-len", type=int, default=None, help=f"default {d.r_len}; tiny 8")
    parser.add_argument("--a-len", type=int, default=None, help=f"default {d.a_len}; tiny 16")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"lockstep step cap (default {d.steps}; tiny 8)")
    parser.add_argument("--mode", choices=("gauss_seidel", "jacobi"), default=d.mode)
    parser.add_argument("--no-cache", action="store_true", help="no prompt KV cache during the rollout")
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank)
    parser.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    parser.add_argument("--ppo-epochs", type=int, default=d.ppo_epochs)
    parser.add_argument("--mini-batch", type=int, default=None, help=f"default {d.mini_batch}; tiny 4")
    parser.add_argument("--micro-batch", type=int, default=None, help=f"default {d.micro_batch}; tiny 2")
    parser.add_argument("--kl-coef", type=float, default=d.kl_coef,
                        help="> 0 adds the reference log-prob pass")
    parser.add_argument("--reward-tasks", nargs="+", default=list(DEFAULT_TASKS), help="HumanEval+ task ids")
    parser.add_argument("--reward-workers", type=int, default=None,
                        help="sandbox workers (default: CPU count)")
    parser.add_argument("--model", type=Path, default=None, help="a Dream checkpoint folder (full-size run)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> StepSettings:
    """Flags over the defaults (full-size) or the tiny smoke-test shapes."""
    base = StepSettings(prompts=2, n=2, prompt_len=16, r_len=8, a_len=16, steps=8, mini_batch=4,
                        micro_batch=2) if args.tiny else StepSettings()
    given = {"prompts": args.prompts, "n": args.n, "prompt_len": args.prompt_len, "r_len": args.r_len,
             "a_len": args.a_len, "steps": args.steps, "mini_batch": args.mini_batch,
             "micro_batch": args.micro_batch}
    return replace(base, **{k: v for k, v in given.items() if v is not None}, mode=args.mode,
                   use_cache=not args.no_cache, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                   ppo_epochs=args.ppo_epochs, kl_coef=args.kl_coef, seed=args.seed)


def main(argv: list[str] | None = None) -> dict:
    """CLI: run the benchmark, print the table, write ``--json``; bad flags exit with a one-line message."""
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available() and args.device in (None, "cuda"):
        raise SystemExit("the full-size GRPO step needs a CUDA GPU; use --tiny for the CPU smoke test")
    if args.tiny == (args.model is not None):
        raise SystemExit("bench_grpo_step: give either --tiny or --model DIR (a Dream checkpoint folder)")
    if args.model is not None and not (args.model / "config.json").is_file():
        raise SystemExit(f"bench_grpo_step: {args.model} is not a Dream checkpoint folder (no config.json)")
    try:
        settings = settings_from_args(args)
        if settings.lora_rank < 1:
            raise ValueError("the benchmark measures a LoRA step: --lora-rank must be >= 1, got "
                             f"{settings.lora_rank}")
        report = run_benchmark(settings, model_dir=args.model, device=args.device, task_ids=args.reward_tasks,
                               reward_workers=args.reward_workers, warmup=not args.no_warmup)
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
