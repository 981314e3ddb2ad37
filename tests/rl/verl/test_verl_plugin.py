"""The verl plugin loads through verl's own entry-point mechanism and registers every piece.

verl swallows plugin import errors (debug log only), so these checks run ``import verl`` in a fresh process
exactly as a Ray worker does, with and without the CPU platform shim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import json, sys
    import verl  # loads the `verl.plugins` entry points, i.e. rl.verl.plugin
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_id, get_nccl_backend, get_torch_device
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry
    import verl.utils.distributed as dist
    import verl.workers.engine_workers as workers

    out = {"plugin_loaded": "rl.verl.plugin" in sys.modules,
           "dllm": {b: sorted(EngineRegistry._engines.get("dllm", {}).get(b, {})) for b in ("fsdp", "fsdp2")},
           "lm_cpu": "cpu" in EngineRegistry._engines["language_model"]["fsdp2"],
           "adapter": get_rollout_class("dream", "async").__name__,
           "replica": RolloutReplicaRegistry.get("dream").__name__,
           "trainer": __import__("verl.trainer.ppo.v1", fromlist=["x"]).get_trainer_cls("lockstep").__name__,
           "agent_loop": __import__("verl.experimental.agent_loop.agent_loop", fromlist=["x"])
                         ._agent_loop_registry.get("dream_single_turn"),
           "gloo_patched": getattr(workers.initialize_global_process_group_ray, "_lockstep_gloo", False)
                           and workers.initialize_global_process_group_ray
                           is dist.initialize_global_process_group_ray}
    if out["lm_cpu"]:
        platform = get_platform()
        out.update(device=platform.device_name, backend=get_nccl_backend(),
                   resource=platform.ray_resource_name(), device_id=get_device_id(),
                   device_module_name=get_torch_device().get_device_name(),
                   free_memory_positive=get_torch_device().mem_get_info()[0] > 0)
    print("PROBE" + json.dumps(out))
""")


def _probe(platform: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_PLUGINS")}
    if platform:
        env["VERL_PLATFORM"] = platform
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("PROBE"))
    return json.loads(line[len("PROBE"):])


def test_plugin_registers_engine_rollout_and_cpu_platform() -> None:
    out = _probe("cpu")
    assert out["plugin_loaded"]
    assert out["dllm"] == {"fsdp": ["cpu", "cuda"], "fsdp2": ["cpu", "cuda"]}
    assert out["adapter"] == "DreamRolloutAdapter" and out["replica"] == "DreamReplica"
    assert out["trainer"] == "LockstepTrainer"
    assert out["agent_loop"] == {"_target_": "rl.verl.rollout.DreamSingleTurnAgentLoop"}
    assert out["lm_cpu"] and out["gloo_patched"]
    assert out["device"] == "cpu" and out["backend"] == "gloo" and out["resource"] == "GPU"
    assert out["device_id"] == "cpu" and out["device_module_name"] == "CPU" and out["free_memory_positive"]


def test_cpu_shim_stays_out_of_gpu_runs() -> None:
    out = _probe(None)
    assert out["plugin_loaded"] and out["adapter"] == "DreamRolloutAdapter"
    assert out["dllm"]["fsdp2"] == ["cpu", "cuda"]
    assert not out["lm_cpu"] and not out["gloo_patched"]
