"""Suite-wide pytest configuration: GPU tests skip cleanly where CUDA is absent; no test leaks environment."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Entry points configure their own process environment by design (``rl.verl.config.prepare_runtime``
    exports ``WANDB_DIR``, ``VERL_PLATFORM``, ...); a test that calls them in-process must not redirect later
    tests' subprocesses (e.g. their W&B runs) to its temporary directory."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_dream_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-init Dream checkpoint in the real HF layout (sharded safetensors + tokenizer), fp32.

    Built once per test session by :func:`decoding.tiny.make_tiny_dream` (seed 0; hidden 64, 2 layers,
    4 heads, 2 KV heads; ~1.5k-token code BPE; vocab_size 1664 > tokenizer size 1541).
    """
    from decoding.tiny import make_tiny_dream

    return make_tiny_dream(tmp_path_factory.mktemp("tiny-dream") / "tiny-dream", seed=0)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
HUB_DREAM = "dream-v0-instruct-7b"


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``. Where it is absent a test skips, except in CI (``CI=true``), where it fails:
    CI always has the folder, so its absence there is a broken setup, not a reason to test less."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"{path} not found (the shared data folder beside the repository; see its README)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data_dir():
    """:func:`shared_data` for conftests of subfolders (which cannot import this module by name)."""
    return shared_data


@pytest.fixture(scope="session")
def hub_dream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Dream in exactly the layout of the downloaded ``Dream-org/Dream-v0-Instruct-7B`` folder.

    The real hub files (``vocab.json`` + ``merges.txt``, ``tokenizer_config.json`` naming the remote
    ``DreamTokenizer``, ``config.json`` with ``model_type: Dream`` and an ``auto_map``, ...) with dims shrunk
    to hidden 64 / 2 layers (vocab stays 152,064: ~20 M parameters), bf16 weights in four safetensors shards
    with an index, and no remote-code ``.py`` files (:func:`decoding.tiny.make_hub_layout_dream`).
    """
    from decoding.tiny import make_hub_layout_dream

    return make_hub_layout_dream(tmp_path_factory.mktemp("hub") / "Dream-v0-Instruct-7B",
                                 shared_data(HUB_DREAM))


# The headline command, shrunk to CPU size: only these values differ from `recipe=humaneval` as a user runs
# it. Training data: the AceCode-87K fixture (../shared/data/code_rl) instead of the hub, all 8 rows + 4
# signature copies (the hard subset of 8 rows is 2), of which the 7 whose chat prompt fits 128 tokens are
# kept; validation: the HumanEval+ tasks that fit 128 tokens (~32 of 164; verl's overlong-prompt filter),
# once, at step 2. With the 152,064-token vocabulary, logits of 4 rows x 152 tokens already take ~370 MB.
HEADLINE_TRAIN_FILE = SHARED_DATA / "code_rl" / "acecode87k.sample.parquet"
HEADLINE_OVERRIDES = (
    f"lockstep.data.data_files=[{HEADLINE_TRAIN_FILE}]", "lockstep.data.hard_subset=false",
    "trainer.device=cpu", "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4", "actor_rollout_ref.rollout.n=2",
    "data.max_prompt_length=128", "data.max_response_length=24", "data.dataloader_num_workers=0",
    "actor_rollout_ref.rollout.custom.dream.options.r_len=4",
    "actor_rollout_ref.rollout.custom.dream.options.a_len=12",
    "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
    "actor_rollout_ref.model.enable_gradient_checkpointing=false",
    "trainer.total_training_steps=2", "trainer.save_freq=2", "trainer.test_freq=2",
    "trainer.val_before_train=false",
)


@dataclasses.dataclass(frozen=True)
class HeadlineRun:
    """One finished run of the headline command (see :func:`headline_run`)."""

    run_dir: Path
    model_dir: Path
    command: list[str]
    returncode: int
    output: str  # stdout + stderr of torchrun and both ranks

    @property
    def step_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "global_step_2"


@pytest.fixture(scope="session")
def headline_run(hub_dream_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HeadlineRun:
    """``torchrun --standalone --nproc_per_node 2 launch/train_grpo.py recipe=humaneval`` through real
    torchrun, on the hub-layout tiny model: 2 GRPO steps (LoRA, lockstep rollouts, sandboxed rewards, W&B
    offline) and a checkpoint at step 2, trained on the AceCode fixture and validated on HumanEval+ at step 2.
    Runs once per session (~3 min on 2 cores); tests of the launcher, checkpoint export, evaluation and data
    work assert on its outputs."""
    shared_data("code_rl")
    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path_factory.mktemp("headline") / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "launch/train_grpo.py",
               "recipe=humaneval", f"actor_rollout_ref.model.path={hub_dream_dir}",
               f"lockstep.run_dir={run_dir}", *HEADLINE_OVERRIDES]
    env = {**os.environ, "WANDB_MODE": "offline"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS"):
        env.pop(name, None)
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    return HeadlineRun(run_dir, hub_dream_dir, command, result.returncode, result.stdout + result.stderr)
