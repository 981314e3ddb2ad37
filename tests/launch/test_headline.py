"""The headline command as a user types it: real ``torchrun``, ``recipe=humaneval``, a Dream folder in the
hub's exact layout (tiny dims, the real tokenizer and config files, no remote code). The run itself is the
session fixture ``headline_run`` (tests/conftest.py); these tests assert on what it produced."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.train_grpo import TORCHRUN_VARS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_headline_command_trains_two_steps_under_torchrun(headline_run) -> None:
    assert headline_run.returncode == 0, headline_run.output[-4000:]
    assert "step:2 " in headline_run.output
    assert "global rank 1: verl runs one driver" in headline_run.output  # rank 1 stood aside, rank 0 drove
    assert (headline_run.run_dir / "checkpoints"
            / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert list((headline_run.run_dir / "wandb").glob("offline-run-*"))


def test_headline_trains_on_acecode_and_validates_on_humaneval_plus(headline_run) -> None:
    """``recipe=humaneval`` trains on the decontaminated AceCode rows (here the fixture) and validates on
    HumanEval+ in the evaluation's prompt: no HumanEval+ task is a training row."""
    import pandas as pd

    assert headline_run.returncode == 0, headline_run.output[-4000:]
    data = headline_run.run_dir / "data"
    train, val = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "val.parquet")
    train_ids = list(train["extra_info"].map(lambda e: e["task_id"]))
    assert (train_ids and all(t.startswith("acecode/") for t in train_ids)
            and set(train["data_source"]) == {"acecode"})
    val_ids = list(val["reward_model"].map(lambda r: r["ground_truth"]))
    assert val_ids == [f"HumanEval/{i}" for i in range(164)] and set(val["data_source"]) == {"humaneval"}
    report = json.loads((data / "corpus_report.json").read_text())
    assert (report["corpus"], report["rows_loaded"], report["tasks"],
            report["too_long"]) == ("acecode", 8, 7, 5)
    assert report["decontamination"]["dropped"] == 0 and report["provenance"]["source"] == "files"
    assert re.search(r"val-core/humaneval/reward/mean@1:(np\.float64\()?[0-9.]+",
                     headline_run.output), headline_run.output[-3000:]


def test_dynamic_filtering_refills_whole_batches_and_logs_the_zero_advantage_fraction(headline_run) -> None:
    """recipe=humaneval filters all-equal groups (DAPO, rl/verl/filter.py). A random tiny model never passes a
    test, so every group is all-zero: each step refills the 2 missing prompts as one batch (2 x n=2 rows
    decoded together by the Dream server) until the recipe's cap of 4 rounds, then completes the batch with
    zero-advantage groups — and says so in the logged metrics."""
    from launch.demo import parse_step_line

    assert headline_run.returncode == 0, headline_run.output[-4000:]
    steps = dict(parsed for parsed in map(parse_step_line, headline_run.output.splitlines()) if parsed)
    assert sorted(steps) == [1, 2]
    for metrics in steps.values():
        assert metrics["critic/score/mean"] == 0.0
        assert metrics["filter/refill_rounds"] == 3.0 and metrics["filter/generated_groups"] == 8.0
        assert metrics["filter/uninformative_fraction"] == 1.0
        assert metrics["filter/kept_uninformative_groups"] == 2.0
        assert metrics["filter/zero_advantage_fraction"] == 1.0
        # every round decoded as one batch of 2 prompts x 2 samples
        assert metrics["rollout/batch_size"] == 4.0


def test_ray_workers_see_no_torchrun_variables(headline_run) -> None:
    """The hang: torchrun's TORCHELASTIC_USE_AGENT_STORE=True reached verl's workers, whose process groups
    then waited for torchrun's agent store. Every worker records the environment it actually got."""
    records = [json.loads(p.read_text()) for p in (headline_run.run_dir / "workers").glob("*.json")]
    roles = {r["role"] for r in records}
    assert {"engine", "rollout0"} <= roles, roles
    for record in records:
        env = record["env"]
        assert not [name for name in env if name.startswith("TORCHELASTIC_")], record
        assert not {"ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_RANK",
                    "GROUP_WORLD_SIZE"} & set(env), record
        if record["role"] == "rollout0":  # verl sets process-group variables for its engine workers only
            assert not set(TORCHRUN_VARS) & set(env), record
    assert ("removed torchrun's" in headline_run.output
            and "TORCHELASTIC_USE_AGENT_STORE" in headline_run.output)


def test_checkpoint_loads_back_and_is_a_valid_dream_folder(headline_run) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from decoding import DreamTokenizer
    from evals.code.model import load_model, resolve_checkpoint

    adapter = headline_run.step_dir / "actor" / "lora_adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        headline_run.model_dir)
    source = resolve_checkpoint(headline_run.step_dir)
    model, tokenizer = load_model(source, dtype=torch.float32, device=torch.device("cpu"))
    assert model.config.vocab_size == 152064 and len(tokenizer) == 151667
    hf_dir = headline_run.step_dir / "actor" / "huggingface"
    assert not list(hf_dir.glob("*.py"))  # no stray copy of our module (verl copies the FSDP-wrapped class's)
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((hf_dir / name).read_text()), name  # the base has no remote code
    assert isinstance(AutoTokenizer.from_pretrained(hf_dir), DreamTokenizer)
    assert AutoConfig.from_pretrained(hf_dir).model_type == "Dream"


def test_eval_checkpoint_scores_the_headline_checkpoint(headline_run, tmp_path) -> None:
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "eval_checkpoint.py"), "recipe=eval/humaneval",
         f"checkpoint={headline_run.step_dir}", f"output_root={out}", "dataset.limit=2", "device=cpu",
         "generation.plain.max_new_tokens=8", "generation.plain.steps=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # the decoder the run trained with (its config.yaml: lockstep, R 4 / A 12), then the plain sampler
    summaries = sorted(out.glob("*/summary.json"))
    assert [s.parent.name.split("-")[1] for s in summaries] == ["lockstep", "plain"]
    assert f"settings from the run's rollout ({headline_run.run_dir / 'config.yaml'})" in result.stdout
    for summary in summaries:
        results = json.loads((summary.parent / "samples_eval_results.json").read_text())
        assert sorted(results["eval"]) == ["HumanEval/0", "HumanEval/1"]
    generated = [json.loads(line)
                 for line in (summaries[0].parent / "generations.rank0.jsonl").read_text().splitlines()]
    # the run's canvas, not the 128 + 320 default
    assert all(row["num_tokens"] <= 4 + 12 for row in generated)


def test_train_sft_fine_tunes_the_hub_folder_and_exports_a_valid_one(hub_dream_dir, tmp_path) -> None:
    """``launch/train_sft.py`` from a user's hub folder: the export loads with our loader and has no auto_map
    pointing at code that is not there (the base has none)."""
    from transformers import AutoTokenizer

    from decoding import DreamTokenizer, load_dream

    run_dir = tmp_path / "sft"
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "train_sft.py"), "recipe=demo_sft", f"run_dir={run_dir}",
         f"model.path={hub_dream_dir}", "train.steps=2", "train.batch_size=2", "train.log_every=1",
         "eval.every=2", "eval.batch_size=2", "tasks.n_train=8", "tasks.n_heldout=2", "eval.nll_rates=1",
         "wandb.mode=disabled"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "checkpoint"
    assert load_dream(out).config.vocab_size == 152064
    assert isinstance(AutoTokenizer.from_pretrained(out, trust_remote_code=True), DreamTokenizer)
    assert not list(out.glob("*.py"))
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((out / name).read_text()), name
