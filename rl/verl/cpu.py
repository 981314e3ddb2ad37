"""CPU platform shim for verl 0.9.1: run the real GRPO trainer path on a machine without a GPU.

Why: stock verl 0.9.1 cannot complete a GRPO step without a GPU (the settings below say which verl behaviour
each one works around): it falls back to the "nvidia" platform (NCCL backend), builds the process-group
backend string as ``cpu:gloo,<dev>:<backend>``, registers its FSDP engines for cuda/npu only, and its Ray
resource pools always ask for ``GPU`` slots. CI has no GPU, so this module patches exactly those points,
nothing else:

* a ``PlatformBase`` subclass registered as platform ``cpu`` (device ``cpu``, backend ``gloo``, Ray resource
  ``GPU`` so that the resource pools are satisfied by *fake* GPU slots declared to ``ray.init``);
* a ``torch.cuda``-style stand-in module for the ``get_torch_device().<call>`` sites verl uses;
* plain ``gloo`` as the default process-group backend (patched where verl imported the function by name);
* the FSDP language-model engine (and, via :mod:`rl.verl.engine`, our Dream engine) registered for ``cpu``.

Contract: :mod:`rl.verl.plugin` imports this module in every process (importing it changes nothing) and calls
:func:`install`, which does nothing unless ``VERL_PLATFORM=cpu``. The config values a CPU run needs (fake GPU
slot, TransferQueue storage units, eager attention, ...) are in :data:`CPU_SETTINGS`; ``launch/train_grpo.py``
applies them for ``trainer.device=cpu``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch

PLATFORM_NAME = "cpu"

# Config values that make verl's resource bookkeeping fit a CPU box.
# num_cpus is *logical* (oversubscribing 2 cores is fine): TransferQueue and the agent/reward workers each
# take a Ray CPU slot and silently hang the run when slots run out; num_gpus=1 is the fake GPU slot that
# verl's resource pools insist on (the CPU platform's Ray resource name is "GPU").
CPU_SETTINGS: dict[str, object] = {
    "trainer.n_gpus_per_node": 1,
    "trainer.nnodes": 1,
    "ray_kwargs.ray_init.num_cpus": 16,
    "ray_kwargs.ray_init.num_gpus": 1,
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    "actor_rollout_ref.model.override_config.attn_implementation": "eager",
    "actor_rollout_ref.actor.strategy": "fsdp2",
    "actor_rollout_ref.ref.strategy": "fsdp2",
    # fp32 everywhere: verl's bf16 defaults (and Dream's config.json dtype) run ~10x slower on CPUs without
    # bf16 matrix units (docs/benchmarks.md), so a CPU run of a GPU recipe would look hung
    "actor_rollout_ref.actor.fsdp_config.model_dtype": "fp32",
    "actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype": "fp32",
    "actor_rollout_ref.ref.fsdp_config.model_dtype": "fp32",
    "actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype": "fp32",
    "actor_rollout_ref.rollout.dtype": "float32",
    "actor_rollout_ref.rollout.agent.num_workers": 1,
    "reward.num_workers": 1,
}


def _cpu_memory() -> tuple[int, int]:
    """(free, total) host memory in bytes: the CPU analogue of ``torch.cuda.mem_get_info``."""
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def _build_cpu_device_module() -> types.ModuleType:
    """A ``torch.cuda``-shaped module for CPU: streams/events come from ``torch.cpu``, the rest are no-ops.

    verl calls ``get_torch_device().<name>`` for cache emptying, synchronisation, memory statistics, RNG
    state and device names; on CPU these are either meaningless (caches, IPC) or map to host equivalents.
    """
    module = types.ModuleType("lockstep_cpu_device")
    for name in ("Stream", "Event", "StreamContext", "current_stream", "stream", "synchronize",
                 "is_available", "device_count", "current_device", "set_device"):
        setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: 0
    module.set_device = lambda device=None: None
    module.synchronize = lambda device=None: None
    module.empty_cache = lambda: None
    module.ipc_collect = lambda: None
    module.reset_peak_memory_stats = lambda device=None: None
    module.set_per_process_memory_fraction = lambda fraction, device=None: None
    module.mem_get_info = lambda device=None: _cpu_memory()
    module.memory_allocated = lambda device=None: 0
    module.memory_reserved = lambda device=None: 0
    module.max_memory_allocated = lambda device=None: 0
    module.max_memory_reserved = lambda device=None: 0
    module.get_device_name = lambda device=None: "CPU"
    module.get_device_properties = lambda device=None: types.SimpleNamespace(
        name="CPU", total_memory=_cpu_memory()[1])
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.is_bf16_supported = lambda including_emulation=True: True
    return module


CPU_DEVICE_MODULE = _build_cpu_device_module()


def _make_platform_class() -> type:
    """Build and register the ``cpu`` verl platform (deferred so that importing this file never imports
    verl)."""
    from verl.plugin.platform import PlatformBase, PlatformRegistry

    class PlatformCPU(PlatformBase):
        """verl platform for CPU-only hosts: gloo collectives, fake Ray ``GPU`` slots, no profiling."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return CPU_DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def current_device(self) -> str:  # type: ignore[override]
            # verl passes this to .to(...)/device=...: an int would mean an accelerator index on CPU-only
            # torch
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextlib.contextmanager
        def nvtx_range(self, msg: str) -> Iterator[None]:
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            # verl's ResourcePoolManager always builds GPU pools; the fake slots come from ray_init.num_gpus.
            return "GPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    return PlatformCPU


def _patch_gloo_backend() -> None:
    """Default verl's process-group init to plain ``gloo``.

    verl builds ``f"cpu:gloo,{device}:{backend}"``, i.e. ``cpu:gloo,cpu:gloo`` on CPU, which torch rejects as
    a duplicate device type. ``engine_workers`` imported the function by name, so both references are
    replaced.
    """
    import verl.utils.distributed as verl_distributed

    original = verl_distributed.initialize_global_process_group_ray
    if getattr(original, "_lockstep_gloo", False):
        return

    def initialize_global_process_group_ray(timeout_second: int | None = None,
                                            backend: str | None = None) -> None:
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._lockstep_gloo = True  # type: ignore[attr-defined]
    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    engine_workers = sys.modules.get("verl.workers.engine_workers")
    if engine_workers is None:
        import verl.workers.engine_workers as engine_workers
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def _register_cpu_engines() -> None:
    """Register verl's FSDP LM engine for ``device="cpu"`` (it ships registered for cuda/npu only)."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    registry = EngineRegistry._engines.get("language_model", {})
    if all("cpu" in registry.get(backend, {}) for backend in ("fsdp", "fsdp2")):
        return

    class CPUFSDPEngineWithLMHead(FSDPEngineWithLMHead):
        """verl's FSDP(2) causal-LM engine, unchanged, made selectable on CPU."""

    EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")(
        CPUFSDPEngineWithLMHead
    )


_installed = False


def install() -> bool:
    """Install the CPU platform, gloo default and CPU engine registrations; returns whether it installed.

    Idempotent. Does nothing (returns False) unless ``VERL_PLATFORM=cpu``, so GPU runs never see the shim.
    """
    global _installed
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != PLATFORM_NAME:
        return False
    if _installed:
        return True
    _make_platform_class()
    _patch_gloo_backend()
    _register_cpu_engines()
    _installed = True
    return True
