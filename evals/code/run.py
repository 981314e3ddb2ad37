"""One checkpoint's code evaluation, resumable: the plan (what to load, where outputs go, what identifies the
samples), generation of a rank's shard into its journal, and scoring in chunks as generation proceeds.

``launch/eval_checkpoint.py`` composes the recipe, starts the generation workers and calls these; the journals
and their resume rules are :mod:`evals.code.store`; ``docs/evaluation.md`` is the user guide.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from decoding.devices import pick_device, pick_dtype
from evals.code import store
from evals.code.model import ModelSource, load_model, resolve_checkpoint
from evals.code.tasks import CodeTasks, SandboxRowScorer
from evals.generation import check_sampler_kwargs, generate_in_batches
from evals.results import STEP_DIR, run_root


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
        raise ValueError(f"generation.sampler={name} has no generation.{name} settings block")
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


def load_plan_model(plan: Plan) -> tuple[Any, Any]:
    """(model, tokenizer) of the plan's checkpoint on the configured device and dtype."""
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
    model, tokenizer = load_plan_model(plan)
    from decoding.tokenizer import build_chat_prompt

    system = {} if gen.system_prompt is None else {"system": gen.system_prompt}
    parts = [tasks.prompts[tid] for tid, _ in mine]
    prompts = [build_chat_prompt(tokenizer, user, **system) + prefix for user, prefix in parts]
    journal = store.generation_journal(plan.out_dir, rank)
    journal.open_for_append()
    run_id = uuid.uuid4().hex[:8]

    def seed_of(start: int) -> int:  # a batch's seed depends on its first sample only: resumes reproduce it
        return int(plan.cfg.seed) * 1_000_003 + order[mine[start]]

    # one bar over this rank's samples (its ETA covers the whole run) and, below it, the sampler's own bar
    # over the steps of the current batch (a 7B batch on CPU takes minutes: its ETA shows progress within it)
    bar = tqdm(total=len(mine), desc=f"generate[{rank}]", unit="sample", dynamic_ncols=True)
    try:
        batches = generate_in_batches(model, tokenizer, prompts, gen.sampler, sampler_kwargs(plan.cfg),
                                      gen.batch_size, delimiter=gen.delimiter or "", seed_of=seed_of,
                                      progress=True)
        for start, out in batches:
            batch = mine[start : start + len(out.completions)]
            batch_id = f"{run_id}-{rank}-{start}"
            journal.append(
                {"task_id": tid, "sample_idx": idx, "completion": prefix + text, "reasoning": reasoning,
                 "num_tokens": n_tok, "batch_id": batch_id, "batch_size": len(batch),
                 "batch_seconds": out.seconds, "batch_canvas_tokens": out.canvas_tokens, "rank": rank}
                for (tid, idx), (_, prefix), text, reasoning, n_tok
                in zip(batch, parts[start:], out.completions, out.reasoning, out.num_tokens)
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
