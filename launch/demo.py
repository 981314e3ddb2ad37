"""The CPU demo (``make demo``): GRPO through verl visibly teaches a tiny Dream to write small Python
functions.

    python launch/demo.py [demo.KEY=VALUE ...] [RECIPE_KEY=VALUE ...]
    python launch/demo.py --help

Steps, all on CPU: (1) held-out evaluation of the committed SFT warm start (lockstep R/A decoding + the
sandboxed reward worker, :mod:`cpu_demo.evaluate`); (2) GRPO with ``python launch/train_grpo.py recipe=demo``
(verl driver, Ray workers, Dream rollout/engine, sandboxed rewards, checkpoints every ``trainer.save_freq``
steps, W&B offline) in a subprocess whose log goes to ``<run_dir>/train.log`` while a progress bar shows the
steps; (3) held-out evaluation of every saved checkpoint; (4) ``<run_dir>/learning_curve.png``,
``summary.json`` and ``summary.md``.

The held-out metric is sampled pass@1: ``demo.eval_samples`` completions per held-out task at the rollout
temperature, averaged (the policy GRPO optimises); the greedy pass rate is reported beside it.

Arguments ``demo.*`` are this script's own (below); every other ``key=value`` is a Hydra override of
``recipes/demo.yaml`` passed to ``launch/train_grpo.py`` unchanged. Exit codes: 0 success, 2 bad arguments or
recipe (one line on stderr), 1 the GRPO run failed (tail of its log shown).

demo.* settings:
  demo.eval_samples=8     sampled completions per held-out task (sampled pass@1 = their mean pass rate)
  demo.greedy=true        also report the greedy (temperature 0) pass rate
  demo.eval_batch=96      rows decoded per evaluation batch
  demo.seed=0             seed of the evaluation sampler
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.recipes import RecipeError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("demo")
STEP_LINE = re.compile(r"step:(\d+) - (.*)")
ROLLOUT_FAILURE = "Error in _run_prompt"  # verl's agent-loop worker, once per failed rollout sample
RECIPE = "demo"


@dataclass(frozen=True)
class DemoSettings:
    """This script's own ``demo.*`` settings (module docstring)."""

    eval_samples: int = 8
    greedy: bool = True
    eval_batch: int = 96
    seed: int = 0

    @classmethod
    def parse(cls, items: dict[str, str]) -> DemoSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(items) - known)
        if unknown:
            raise RecipeError(f"unknown demo settings {['demo.' + k for k in unknown]}; known: "
                            f"{sorted('demo.' + k for k in known)}")
        values: dict[str, Any] = {}
        for key, raw in items.items():
            if key == "greedy":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise RecipeError(f"demo.greedy must be true or false, got {raw!r}")
                values[key] = raw.lower() in ("true", "1")
            else:
                try:
                    values[key] = int(raw)
                except ValueError:
                    raise RecipeError(f"demo.{key} must be an integer, got {raw!r}") from None
        settings = cls(**values)
        if settings.eval_samples < 1 or settings.eval_batch < 1:
            raise RecipeError("demo.eval_samples and demo.eval_batch must be >= 1")
        return settings


def split_arguments(argv: list[str]) -> tuple[DemoSettings, list[str]]:
    """(demo settings, recipe overrides); RecipeError for arguments that are not ``key=value``."""
    own: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise RecipeError(f"arguments are key=value overrides, got {arg!r} (see --help)")
        if arg.startswith("recipe="):
            raise RecipeError("the demo always runs recipe=demo; use launch/train_grpo.py for other recipes")
        if arg.startswith("demo."):
            key, value = arg[len("demo."):].split("=", 1)
            own[key] = value
        else:
            overrides.append(arg)
    return DemoSettings.parse(own), overrides


# --------------------------------------------------------------------------------------------- recipe facts
@dataclass(frozen=True)
class DemoPlan:
    """What the composed recipe says the demo will do (read once, before anything runs)."""

    run_dir: Path
    model_path: Path
    spec: Any  # cpu_demo.tasks.DemoTaskSpec
    eval_cfg: Any  # cpu_demo.evaluate.DemoEvalConfig (sampled, rollout temperature)
    total_steps: int
    lora: bool


def plan_from_recipe(overrides: list[str], settings: DemoSettings) -> DemoPlan:
    """Compose ``recipes/demo.yaml`` with the overrides and validate what the demo needs from it."""
    from omegaconf import OmegaConf

    from cpu_demo.evaluate import DemoEvalConfig
    from cpu_demo.tasks import CanvasSpec
    from launch.prepare_data import demo_spec
    from launch.train_grpo import compose_recipe
    from rl.verl.config import validate_recipe

    cfg = compose_recipe(RECIPE, overrides)
    validate_recipe(cfg, check_files=False)
    data = cfg.lockstep.data
    if data.get("dataset") != "demo":
        raise RecipeError(f"lockstep.data.dataset must be 'demo' for the demo, got {data.get('dataset')!r}")
    dream = OmegaConf.to_container(cfg.actor_rollout_ref.rollout.custom.dream, resolve=True)
    if dream.get("sampler") != "lockstep":
        raise RecipeError("the demo evaluates lockstep R/A decoding: keep "
                          "actor_rollout_ref.rollout.custom.dream.sampler=lockstep")
    spec = demo_spec(int(data.train_tasks), int(data.val_tasks),
                     OmegaConf.to_container(data.demo, resolve=True) if data.get("demo") else None)
    # the rollout's own lockstep settings (rl/rollout_decoding.py), so evaluation decodes exactly like
    # training
    options = {k: v for k, v in dream.get("options", {}).items()
               if k not in ("delimiter", "r_len", "a_len")}
    rollout = cfg.actor_rollout_ref.rollout
    top_p = float(rollout.get("top_p") or 1.0)
    options.setdefault("top_p", None if top_p >= 1.0 else top_p)
    try:
        canvas = CanvasSpec(r_len=int(dream["options"]["r_len"]), a_len=int(dream["options"]["a_len"]))
        eval_cfg = DemoEvalConfig(canvas=canvas, batch_size=settings.eval_batch,
                                  temperature=float(rollout.temperature), seed=settings.seed,
                                  lockstep=options)
        eval_cfg.lockstep_cfg()
    except (KeyError, TypeError, ValueError) as error:
        raise RecipeError(f"actor_rollout_ref.rollout.custom.dream.options: {error}") from None
    model_path = Path(str(cfg.actor_rollout_ref.model.path))
    if not model_path.is_absolute() and not model_path.exists():
        model_path = PROJECT_ROOT / model_path
    if not (model_path / "config.json").is_file():
        raise RecipeError(f"actor_rollout_ref.model.path={cfg.actor_rollout_ref.model.path} is not a Dream "
                          "checkpoint (regenerate the warm start: python launch/train_sft.py recipe=demo_sft "
                          "export_dir=recipes/assets/demo_warmstart)")
    return DemoPlan(run_dir=Path(str(cfg.lockstep.run_dir)).resolve(), model_path=model_path.resolve(),
                    spec=spec,
                    eval_cfg=eval_cfg, total_steps=int(cfg.trainer.total_training_steps),
                    lora=int(cfg.actor_rollout_ref.model.lora_rank) > 0)


# --------------------------------------------------------------------------------------------- evaluation
def evaluate_model(model: Any, tokenizer: Any, tasks: list[Any], plan: DemoPlan,
                   settings: DemoSettings, label: str) -> dict[str, float]:
    """Held-out sampled pass@1 (``eval_samples`` per task at the rollout temperature) and greedy pass rate."""
    import dataclasses

    from cpu_demo.evaluate import evaluate_pass_rate

    sampled = evaluate_pass_rate(model, tokenizer, tasks * settings.eval_samples, plan.eval_cfg,
                                 progress=False)
    metrics = {"pass_at_1": sampled.pass_rate, "well_formed": sampled.well_formed}
    if settings.greedy:
        greedy_cfg = dataclasses.replace(plan.eval_cfg, temperature=0.0)
        metrics["greedy_pass_rate"] = evaluate_pass_rate(model, tokenizer, tasks, greedy_cfg).pass_rate
    logger.info("%s: held-out sampled pass@1 %.3f%s", label, metrics["pass_at_1"],
                f", greedy {metrics['greedy_pass_rate']:.3f}" if settings.greedy else "")
    return metrics


def load_checkpoint(step_dir: Path, base: Path, lora: bool) -> tuple[Any, Any]:
    """(model, tokenizer) of a verl checkpoint ``global_step_<k>/actor``: full weights or peft adapter on
    base."""
    import torch

    from evals.code.model import ModelSource, load_model

    source = (ModelSource(base, step_dir / "lora_adapter", None) if lora
              else ModelSource(step_dir / "huggingface", None, None))
    return load_model(source, torch.float32, torch.device("cpu"), merge_adapter=False)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, ``global_step_<k>/actor``) of every checkpoint verl wrote, by step."""
    found = []
    for path in (run_dir / "checkpoints").glob("global_step_*/actor"):
        found.append((int(path.parent.name.rsplit("_", 1)[1]), path))
    return sorted(found)


# --------------------------------------------------------------------------------------------- GRPO run
def parse_step_line(line: str) -> tuple[int, dict[str, float]] | None:
    """verl's console logger line ``step:N - key:value - ...`` -> (N, numeric metrics), else None."""
    match = STEP_LINE.search(line)
    if not match:
        return None
    values: dict[str, float] = {}
    for item in match.group(2).split(" - "):
        key, _, value = item.partition(":")
        number = re.sub(r"^np\.\w+\((.*)\)$", r"\1", value.strip())
        try:
            values[key.strip()] = float(number)
        except ValueError:
            continue
    return int(match.group(1)), values


class TrainLog:
    """What the demo reads from the GRPO run's log while it streams: verl's per-step metrics and the rollout
    samples that failed (and were evicted from their step) on the way.

    verl logs a failed sample as ``Error in _run_prompt ...`` (an agent loop, its reward included, raised) and
    reports ``.../rollout_failure/evicted_samples`` for groups left with no trajectory; failures seen before
    the step line of step N belong to step N. A run with failures trained on fewer samples than its recipe
    says, so its result is not the reproducible one: the summary says so."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}
        self.failures: dict[int, int] = {}
        self._pending = 0

    def read(self, line: str) -> tuple[int, dict[str, float]] | None:
        """Take one log line; returns the parsed step line, if it is one."""
        if ROLLOUT_FAILURE in line:
            self._pending += 1
        parsed = parse_step_line(line)
        if parsed:
            step, metrics = parsed
            self.steps[step] = metrics
            evicted = max(self._pending, int(sum(v for k, v in metrics.items()
                                                 if k.endswith("rollout_failure/evicted_samples"))))
            if evicted:
                self.failures[step] = evicted
            self._pending = 0
        return parsed


def run_grpo(overrides: list[str], plan: DemoPlan) -> TrainLog:
    """``launch/train_grpo.py recipe=demo`` in a subprocess; full log in ``<run_dir>/train.log``, a progress
    bar over the GRPO steps here. Returns what :class:`TrainLog` read. RuntimeError (exit 1) when the run
    fails."""
    from tqdm.auto import tqdm

    command = [sys.executable, str(PROJECT_ROOT / "launch" / "train_grpo.py"), f"recipe={RECIPE}",
               f"lockstep.run_dir={plan.run_dir}", f"actor_rollout_ref.model.path={plan.model_path}",
               *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    env.setdefault("WANDB_MODE", "offline")
    log_path = plan.run_dir / "train.log"
    train_log = TrainLog()
    tail: deque[str] = deque(maxlen=40)
    bar = tqdm(total=plan.total_steps, desc="GRPO (verl)", unit="step", dynamic_ncols=True)
    bar.set_postfix_str("starting Ray and verl workers")
    with open(log_path, "w") as log, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT,
                                                       text=True, env=env, cwd=PROJECT_ROOT) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            tail.append(line.rstrip())
            parsed = train_log.read(line)
            if parsed:
                step, metrics = parsed
                bar.update(step - bar.n)
                bar.set_postfix(reward=f"{metrics.get('critic/score/mean', float('nan')):.2f}")
        code = process.wait()
    bar.close()
    if code != 0:
        print("\n".join(tail), file=sys.stderr)
        raise RuntimeError(f"the GRPO run failed (exit {code}); full log: {log_path}")
    return train_log


# --------------------------------------------------------------------------------------------- report
def plot_learning_curve(evals: list[dict[str, Any]], steps: dict[int, dict[str, float]], path: Path) -> None:
    """Held-out pass rates (per evaluated checkpoint) and train reward (per GRPO step) vs step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    x = [e["step"] for e in evals]
    ax.plot(x, [e["pass_at_1"] for e in evals], "o-", color="tab:blue", label="held-out pass@1 (sampled)")
    if all("greedy_pass_rate" in e for e in evals):
        ax.plot(x, [e["greedy_pass_rate"] for e in evals], "s--", color="tab:green", label="held-out greedy")
    rewards = sorted((s, m["critic/score/mean"]) for s, m in steps.items() if "critic/score/mean" in m)
    if rewards:
        ax.plot([s for s, _ in rewards], [r for _, r in rewards], color="tab:orange", alpha=0.7,
                label="train reward (GRPO rollouts)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("pass rate / reward")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Lockstep demo: GRPO (verl) on a tiny Dream, CPU", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def failure_note(failures: dict[str, int]) -> str | None:
    """One line for the summary when rollout samples failed, else None."""
    if not failures:
        return None
    steps = ", ".join(f"{step} ({n})" for step, n in sorted(failures.items(), key=lambda kv: int(kv[0])))
    return (f"WARNING: {sum(failures.values())} rollout samples failed and were evicted (step (count): "
            f"{steps}); this run trained on fewer samples than the recipe and is not the reproducible "
            "result; see train.log")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` (everything) and ``summary.md`` (the table a README can show)."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| step | held-out pass@1 (sampled) | held-out greedy | train reward |", "|---|---|---|---|"]
    for e in summary["evals"]:
        greedy = f"{e['greedy_pass_rate']:.3f}" if "greedy_pass_rate" in e else "-"
        reward = e.get("train_reward")
        lines.append(f"| {e['step']} | {e['pass_at_1']:.3f} | {greedy} | "
                     f"{'-' if reward is None else f'{reward:.3f}'} |")
    lines.append("")
    lines.append(f"{summary['n_heldout']} held-out tasks x {summary['eval_samples']} samples; "
                 f"wall time {summary['wall_s']:.0f} s ({summary['command']}).")
    note = failure_note(summary["rollout_failures"])
    if note:
        lines += ["", note]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")


def run(argv: list[str]) -> dict[str, Any]:
    """The whole demo (module docstring); returns the summary."""
    import torch

    from decoding import load_dream
    from decoding.tokenizer import load_tokenizer

    start = time.perf_counter()
    settings, overrides = split_arguments(argv)
    plan = plan_from_recipe(overrides, settings)
    for stale in ("checkpoints", "data"):  # every demo run starts fresh (trainer.resume_mode=disable)
        shutil.rmtree(plan.run_dir / stale, ignore_errors=True)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    heldout = plan.spec.generate().heldout
    print(f"[1/4] held-out evaluation of the warm start {plan.model_path} ({len(heldout)} tasks)", flush=True)
    torch.manual_seed(settings.seed)
    evals = [{"step": 0, **evaluate_model(load_dream(plan.model_path, dtype=torch.float32).eval(),
                                          load_tokenizer(plan.model_path), heldout, plan, settings,
                                          "warm start")}]
    print(f"[2/4] GRPO through verl: python launch/train_grpo.py recipe=demo {' '.join(overrides)}",
          flush=True)
    train_log = run_grpo(overrides, plan)
    steps = train_log.steps
    found = checkpoints(plan.run_dir)
    if not found:
        raise RuntimeError(f"the GRPO run wrote no checkpoint under {plan.run_dir / 'checkpoints'} "
                           "(trainer.save_freq must be > 0)")
    print(f"[3/4] held-out evaluation of {len(found)} checkpoint(s)", flush=True)
    for step, step_dir in found:
        model, tokenizer = load_checkpoint(step_dir, plan.model_path, plan.lora)
        evals.append({"step": step,
                      **evaluate_model(model, tokenizer, heldout, plan, settings, f"step {step}")})
    for e in evals:
        reward = steps.get(e["step"], {}).get("critic/score/mean")
        if reward is not None:
            e["train_reward"] = reward
    print("[4/4] learning curve and summary", flush=True)
    plot_learning_curve(evals, steps, plan.run_dir / "learning_curve.png")
    summary = {
        "command": "python launch/demo.py " + " ".join(argv), "run_dir": str(plan.run_dir),
        "wall_s": round(time.perf_counter() - start, 1), "n_heldout": len(heldout),
        "eval_samples": settings.eval_samples, "eval_temperature": plan.eval_cfg.temperature,
        "before": evals[0], "after": evals[-1], "evals": evals,
        "train_steps": {str(k): v for k, v in sorted(steps.items())},
        "rollout_failures": {str(k): v for k, v in sorted(train_log.failures.items())},
    }
    write_summary(plan.run_dir, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # importing verl (recipe validation) announces every optional engine it lacks; none is needed here
    warnings.filterwarnings("ignore", message=r".* engine is not available", category=UserWarning)
    logging.getLogger("verl").setLevel(logging.ERROR)
    try:
        summary = run(args)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    before, after = summary["before"], summary["after"]
    greedy = (f"; greedy {before['greedy_pass_rate']:.0%} -> {after['greedy_pass_rate']:.0%}"
              if "greedy_pass_rate" in before else "")
    print(f"\nheld-out pass@1 (sampled, T={summary['eval_temperature']}): {before['pass_at_1']:.0%} "
          f"(warm start) -> {after['pass_at_1']:.0%} after {after['step']} GRPO steps{greedy}")
    note = failure_note(summary["rollout_failures"])
    if note:
        print(note, file=sys.stderr)
    print(f"wall time {summary['wall_s'] / 60:.1f} min; learning curve: "
          f"{summary['run_dir']}/learning_curve.png; summary: {summary['run_dir']}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
