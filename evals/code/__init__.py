"""Code evaluation of a checkpoint: tasks and pass@k (``tasks``), model loading and generation (``model``), the
resumable generation/score journals (``store``), the decoder choice (``decoder``) and the run that ties them
together (``run``). ``launch/eval_checkpoint.py`` is the entry point that drives them; ``docs/evaluation.md`` is
the user guide.
"""
