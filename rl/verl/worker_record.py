"""What each Ray worker of a run sees, written to ``<run_dir>/workers/<role>-<host>-<pid>.json``.

Why: verl's workers inherit the driver's environment through Ray. A variable leaked from the launcher
(torchrun's ``TORCHELASTIC_USE_AGENT_STORE`` made every worker wait forever for torchrun's store) or a thread
count that differs between two runs (different float rounding, so no exact reproduction) changes a run without
a trace in its logs. The record keeps the variables that decide process groups, threads and platform, and the
thread count torch actually uses, next to the run's other outputs.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

RUN_DIR_ENV = "LOCKSTEP_RUN_DIR"  # exported to every worker by rl.verl.config.prepare_runtime
# torchrun exports these to each rank (launch/train_grpo.py removes them); verl sets them for its engine
# workers
PROCESS_GROUP_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT")
RECORDED_PREFIXES = ("TORCHELASTIC_", "OMP_", "MKL_", "VERL_", "CUDA_VISIBLE_DEVICES", "NCCL_", "TORCH_NCCL_")


def record_worker(role: str) -> Path | None:
    """Write this process's record (no-op outside a launcher run, i.e. without ``$LOCKSTEP_RUN_DIR``)."""
    import torch

    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        return None
    env = {name: value for name, value in sorted(os.environ.items())
           if name in PROCESS_GROUP_VARS or name.startswith(RECORDED_PREFIXES)}
    host = socket.gethostname()
    record = {"role": role, "host": host, "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
              "env": env}
    folder = Path(run_dir) / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}-{host}-{os.getpid()}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
