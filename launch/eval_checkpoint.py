"""Evaluate one checkpoint: generate, score in the sandbox, write evalplus-compatible results, add a table
row.

Usage::

    python launch/eval_checkpoint.py recipe=eval/humaneval checkpoint=RUN/global_step_100 [key=value ...]
    python launch/eval_checkpoint.py recipe=eval/mbpp checkpoint=ADAPTER_DIR base_model=DREAM_DIR
    python launch/eval_checkpoint.py recipe=eval/persona checkpoint=DREAM_DIR persona.fixture=true

Why resumable: evaluations run for hours on preemptible nodes. Every generated sample is appended (fsync'd) to
``generations.rank<R>.jsonl`` as soon as its batch finishes and every scored chunk to ``scores.jsonl``; a
re-run with the same command generates and scores only what is missing (see :mod:`evals.code.store`).

Contract of the outputs in ``<output_root>/<eval_name>/``: ``samples.jsonl`` (evalplus sample format),
``samples_eval_results.json`` (evalplus result format: ``eval`` / ``base_status`` / ``plus_status`` /
``pass_at_k``), ``summary.json`` (pass@k for base and plus, decoding speed, settings); one row per
evaluation in ``<results_dir>/results.jsonl`` plus the rendered table and plot (:mod:`evals.results`).

Generation runs in one process per visible GPU (``generation.num_workers=auto``; each worker owns every
``world``-th sample) while the main process scores finished samples in chunks; on CPU one process does both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from decoding.devices import pick_device, pick_dtype
from evals.code import store
from evals.code.decoder import compare_argvs, resolve_decoder
from evals.code.run import (
    IncrementalScorer,
    Plan,
    generate_shard,
    load_plan_model,
    make_plan,
    sample_settings,
)
from evals.code.tasks import CodeTasks, finalize_code_eval
from evals.results import append_row

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RANK_ENV, WORLD_ENV = "LOCKSTEP_EVAL_RANK", "LOCKSTEP_EVAL_WORLD"
TASKS = ("humaneval", "mbpp", "persona")


from launch.recipes import RecipeError, compose  # noqa: E402

HELP = """usage: python launch/eval_checkpoint.py recipe=<{recipes}> checkpoint=PATH [key=value ...]

Evaluate one checkpoint: generate, score in the sandbox, write evalplus-compatible results and add a row to
the run's results table. checkpoint= is a Dream folder, a peft adapter folder, or a trainer step folder
(global_step_N). Interrupted runs (Ctrl-C, a killed job) resume when the same command is run again.

Key overrides (all keys: recipes/eval/_defaults.yaml, docs/evaluation.md):
  base_model=DIR                    base Dream for an adapter (default: the adapter's base_model_name_or_path)
  generation.sampler=rollout|plain|fast|lockstep   rollout (default): the decoder the run trained with, from
                                    <run>/config.yaml (or run_config=PATH); generation.<sampler>.* \
its settings
  generation.compare=[plain]        samplers also evaluated, one more results row each ([] = none)
  generation.n_samples=N            samples per task;  generation.batch_size=N  prompts per batch
  dataset.limit=N  dataset.task_ids=[...]  dataset.mini=true
  scoring.k=[1,10]                  pass@k reported;  scoring.chunk_size=N
  device=auto|cpu|cuda  dtype=auto|bfloat16|float16|float32   (auto: GPU + bf16, else CPU + fp32)
  eval_name=NAME  output_root=DIR  results_dir=DIR
  persona.fixture=true              (recipe=eval/persona) the offline fixture instead of the hub data

Exit status: 0 done, 2 bad command line or model (one line on stderr, nothing written), 1 the run failed,
130 interrupted (finished work is kept).
"""


def usage() -> str:
    from launch.recipes import recipe_names

    return HELP.format(recipes="|".join(recipe_names("eval")))


def compose_config(argv: list[str], local: bool = True) -> DictConfig:
    """Compose ``recipes/<recipe>.yaml`` with the command-line overrides through Hydra's compose API.

    ``local=False`` (rendering a Slurm job elsewhere): ``device=cuda`` is not checked against this machine.
    """
    recipes = [a.split("=", 1)[1] for a in argv if a.startswith("recipe=")]
    if not recipes:
        raise RecipeError("missing recipe=eval/humaneval | eval/mbpp | eval/persona (see --help)")
    stray = [a for a in argv if "=" not in a and not a.startswith("~")]
    if stray:
        raise RecipeError("arguments are recipe=<name>, checkpoint=PATH and key=value overrides, got "
                          f"{stray[0]!r} (see --help)")
    name = recipes[-1].removesuffix(".yaml")
    if not (RECIPES_DIR / f"{name}.yaml").is_file():
        raise RecipeError(f"no recipe {name!r}: expected {RECIPES_DIR / name}.yaml")
    overrides = [a for a in argv if not a.startswith("recipe=")]
    cfg = compose(name, overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise RecipeError(f"missing required setting(s) {', '.join(missing)} (e.g. checkpoint=PATH)")
    if cfg.task not in TASKS:
        raise RecipeError(f"task={cfg.task} is not one of {', '.join(TASKS)}")
    check_values(cfg, local)
    if cfg.task != "persona":
        try:
            source = resolve_decoder(cfg)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        with open_dict(cfg):
            cfg.generation.decoder_source = source
    return cfg


def _int_setting(cfg: DictConfig, key: str, minimum: int, allow: tuple[Any, ...] = ()) -> None:
    value = OmegaConf.select(cfg, key)
    if value in allow:
        return
    try:
        ok = not isinstance(value, bool) and int(value) == float(value) and int(value) >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        extra = "".join(f" or {'null' if a is None else a}" for a in allow)
        raise RecipeError(f"{key}={value} must be an integer >= {minimum}{extra}")


def check_values(cfg: DictConfig, local: bool = True) -> None:
    """RecipeError for values that would otherwise fail deep inside a run (after minutes of model loading).

    ``local=False``: the device is checked by name only (the job runs on another machine).
    """
    _int_setting(cfg, "seed", 0)
    _int_setting(cfg, "step", 0, allow=(None,))
    try:
        dtype_key = f"dtype={cfg.dtype}"
        if local:
            pick_dtype(cfg.dtype, pick_device(cfg.device, label=f"device={cfg.device}"), label=dtype_key)
        else:
            pick_dtype(cfg.dtype, torch.device("cpu"), label=dtype_key)
            if cfg.device != "auto":
                torch.device(cfg.device)
    except (ValueError, RuntimeError) as err:
        raise RecipeError(str(err)) from None
    if cfg.task == "persona":
        return
    _int_setting(cfg, "dataset.limit", 1, allow=(None,))
    for key in ("generation.n_samples", "generation.batch_size", "scoring.chunk_size"):
        _int_setting(cfg, key, 1)
    _int_setting(cfg, "generation.num_workers", 1, allow=("auto",))
    ks = cfg.scoring.k if OmegaConf.is_list(cfg.scoring.k) else [cfg.scoring.k]
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise RecipeError(f"scoring.k={OmegaConf.to_container(cfg.scoring, resolve=True)['k']} must be a "
                          "list of integers >= 1 (e.g. scoring.k=[1,10])")


def worker_count(cfg: DictConfig) -> int:
    requested = cfg.generation.num_workers
    if requested != "auto":
        return max(int(requested), 1)
    return max(torch.cuda.device_count(), 1) if pick_device(cfg.device).type == "cuda" else 1


def run_workers(plan: Plan, argv: list[str], world: int, scorer: IncrementalScorer) -> bool:
    """One generation subprocess per device; score while they run. True when every worker exited cleanly."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(world)]
    use_cuda = pick_device(plan.cfg.device).type == "cuda"
    procs = []
    for rank in range(world):
        env = {**os.environ, RANK_ENV: str(rank), WORLD_ENV: str(world)}
        if use_cuda:
            env["CUDA_VISIBLE_DEVICES"] = devices[rank % len(devices)]
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], env=env))
    try:
        while any(p.poll() is None for p in procs):
            scorer()
            time.sleep(2.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    codes = [p.wait() for p in procs]
    for rank, code in enumerate(codes):
        if code != 0:
            print(f"generation worker {rank} exited with code {code}", file=sys.stderr)
    return all(code == 0 for code in codes)


def run_code_eval(plan: Plan, argv: list[str]) -> int:
    try:
        tasks = CodeTasks.load(plan.cfg)
        store.check_settings(plan.out_dir, plan.settings)
        print(f"evaluating {plan.source.describe()} on {len(tasks.prompts)} {plan.cfg.task} task(s) "
              f"x {plan.cfg.generation.n_samples} sample(s) -> {plan.out_dir}\n"
              f"decoder: {plan.cfg.generation.sampler}, settings from {plan.cfg.generation.decoder_source}",
              flush=True)
        scorer = IncrementalScorer(plan, tasks)
    # unknown task ids, bad limit or reward settings, another run's settings in out_dir
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ok = True
    try:
        world = worker_count(plan.cfg)
        if world == 1:
            generate_shard(plan, tasks, 0, 1, after_batch=scorer)
        else:
            ok = run_workers(plan, argv, world, scorer)
        scorer(final=True)
    finally:
        scorer.close()
    if not ok or scorer.unscored:
        what = ("generation failed" if not ok
                else f"{len(scorer.unscored)} sample(s) hit sandbox infrastructure errors")
        print(f"error: {what}; finished work is kept: re-run the same command to resume", file=sys.stderr)
        return 1
    summary = finalize_code_eval(plan.cfg, tasks, plan.out_dir)
    row = {**base_row(plan), **summary["row"]}
    written = append_row(plan.results_dir, row)
    print_outcome(plan, row, written)
    return 0


def run_persona(plan: Plan) -> int:
    """Persona task: one monolithic run (its report is the unit of resumption), then a table row.

    The data is loaded before anything is written or the model is loaded: an unreachable hub or a bad data
    file ends the run at once with one line (exit 2).
    """
    from evals.persona.run import load_persona_data, run_persona_eval

    report_path = plan.out_dir / "persona_report.json"
    persona_cfg = {**OmegaConf.to_container(plan.cfg.persona, resolve=True),
                   "seed": int(plan.cfg.seed), "out_dir": str(plan.out_dir)}
    try:
        store.check_settings(plan.out_dir, plan.settings, record=False)
    except ValueError as err:  # out_dir holds a run with other settings
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        data = None if report_path.exists() else load_persona_data(persona_cfg)
    except ValueError as err:  # bad persona settings, hub unreachable, bad data files
        print(f"error: persona: {err}", file=sys.stderr)
        return 2
    store.check_settings(plan.out_dir, plan.settings)
    if data is None:
        import json

        report = json.loads(report_path.read_text())
        print(f"persona report exists, reusing {report_path}")
    else:
        model, tokenizer = load_plan_model(plan)
        try:
            report = run_persona_eval(model, tokenizer, persona_cfg, data=data)
        except ValueError as err:  # the persona task's own config/data errors (PromptTooLong, ...)
            print(f"error: persona: {err}", file=sys.stderr)
            return 2
    headline = {f"persona_{k}": v for k, v in report.get("headline", {}).items()}
    row = {**base_row(plan), **headline, "items": report.get("parsing", {}).get("items")}
    written = append_row(plan.results_dir, row)
    print_outcome(plan, row, written)
    return 0


def base_row(plan: Plan) -> dict[str, Any]:
    cfg = plan.cfg
    return {"task": cfg.task, "eval_name": plan.eval_name, "step": plan.source.step,
            "checkpoint": str(Path(cfg.checkpoint).expanduser().resolve()), "model": plan.source.describe(),
            "output_dir": str(plan.out_dir), "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def print_outcome(plan: Plan, row: dict[str, Any], written: dict[str, Path]) -> None:
    metrics = {k: v for k, v in row.items() if k.startswith(("pass@", "persona_", "tokens_per_s"))}
    print(f"done: {plan.eval_name} step={row.get('step')} "
          + " ".join(f"{k}={v}" for k, v in metrics.items()))
    for name, path in written.items():
        print(f"{name}: {path}")


INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 user mistake (one ``error:`` line), 1 run failed, 130 interrupted
    (resumable)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage())
        return 0
    worker = RANK_ENV in os.environ  # a generation worker started by run_workers
    try:
        cfg = compose_config(argv)
        # generation.compare (the plain sampler by default): checked now (settings first: cheap, the likelier
        # typo), run after the main evaluation
        configs = ([] if worker or cfg.task == "persona"
                   else [(a, compose_config(a)) for a in compare_argvs(cfg, argv)])
        for _, extra_cfg in configs:
            sample_settings(extra_cfg)
        plan = make_plan(cfg)
        compare = [(extra, make_plan(extra_cfg)) for extra, extra_cfg in configs]
    except ValueError as err:  # RecipeError, the checkpoint-resolution and weight-file errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if worker:
            generate_shard(plan, CodeTasks.load(cfg), int(os.environ[RANK_ENV]), int(os.environ[WORLD_ENV]))
            return 0
        if cfg.task == "persona":
            return run_persona(plan)
        code = run_code_eval(plan, argv)
        for extra, extra_plan in compare if code == 0 else []:
            print(f"also evaluating with generation.sampler={extra_plan.cfg.generation.sampler} "
                  "(generation.compare)", flush=True)
            code = run_code_eval(extra_plan, extra)
        return code
    except KeyboardInterrupt:  # Ctrl-C: every finished batch / scored chunk is already on disk
        if not worker:  # the workers share the terminal's SIGINT; the main process says it once
            print("\ninterrupted; run the same command to resume", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
