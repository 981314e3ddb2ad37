"""verl integration: the only package (with ``launch/``) that imports verl (``tests/test_layout.py`` checks
it).

The plugin (:mod:`rl.verl.plugin`, the ``verl.plugins`` entry point), recipe checks and run-time settings
(:mod:`rl.verl.config`), the CPU platform shim, the Dream engine, the Dream rollout server and its device fit,
the reward adapter, the group filter, the ``lockstep`` trainer mode and the per-worker environment record.
Submodules import verl at module load; this file imports nothing so ``import rl.verl.config`` stays cheap.
"""
