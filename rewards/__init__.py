"""rewards: a sandboxed EvalPlus reward worker (HumanEval+/MBPP+ and caller-supplied tasks).

Public API::

    from rewards import score_batch, RewardConfig, Task
    results = score_batch([(task_id, completion), ...], dataset="humaneval", cfg=RewardConfig.rl())

See docs/rewards.md for the threat model, configuration and the evaluation CLI
(``python -m rewards.evaluate``).
"""

from .api import (
           EvalPlusScorer,
           RewardConfig,
           RewardResult,
           SandboxInfraError,
           close_all,
           get_scorer,
           score_batch,
)
from .extract import ExtractedCode, build_solution, extract_code, instruct_messages, instruct_prompt
from .ray_pool import RayRewardPool
from .sandbox import SandboxConfig, SandboxPool, probe_bwrap
from .tasks import Task, load_tasks

__all__ = ["ExtractedCode", "RayRewardPool", "RewardConfig", "RewardResult", "SandboxConfig",
           "SandboxInfraError", "SandboxPool", "EvalPlusScorer", "Task", "build_solution", "close_all",
           "extract_code", "get_scorer", "instruct_messages", "instruct_prompt", "load_tasks", "probe_bwrap",
           "score_batch"]
