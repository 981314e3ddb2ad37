"""Tests of the SFT entry point (launch/train_sft.py): real Hydra composition, real W&B (offline), real
sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from launch.train_sft import RecipeError, build_settings, compose_recipe, main  # noqa: E402


def test_demo_sft_recipe_composes_and_validates() -> None:
    cfg = compose_recipe(["recipe=demo_sft", "train.steps=7", "train.stop_after=5", "tasks.canvas.a_len=40"])
    train, canvas, evaluation = build_settings(cfg)
    assert train.steps == 7 and train.stop_after == 5 and canvas.a_len == 40 and evaluation.canvas.a_len == 40
    assert evaluation.lockstep_cfg().use_cache is True  # the demo rollout's decoder settings
    assert cfg.wandb.mode == "offline"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["recipe=nope"], "unknown recipe"),
        (["train.stepz=3"], "cannot compose"),
        (["train.lr=-1"], "lr=-1"),
        (["eval.mode=sideways"], "mode must be one of"),
        (["tasks.canvas.r_len=0"], "r_len"),
        (["train.steps=10", "train.stop_after=20"], "stop_after=20"),
        (["tasks.bug_rate=1.5"], "bug_rate"),
    ],
)
def test_bad_config_is_a_clear_error(args: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        build_settings(compose_recipe(args))


def test_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "train_sft.py"), "recipe=demo_sft", "train.lr=-1",
         f"run_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "error: invalid" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_short_run_writes_checkpoint_metrics_and_wandb(tmp_path: Path, tiny_dream_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from decoding.checkpoint import load_dream
    from decoding.tokenizer import load_tokenizer

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    code = main([
        "recipe=demo_sft", f"run_dir={run_dir}", f"model.path={tiny_dream_dir}", "train.steps=4",
        "train.stop_after=null",
        "train.batch_size=4", "train.log_every=2", "eval.every=2", "tasks.n_train=16", "tasks.n_heldout=3",
        "tasks.canvas.r_len=26", "tasks.canvas.a_len=44", "eval.nll_rates=1",
        f"export_dir={tmp_path / 'export'}",
    ])
    assert code == 0
    metrics = json.loads((run_dir / "sft_metrics.json").read_text())
    assert [e["step"] for e in metrics["evals"]] == [0, 2, 4]
    assert all(0.0 <= e["heldout/pass_rate"] <= 1.0 for e in metrics["evals"])
    assert metrics["evals"][-1]["heldout/nll"] < metrics["evals"][0]["heldout/nll"]
    for out in (run_dir / "checkpoint", tmp_path / "export"):
        model = load_dream(out)
        assert model.config.num_hidden_layers == 2
        assert load_tokenizer(out).mask_token_id == model.config.mask_token_id
        assert json.loads((out / "sft_info.json").read_text())["evals"] == metrics["evals"]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_help_is_real_help_text() -> None:
    """``--help`` used to reach Hydra's override lexer; now it lists the SFT recipes and the key overrides."""
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train_sft.py"), "--help"],
                          capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "recipe=<demo_sft>" in proc.stdout and "model.path=DIR" in proc.stdout
    assert "launch/train_grpo.py" in proc.stdout  # where the GRPO recipes go


def test_wrong_recipe_or_broken_model_exit_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(ROOT / "recipes" / "assets" / "demo_warmstart", cut)
    os.truncate(cut / "model.safetensors", (cut / "model.safetensors").stat().st_size // 2)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(cut, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    run_dir = tmp_path / "run"
    for args, message in (
        (["recipe=demo"],
         "recipe=demo is a GRPO recipe: run it with python launch/train_grpo.py recipe=demo"),
        (["recipe=nosuch"], "unknown recipe 'nosuch'; SFT recipes: demo_sft"),
        ([f"model.path={cut}"], f"{cut / 'model.safetensors'} is truncated"),
        ([f"model.path={no_weights}"], "has a config.json but no weights"),
    ):
        assert main([*args, f"run_dir={run_dir}"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
        assert not run_dir.exists(), args
