"""The persona eval task end to end on the tiny Dream over the fixture, and its config validation."""

from __future__ import annotations

import json

import pytest
import torch

from evals.persona.run import PersonaEvalConfig, main, run_persona_eval


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown persona eval settings"):
        PersonaEvalConfig.from_mapping({"fixture": True, "varaint": "full"})
    with pytest.raises(ValueError, match="variant"):
        PersonaEvalConfig.from_mapping({"variant": "all-waves"})
    with pytest.raises(ValueError, match="sampler"):
        PersonaEvalConfig.from_mapping({"sampler": "beam"})
    with pytest.raises(ValueError, match="unknown tasks"):
        PersonaEvalConfig.from_mapping({"tasks": ["framing", "linda"]})
    with pytest.raises(ValueError, match="max_new_tokens"):
        PersonaEvalConfig.from_mapping({"max_new_tokens": 4096})
    assert PersonaEvalConfig.from_mapping({"fixture": True}).variant == "full"


def test_cli_bad_model_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--fixture", "--out", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_tiny_dream_on_fixture(tiny_dream_dir, tmp_path):
    from decoding import load_dream
    from decoding.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = load_dream(tiny_dream_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(tiny_dream_dir)
    cfg = {
        "fixture": True,
        "max_respondents": 1,
        "tasks": ["framing", "base rate"],
        "max_context": 600,
        "max_new_tokens": 8,
        "steps": 2,
        "batch_size": 2,
        "out_dir": str(tmp_path),
    }
    report = run_persona_eval(model, tokenizer, cfg)

    on_disk = json.loads((tmp_path / "persona_report.json").read_text())
    assert on_disk["headline"] == report["headline"]
    assert (tmp_path / "persona_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    items = report["items"]
    assert [(i["pid"], i["qid"]) for i in items] == [("1", "QID157"), ("1", "QID154")]
    assert all(isinstance(i["completion"], str) for i in items)
    assert report["parsing"]["failed"] == sum(i["error"] is not None for i in items)
    # pid 1: framing t3 r5 (retest 1 - 2/5), base rate t30 r40 (1 - 10/100) => retest headline (0.6 + 0.9) / 2
    assert report["metrics"]["strict"]["overall"]["retest"] == pytest.approx(0.75)
    assert report["metrics"]["cells"]["valid"] == 2
    assert report["headline"]["coverage"] == (2 - report["parsing"]["failed"]) / 2
    # the framing prompt (~680 tokens) does not fit 600 - 8: its persona was cut, the slider's was not
    assert report["truncation"]["prompts_with_persona_cut"] == 1
    assert all(i["prompt_tokens"] <= 600 - 8 for i in items)
    assert report["data"]["source"] == "files" and report["config"]["sampler"] == "plain"


@pytest.mark.slow
def test_lockstep_sampler_end_to_end(tiny_dream_dir, tmp_path):
    from decoding import load_dream
    from decoding.tokenizer import load_tokenizer

    model = load_dream(tiny_dream_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(tiny_dream_dir)
    cfg = {
        "fixture": True,
        "sampler": "lockstep",
        "lockstep_r_len": 4,
        "max_respondents": 1,
        "max_items_per_respondent": 1,
        "max_new_tokens": 8,
        "steps": 2,
        "variant": "json",
        "max_context": 560,
    }
    report = run_persona_eval(model, tokenizer, cfg)
    (item,) = report["items"]
    assert item["qid"] == "QID9_1" and isinstance(item["reasoning"], str)
    assert "files" not in report  # no out_dir: nothing written
    # R block (4) + delimiter + A block (8) share the context: the prompt budget shrank accordingly
    delim = len(tokenizer.encode("\nAnswer: ", add_special_tokens=False))
    assert (
        item["prompt_tokens"] <= 560 - 8 - 4 - delim and report["truncation"]["prompts_with_persona_cut"] == 1
    )


UNREACHABLE_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}  # port 9: nothing listens


@pytest.mark.parametrize("env", [UNREACHABLE_HUB, {"HF_HUB_OFFLINE": "1"}], ids=["unreachable", "offline"])
def test_cli_without_hub_access_says_so_in_one_line(tmp_path, env):
    """The real CLI, offline: one line naming the hub and the two ways around it, before any model loading."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "evals.persona.run", "--model",
                          str(tmp_path / "never-loaded"), "--out", str(tmp_path / "out")], cwd=root,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HOME": str(tmp_path / "hf"), **env})
    assert run.returncode == 2, run.stderr
    assert (run.stderr.startswith("error: the Hugging Face hub is unreachable (")
            and run.stderr.count("\n") == 1)
    assert "--wave-split-files PATH (a local copy) or --fixture (the offline fixture)" in run.stderr
    assert not (tmp_path / "out").exists()
