"""The actor verl trains (its TrainingWorker + our Dream engine, FSDP2 on gloo, LoRA via peft), on CPU.

Each check runs ``tests/rl/verl/verl_actor_script.py`` in fresh processes (it owns a torch process group): one
rank with all 4 rows, and two ranks with 2 rows each. What a user relies on: only the LoRA adapters train and
the reference policy is the base model; the log-probs verl trains on are our estimator on the model our loader
builds (before and after the update, through the exported peft adapter); gradient checkpointing changes
nothing; two data-parallel ranks shard the weights and take exactly the step one rank takes on the whole
batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("verl_actor_script.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ranks(model_dir: Path, out: Path, world: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "VERL_PLATFORM": "cpu", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "LOCAL_ACTOR_RUN_DIR": str(out / "run"), "WANDB_MODE": "disabled"}
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(model_dir), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


@pytest.fixture(scope="module")
def one_rank(tiny_dream_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run_ranks(tiny_dream_dir, tmp_path_factory.mktemp("verl-actor-1"), world=1)[0]


def _assert_rows_equal(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float = 0.0) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=atol, rtol=0.0 if atol == 0.0 else 1e-5)


def test_lora_update_trains_only_adapters_and_the_reference_stays_the_base_model(one_rank: dict) -> None:
    assert one_rank["trainable"] and all("lora_" in name for name in one_rank["trainable"])
    assert one_rank["changed"] == one_rank["trainable"]  # every adapter moved, no base weight did
    metrics = one_rank["metrics"]
    assert metrics["actor/ppo_kl"] == 0.0 and metrics["grad_norm"] > 0.0  # same masks in old and new pass
    _assert_rows_equal(one_rank["reference_before"], one_rank["old"])  # LoRA B starts at zero
    _assert_rows_equal(one_rank["reference_after"], one_rank["reference_before"])  # adapters off = base model
    assert all(float((new - old).abs().max()) > 1e-3 for new, old in zip(one_rank["new"], one_rank["old"]))


def test_engine_logprobs_are_our_estimator_on_the_loaded_model_and_the_exported_adapter(
        one_rank: dict) -> None:
    """verl's worker scores exactly what rl.logprob computes on decoding.load_dream's model (+ peft adapter);
    the lockstep delimiter of every row (after its 3-token R block; response_mask 0) scores 0, the rest does
    not."""
    _assert_rows_equal(one_rank["base_logprobs"], one_rank["reference_before"], atol=1e-5)
    _assert_rows_equal(one_rank["adapter_logprobs"], one_rank["new"], atol=1e-5)
    for row in one_rank["old"]:
        delimiter = torch.zeros(row.numel(), dtype=torch.bool)
        delimiter[3:9] = True  # "\n```python\n" is 6 tokens
        assert row[delimiter].eq(0).all() and row[~delimiter].ne(0).all()


def test_gradient_checkpointing_changes_nothing(one_rank: dict) -> None:
    assert one_rank["checkpointing_on"] == [False, True]
    assert one_rank["checkpointed_metrics"]["grad_norm"] == pytest.approx(one_rank["metrics"]["grad_norm"],
                                                                          rel=1e-5)
    _assert_rows_equal(one_rank["checkpointed_new"], one_rank["new"], atol=1e-5)


@pytest.mark.slow
def test_two_ranks_shard_and_take_the_one_rank_step(one_rank: dict, tiny_dream_dir: Path,
                                                    tmp_path: Path) -> None:
    """FSDP2 over 2 gloo ranks, 2 rows each: sharded storage, the gradient norm of the whole batch (token mean
    over both ranks), and after the step every row's log-probs equal the one-rank run's."""
    ranks = _run_ranks(tiny_dream_dir, tmp_path, world=2)
    assert all(result["sharded"] for result in ranks)
    for result in ranks:
        assert result["metrics"]["grad_norm"] == pytest.approx(one_rank["metrics"]["grad_norm"], rel=1e-5)
        _assert_rows_equal(result["new"], [one_rank["new"][row] for row in result["rows"]], atol=1e-5)
        _assert_rows_equal(result["old"], [one_rank["old"][row] for row in result["rows"]], atol=1e-6)
