"""verl plugin entry point (`[project.entry-points."verl.plugins"] lockstep = "rl.verl.plugin"`).

Why: verl 0.9.1 imports every ``verl.plugins`` entry point inside ``import verl`` — in the driver *and* in
every Ray worker — which is the only way to register our pieces in all processes without forking verl.
Importing this module:

* imports :mod:`decoding` so ``AutoConfig``/``AutoModel`` know model_type ``"Dream"`` (verl's model config and
  engines load checkpoints through the Auto classes);
* installs the CPU platform shim (:mod:`rl.verl.cpu`) — only when ``VERL_PLATFORM=cpu``;
* registers the Dream engine (``actor_rollout_ref.model.model_type=dllm``, :mod:`rl.verl.engine`), the
  ``dream`` rollout (``actor_rollout_ref.rollout.name=dream``, :mod:`rl.verl.rollout`) and the ``lockstep``
  trainer mode with our per-step metrics (``trainer.v1.trainer_mode=lockstep``, :mod:`rl.verl.trainer`).

verl swallows plugin import errors (logged at debug level only), so a broken plugin shows up later as "not
registered"; :func:`ensure_registered` re-raises them and is called by ``launch/train_grpo.py``.
"""

from __future__ import annotations

_registered = False


def ensure_registered() -> None:
    """Register everything (idempotent); raises the real error if any piece fails to import."""
    global _registered
    if _registered:
        return
    import decoding  # noqa: F401  (registers Dream with the HF Auto classes)
    from rl.verl import cpu, engine, rollout, trainer

    cpu.install()
    engine.register()
    rollout.register()
    trainer.register()
    _registered = True


ensure_registered()
