"""The persona-simulation eval task: load, prompt one question at a time, generate, parse, score, report.

Entry points:
- ``run_persona_eval(model, tokenizer, cfg) -> report dict`` for ``launch/eval_checkpoint.py task=persona``
  (``cfg`` = mapping with the fields of :class:`PersonaEvalConfig`; unknown keys are an error);
- ``python -m evals.persona.run --model DIR [--fixture] [--variant ...] [--sampler plain|lockstep]
  --out DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from evals.persona.data import (
    HoldoutItem,
    HubUnreachable,
    PersonaDataError,
    Respondent,
    holdout_items,
    load_respondents,
)
from evals.persona.generate import SAMPLERS, generate_completions
from evals.persona.metric import build_cells, summarise
from evals.persona.parse import ParsedAnswer, parse_answer
from evals.persona.render import VARIANTS, PersonaUnavailable, Prompt, build_prompt, persona_for_variant
from evals.persona.report import COMPARABILITY_NOTE, REPORT_NAME, plot_per_task, write_json
from evals.persona.tasks import RANGE_TABLE, TASKS


@dataclass
class PersonaEvalConfig:
    """Settings of one persona eval run (defaults: hub data, full persona, plain sampler, 48-token canvas)."""

    fixture: bool = False
    revision: str = "main"  # resolved to a commit sha and recorded; pass a sha to pin
    wave_split_files: str | None = None
    summary_files: str | None = None
    variant: str = "full"
    sampler: str = "plain"
    max_context: int = 2048
    max_new_tokens: int = 48
    steps: int = 48
    alg: str = "entropy"
    temperature: float = 0.0
    lockstep_r_len: int = 32  # lockstep only: scratch R block before the answer
    lockstep_delimiter: str = "\nAnswer: "
    batch_size: int = 8
    max_respondents: int | None = None
    max_items_per_respondent: int | None = None
    tasks: list[str] | None = None  # restrict to these holdout tasks (names as in evals.persona.tasks.TASKS)
    seed: int = 0
    out_dir: str | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | PersonaEvalConfig | None) -> PersonaEvalConfig:
        """Build from a dict / OmegaConf mapping; unknown keys and bad values raise ``ValueError``."""
        if isinstance(cfg, PersonaEvalConfig):
            return cfg.validated()
        values = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown persona eval settings {unknown}; known: {sorted(known)}")
        return cls(**values).validated()

    def validated(self) -> PersonaEvalConfig:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, not {self.sampler!r}")
        for name in ("max_context", "max_new_tokens", "steps", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.lockstep_r_len < 0:
            raise ValueError("lockstep_r_len must be >= 0")
        if self.tasks is not None:
            self.tasks = list(self.tasks)
            unknown = sorted(set(self.tasks) - set(TASKS))
            if unknown or not self.tasks:
                raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
        if self.max_new_tokens >= self.max_context:
            raise ValueError("max_new_tokens must be smaller than max_context")
        return self


def _task_of(item: HoldoutItem) -> str:
    return RANGE_TABLE[item.scored[0].upper()].task


def _truncation_stats(prompts: Sequence[Prompt]) -> dict[str, Any]:
    kept = [p.persona_tokens_kept / p.persona_tokens for p in prompts if p.persona_tokens]
    return {
        "prompts": len(prompts),
        "prompts_with_persona_cut": sum(p.cut for p in prompts),
        "mean_persona_fraction_kept": sum(kept) / len(kept) if kept else None,
        "min_persona_fraction_kept": min(kept) if kept else None,
        "max_prompt_tokens": max((p.n_tokens for p in prompts), default=0),
    }


def _canvas_tokens(tokenizer: Any, conf: PersonaEvalConfig) -> int:
    """Generated positions that share the context with the prompt (lockstep: R block + delimiter + A)."""
    canvas = conf.max_new_tokens
    if conf.sampler == "lockstep":
        delimiter = tokenizer.encode(conf.lockstep_delimiter, add_special_tokens=False)
        canvas += conf.lockstep_r_len + len(delimiter)
    return canvas


def _build_prompts(
    respondents: list[Respondent], tokenizer: Any, conf: PersonaEvalConfig
) -> tuple[list[HoldoutItem], list[Prompt], dict[str, str]]:
    """(items, prompts, excluded pid -> reason): one prompt per holdout question of every respondent."""
    canvas = _canvas_tokens(tokenizer, conf)
    excluded: dict[str, str] = {}
    items: list[HoldoutItem] = []
    prompts: list[Prompt] = []
    for resp in tqdm(respondents, desc="persona prompts", unit="person"):
        try:
            persona = persona_for_variant(resp, conf.variant)
        except PersonaUnavailable as err:
            excluded[resp.pid] = str(err)
            continue
        persona_ids = tokenizer.encode(persona, add_special_tokens=False)
        resp_items = [i for i in holdout_items(resp) if conf.tasks is None or _task_of(i) in conf.tasks]
        for item in resp_items[: conf.max_items_per_respondent]:
            items.append(item)
            prompts.append(
                build_prompt(
                    tokenizer,
                    item,
                    persona,
                    max_context=conf.max_context,
                    max_new_tokens=canvas,
                    persona_ids=persona_ids,
                )
            )
    if not items:
        raise PersonaDataError(f"no question to ask: {len(respondents)} respondents, excluded {excluded}")
    return items, prompts, excluded


def _parse_all(
    items: list[HoldoutItem], prompts: list[Prompt], completions: list[str], reasoning: list[str | None]
) -> tuple[dict[tuple[str, str], ParsedAnswer], list[dict], int]:
    """(answers by (pid, qid), per-item records for the report, number of failed items)."""
    answers: dict[tuple[str, str], ParsedAnswer] = {}
    records: list[dict] = []
    for item, prompt, text, thought in zip(items, prompts, completions, reasoning):
        parsed = parse_answer(text, item)
        answers[(item.pid, item.qid)] = parsed
        records.append(
            {
                "pid": item.pid,
                "qid": item.qid,
                "kind": item.kind,
                "completion": text,
                "reasoning": thought,
                "parsed": parsed.values,
                "error": parsed.error,
                "prompt_tokens": prompt.n_tokens,
                "persona_tokens": prompt.persona_tokens,
                "persona_tokens_kept": prompt.persona_tokens_kept,
            }
        )
    return answers, records, sum(not a.ok for a in answers.values())


def load_persona_data(cfg: Mapping[str, Any] | PersonaEvalConfig | None) -> tuple[list[Respondent], dict]:
    """(respondents, provenance) for ``cfg``; callers load the data before the model so that an unreachable
    hub or a bad file (:class:`PersonaDataError`) is reported before minutes of model loading."""
    conf = PersonaEvalConfig.from_mapping(cfg)
    return load_respondents(
        fixture=conf.fixture,
        need_summary=conf.variant in ("summary", "summary+text"),
        revision=conf.revision,
        wave_split_files=conf.wave_split_files,
        summary_files=conf.summary_files,
    )


def run_persona_eval(model: Any, tokenizer: Any, cfg: Mapping[str, Any] | PersonaEvalConfig | None,
                     data: tuple[list[Respondent], dict] | None = None) -> dict:
    """Run the eval on a loaded Dream ``model``/``tokenizer``; returns the report (also written if out_dir).

    ``data``: the result of :func:`load_persona_data` for the same ``cfg`` (loaded here when None).
    """
    conf = PersonaEvalConfig.from_mapping(cfg)
    started = time.time()
    need_summary = conf.variant in ("summary", "summary+text")
    population, provenance = data if data is not None else load_persona_data(conf)
    # decile edges pool every loaded respondent, not only the evaluated ones
    respondents = population[: conf.max_respondents] if conf.max_respondents is not None else population
    items, prompts, excluded = _build_prompts(respondents, tokenizer, conf)
    completions, reasoning = generate_completions(model, tokenizer, [p.text for p in prompts], conf)
    answers, records, failures = _parse_all(items, prompts, completions, reasoning)
    cells = build_cells(population, items, answers)
    metrics = summarise(cells, seed=conf.seed)
    report = {
        "task": "persona",
        "config": dataclasses.asdict(conf),
        "data": provenance,
        "metrics": metrics,
        "headline": {
            "model_dropped": metrics["dropped"]["overall"]["model"],
            "model_strict": metrics["strict"]["overall"]["model"],
            "retest": metrics["strict"]["overall"]["retest"],
            "random": metrics["strict"]["overall"]["random"],
            "coverage": metrics["cells"]["coverage"],
        },
        "parsing": {"items": len(items), "failed": failures, "failure_rate": failures / len(items)},
        "truncation": _truncation_stats(prompts),
        "excluded_respondents": excluded,
        "notes": [COMPARABILITY_NOTE]
        + (
            [
                "persona_summary may have been written from all four waves (provenance unknown): "
                "treat summary variants as possibly leaky."
            ]
            if need_summary
            else []
        ),
        "items": records,
        "seconds": round(time.time() - started, 2),
    }
    if conf.out_dir:  # the plot first: the JSON (written last) marks a finished run for resuming callers
        plot = plot_per_task(report, conf.out_dir)
        report["files"] = {"json": str(Path(conf.out_dir) / REPORT_NAME), "plot": str(plot)}
        write_json(report, conf.out_dir)
    return report


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Twin-2K-500 persona-simulation eval for a Dream checkpoint.")
    p.add_argument("--model", required=True, help="Dream checkpoint directory (HF layout)")
    p.add_argument("--out", required=True, help="output directory for persona_report.json and the plot")
    p.add_argument("--fixture", action="store_true", help="use the invented offline fixture, not the hub")
    p.add_argument("--variant", default="full", choices=VARIANTS)
    p.add_argument("--sampler", default="plain", choices=SAMPLERS)
    p.add_argument("--revision", default="main", help="hub revision (a commit sha pins the data)")
    p.add_argument("--wave-split-files", default=None, help="local wave_split copy (.jsonl/.json/.parquet)")
    p.add_argument(
        "--summary-files", default=None, help="local pid + persona_summary file (summary variants)"
    )
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument(
        "--alg", default="entropy", help="remasking confidence (entropy, maskgit_plus, topk_margin, ...)"
    )
    p.add_argument("--lockstep-r-len", type=int, default=32, help="lockstep only: R block length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-respondents", type=int, default=None)
    p.add_argument("--max-items-per-respondent", type=int, default=None)
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="only these holdout tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                   help="auto (default) = bfloat16 on CUDA, float32 on CPU")
    return p.parse_args(argv)


CLI_HUB_HINT = "--wave-split-files PATH (a local copy) or --fixture (the offline fixture)"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from decoding.checkpoint import load_dream
    from decoding.devices import pick_device, pick_dtype
    from decoding.tokenizer import load_tokenizer

    try:
        cfg = PersonaEvalConfig(
            fixture=args.fixture,
            revision=args.revision,
            wave_split_files=args.wave_split_files,
            summary_files=args.summary_files,
            variant=args.variant,
            sampler=args.sampler,
            max_new_tokens=args.max_new_tokens,
            steps=args.steps,
            temperature=args.temperature,
            alg=args.alg,
            lockstep_r_len=args.lockstep_r_len,
            batch_size=args.batch_size,
            max_respondents=args.max_respondents,
            max_items_per_respondent=args.max_items_per_respondent,
            tasks=args.tasks,
            seed=args.seed,
            out_dir=args.out,
        ).validated()
        data = load_persona_data(cfg)  # before the model: an unreachable hub is reported at once
        device = pick_device(args.device)
        tokenizer = load_tokenizer(args.model)
        model = load_dream(args.model, dtype=pick_dtype(args.dtype, device), device=device)
        report = run_persona_eval(model, tokenizer, cfg, data=data)
    except HubUnreachable as err:
        print(f"error: {HubUnreachable(err.reason, hint=CLI_HUB_HINT)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:  # user errors: bad paths, bad settings, bad data
        print(f"error: {err}", file=sys.stderr)
        return 2
    h = {k: ("n/a" if v is None else f"{v:.4f}") for k, v in report["headline"].items()}
    print(
        f"persona accuracy: model {h['model_dropped']} (unparseable dropped), {h['model_strict']} (counted "
        f"wrong) | retest {h['retest']} | random {h['random']} | coverage {h['coverage']}"
    )
    print(f"report: {report['files']['json']}\nplot:   {report['files']['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
