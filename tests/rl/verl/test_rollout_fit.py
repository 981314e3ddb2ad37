"""Fitting the GPUs a recipe names: rollout device choice, decode-batch sizing, sandbox workers per reward
worker, and the launcher's one-line refusal of ``trainer.device=cuda`` without a GPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rl.verl.reward import REWARD_WORKERS_ENV, reward_config, sandbox_workers
from rl.verl.rollout_fit import decode_row_bytes, fit_max_batch, rollout_device

ROOT = Path(__file__).resolve().parents[3]


def test_rollout_device_follows_the_recipe_and_never_falls_back_silently() -> None:
    assert rollout_device("cpu", cuda_available=True) == "cpu"
    assert rollout_device("cuda", cuda_available=True) == "cuda"
    assert rollout_device(None, cuda_available=False) == "cpu"
    with pytest.raises(RuntimeError,
                       match="trainer.device=cuda but the Dream rollout server finds no CUDA GPU") as err:
        rollout_device("cuda", cuda_available=False)
    assert "\n" not in str(err.value)


def test_decode_row_bytes_hand_computed() -> None:
    config = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             num_hidden_layers=3, vocab_size=100, intermediate_size=64)
    # kv 2*3*2*8*(10+20) = 2880; logits 20*100*1.5 = 3000; activations 30*(128+192) = 9600; x 2 bytes
    assert decode_row_bytes(config, prompt_len=10, canvas_len=20, dtype_bytes=2) == (2880 + 3000 + 9600) * 2


def test_fit_max_batch_lowers_the_recipe_value_to_the_free_memory() -> None:
    gib = 2**30
    assert fit_max_batch(64, free_bytes=80 * gib, row_bytes=2 * gib) == 32  # 0.8 x 80 GiB / 2 GiB
    assert fit_max_batch(64, free_bytes=1000 * gib, row_bytes=gib) == 64  # never above the recipe's value
    assert fit_max_batch(64, free_bytes=gib // 2, row_bytes=gib) == 1  # at least one row
    with pytest.raises(ValueError, match="max_batch >= 1"):
        fit_max_batch(0, gib, gib)


def test_dream_7b_recipe_batch_fits_an_h100_next_to_its_weights() -> None:
    """recipe=humaneval: prompt 768, canvas 512, bf16; an 80 GB H100 minus the 15.2 GB rollout copy."""
    from decoding import dream_7b_config

    row = decode_row_bytes(dream_7b_config(), prompt_len=768, canvas_len=512, dtype_bytes=2)
    assert 0.4 * 2**30 < row < 0.5 * 2**30
    assert fit_max_batch(64, free_bytes=int(64.8 * 2**30), row_bytes=row) == 64
    assert fit_max_batch(64, free_bytes=20 * 2**30, row_bytes=row) == 35  # a busier GPU: fewer rows per batch


def test_each_reward_worker_gets_its_share_of_the_node(monkeypatch) -> None:
    assert sandbox_workers(64, 8) == 8 and sandbox_workers(2, 8) == 1 and sandbox_workers(None, 1) == 1
    monkeypatch.setenv(REWARD_WORKERS_ENV, "4")
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG", "{}")
    assert reward_config().workers == 4
    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG", '{"workers": 3}')
    assert reward_config().workers == 3  # lockstep.reward.workers wins


def test_runtime_exports_device_and_reward_workers_per_node(monkeypatch, tmp_path) -> None:
    from launch.train_grpo import compose_recipe
    from rl.verl.config import prepare_runtime

    for name in ("VERL_PLATFORM", "LOCKSTEP_DEVICE", REWARD_WORKERS_ENV):
        monkeypatch.delenv(name, raising=False)
    cfg = compose_recipe("humaneval", ["actor_rollout_ref.model.path=/models/dream",
                                       f"lockstep.run_dir={tmp_path}", "trainer.nnodes=2"])
    prepare_runtime(cfg, ROOT)
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    # verl's 8 reward workers on 2 nodes
    assert env.LOCKSTEP_DEVICE == "cuda" and env[REWARD_WORKERS_ENV] == "4"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_cuda_recipe_without_a_gpu_is_a_one_line_error(tmp_path, capsys) -> None:
    from launch.train_grpo import main

    assert main(["recipe=demo", "trainer.device=cuda", f"lockstep.run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: trainer.device=cuda but torch finds no CUDA GPU on this machine: run on a GPU "
                   "node (and a CUDA build of torch), or pass trainer.device=cpu for a CPU run\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_fit_to_gpu_lowers_an_impossible_max_batch(tiny_dream_factory) -> None:
    from rl.rollout_decoding import DreamSamplerConfig
    from rl.verl.rollout_fit import fit_to_gpu

    model = tiny_dream_factory(seed=0).cuda()
    config = DreamSamplerConfig(sampler="lockstep", max_batch=10**9, response_length=64)
    fitted = fit_to_gpu(config, model, prompt_len=64, who="test")
    assert 1 <= fitted.max_batch < 10**9 and fitted.response_length == 64


@pytest.mark.gpu
def test_release_cache_returns_the_decode_memory_to_the_device() -> None:
    from rl.verl.rollout_fit import release_cache

    scratch = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    del scratch
    held = torch.cuda.memory_reserved()
    release_cache("cuda")
    assert torch.cuda.memory_reserved() <= held - 256 * 2**20
