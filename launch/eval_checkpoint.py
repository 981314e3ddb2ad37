"""Evaluate one checkpoint: generate, score in the sandbox, write evalplus-compatible results, add a table row.

Usage::

    python launch/eval_checkpoint.py recipe=eval/humaneval checkpoint=RUN/global_step_100 [key=value ...]
    python launch/eval_checkpoint.py recipe=eval/mbpp checkpoint=ADAPTER_DIR base_model=DREAM_DIR
    python launch/eval_checkpoint.py recipe=eval/persona checkpoint=DREAM_DIR persona.fixture=true

Why resumable: evaluations run for hours on preemptible nodes. Every generated sample is appended (fsync'd) to
``generations.rank<R>.jsonl`` as soon as its batch finishes and every scored chunk to ``scores.jsonl``; a re-run
with the same command generates and scores only what is missing (see :mod:`evals.code.store`).

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
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from decoding.devices import pick_device, pick_dtype
from evals.code import store
from evals.code.decoder import compare_argvs, resolve_decoder
from evals.code.model import (
    ModelSource,
    check_sampler_kwargs,
    generate_texts,
    load_model,
    resolve_checkpoint,
)
from evals.code.tasks import CodeTasks, SandboxRowScorer, finalize_code_eval
from evals.results import STEP_DIR, append_row, run_root

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
                                    <run>/config.yaml (or run_config=PATH); generation.<sampler>.* its settings
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
        raise RecipeError(f"arguments are recipe=<name>, checkpoint=PATH and key=value overrides, got {stray[0]!r} "
                          "(see --help)")
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
        raise RecipeError(f"scoring.k={OmegaConf.to_container(cfg.scoring, resolve=True)['k']} must be a list "
                          "of integers >= 1 (e.g. scoring.k=[1,10])")


@dataclass
class Plan:
    """Everything resolved before any work: what to load, where outputs go, what identifies the samples."""

    cfg: DictConfig
    source: ModelSource
    eval_name: str
    out_dir: Path
    results_dir: Path
    settings: dict[str, Any]


def _step_dir(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if STEP_DIR.match(candidate.name):
            return candidate
    return None


def sample_settings(cfg: DictConfig) -> dict[str, Any]:
    """Settings that change what a sample is; their hash names the evaluation and guards resumes."""
    common = {"task": cfg.task, "seed": cfg.seed, "merge_adapter": cfg.merge_adapter}
    if cfg.task == "persona":
        return {**common, "persona": OmegaConf.to_container(cfg.persona, resolve=True)}
    gen = cfg.generation
    return {**common, "mini": bool(cfg.dataset.get("mini", False)), "sampler": gen.sampler,
            "n_samples": gen.n_samples, "system_prompt": gen.system_prompt,
            "delimiter": gen.delimiter if gen.sampler == "lockstep" else None, "kwargs": sampler_kwargs(cfg)}


def sampler_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``generation.<sampler>`` as a plain dict, checked against the sampler's signature."""
    name = cfg.generation.sampler
    if name not in cfg.generation:
        raise RecipeError(f"generation.sampler={name} has no generation.{name} settings block")
    kwargs = OmegaConf.to_container(cfg.generation[name], resolve=True)
    if name == "lockstep":  # null = LockstepCfg's default (decoding/lockstep.py: the one source of truth)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_sampler_kwargs(name, kwargs)
    return kwargs


def make_plan(cfg: DictConfig) -> Plan:
    settings = sample_settings(cfg)  # validates the sampler settings first: cheap, and the likelier typo
    source = resolve_checkpoint(cfg.checkpoint, cfg.base_model, cfg.step)
    check_weights(source)
    checkpoint = Path(cfg.checkpoint).expanduser().resolve()
    step_dir = _step_dir(checkpoint)
    output_root = Path(cfg.output_root) if cfg.output_root else (step_dir or checkpoint) / "eval"
    sampler = cfg.persona.sampler if cfg.task == "persona" else cfg.generation.sampler
    eval_name = cfg.eval_name or f"{cfg.task}-{sampler}-{store.fingerprint(settings)}"
    if cfg.results_dir:
        results_dir = Path(cfg.results_dir)
    else:
        results_dir = run_root(step_dir) / "eval_results" if step_dir else output_root
    return Plan(cfg, source, eval_name, (output_root / eval_name).resolve(), results_dir.resolve(), settings)


def check_weights(source: ModelSource) -> None:
    """ValueError naming the file when a weight file is missing or truncated (headers only: milliseconds)."""
    from decoding.integrity import check_dream_weights, check_safetensors

    check_dream_weights(source.model_dir)
    if source.adapter_dir is not None:
        for file in sorted(source.adapter_dir.glob("*.safetensors")):
            check_safetensors(file)


def load(plan: Plan) -> tuple[Any, Any]:
    device = pick_device(plan.cfg.device)
    return load_model(plan.source, pick_dtype(plan.cfg.dtype, device), device, plan.cfg.merge_adapter)


def generate_shard(plan: Plan, tasks: CodeTasks, rank: int, world: int, after_batch: Any = None) -> None:
    """Generate this rank's missing samples batch by batch, each batch appended + fsync'd before the next."""
    gen = plan.cfg.generation
    order = {key: i for i, key in enumerate(tasks.items)}
    done = store.read_generations(plan.out_dir)
    mine = [k for k in store.shard(tasks.items, rank, world) if k not in done]
    if not mine:
        return
    model, tokenizer = load(plan)
    from decoding.tokenizer import build_chat_prompt

    system = {} if gen.system_prompt is None else {"system": gen.system_prompt}
    kwargs = sampler_kwargs(plan.cfg)
    journal = store.generation_journal(plan.out_dir, rank)
    journal.open_for_append()
    run_id = uuid.uuid4().hex[:8]
    # one bar over this rank's samples (its ETA covers the whole run) and, below it, the sampler's own bar over
    # the steps of the current batch (a 7B batch on CPU takes minutes: its ETA shows progress within it)
    bar = tqdm(total=len(mine), desc=f"generate[{rank}]", unit="sample", dynamic_ncols=True)
    try:
        for start in range(0, len(mine), gen.batch_size):
            batch = mine[start : start + gen.batch_size]
            parts = [tasks.prompts[tid] for tid, _ in batch]
            prompts = [build_chat_prompt(tokenizer, user, **system) + prefix for user, prefix in parts]
            seed = int(plan.cfg.seed) * 1_000_003 + order[batch[0]]
            out = generate_texts(model, tokenizer, prompts, gen.sampler, kwargs, seed, gen.delimiter or "",
                                 progress=True)
            batch_id = f"{run_id}-{rank}-{start}"
            journal.append(
                {"task_id": tid, "sample_idx": idx, "completion": prefix + text, "reasoning": reasoning,
                 "num_tokens": n_tok, "batch_id": batch_id, "batch_size": len(batch),
                 "batch_seconds": out.seconds, "batch_canvas_tokens": out.canvas_tokens, "rank": rank}
                for (tid, idx), (_, prefix), text, reasoning, n_tok
                in zip(batch, parts, out.completions, out.reasoning, out.num_tokens)
            )
            bar.update(len(batch))
            if after_batch is not None:
                after_batch()
    finally:
        bar.close()
        journal.close()


class IncrementalScorer:
    """Scores generated-but-unscored samples in chunks of ``scoring.chunk_size``, appending to scores.jsonl.

    Samples the sandbox could not judge (persistent infrastructure failure) are left unscored and counted in
    ``unscored``: a re-run retries them; they are never recorded as failures.
    """

    def __init__(self, plan: Plan, tasks: CodeTasks) -> None:
        self.plan, self.tasks = plan, tasks
        self.chunk = int(plan.cfg.scoring.chunk_size)
        if self.chunk < 1:
            raise ValueError(f"scoring.chunk_size must be >= 1, got {self.chunk}")
        self.score_chunk = SandboxRowScorer(plan.cfg, tasks)
        self.journal = store.Journal(plan.out_dir / "scores.jsonl")
        self.journal.open_for_append()
        self.scored = set(store.read_scores(plan.out_dir))
        self.generated = store.GenerationTail(plan.out_dir)
        self.unscored: set[store.SampleKey] = set()
        wanted = set(tasks.items)
        self.bar = tqdm(total=len(wanted), initial=len(self.scored & wanted), desc="score", unit="sample")

    def __call__(self, final: bool = False) -> None:
        generated = self.generated.poll()
        pending = [generated[k] for k in self.tasks.items
                   if k in generated and k not in self.scored and k not in self.unscored]
        while pending and (final or len(pending) >= self.chunk):
            chunk, pending = pending[: self.chunk], pending[self.chunk :]
            rows, _ = self.score_chunk(chunk)
            self.journal.append(rows)
            done = {store.sample_key(row) for row in rows}
            self.scored |= done
            self.unscored |= {store.sample_key(row) for row in chunk} - done
            self.bar.update(len(rows))

    def close(self) -> None:
        self.score_chunk.close()
        self.journal.close()
        self.bar.close()


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
    except ValueError as err:  # unknown task ids, bad limit or reward settings, another run's settings in out_dir
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
        what = "generation failed" if not ok else f"{len(scorer.unscored)} sample(s) hit sandbox infrastructure errors"
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
        model, tokenizer = load(plan)
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
    print(f"done: {plan.eval_name} step={row.get('step')} " + " ".join(f"{k}={v}" for k, v in metrics.items()))
    for name, path in written.items():
        print(f"{name}: {path}")


INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 user mistake (one ``error:`` line), 1 run failed, 130 interrupted (resumable)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage())
        return 0
    worker = RANK_ENV in os.environ  # a generation worker started by run_workers
    try:
        cfg = compose_config(argv)
        # generation.compare (the plain sampler by default): checked now (settings first: cheap, the likelier
        # typo), run after the main evaluation
        configs = [] if worker or cfg.task == "persona" else [(a, compose_config(a)) for a in compare_argvs(cfg, argv)]
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
