"""Code evaluation of a checkpoint: tasks and pass@k (``tasks``), checkpoint loading (``model``), the
resumable generation/score journals (``store``), the decoder choice (``decoder``) and the run that ties them
together (``run``). Generation is :mod:`evals.generation`, shared with the demo and persona.
``launch/eval_checkpoint.py`` is the entry point that drives them; ``docs/evaluation.md`` is
the user guide.
"""
