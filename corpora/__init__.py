"""Public code-RL corpora (AceCode-87K, KodCode, DeepCoder-Preview, Gen-Verse PrimeIntellect,
Dream-Coder-RL-17k) as training tasks: loaders (hub at a pinned revision or local files), stable task ids,
prompt rules, DiffuCoder's AceCode hard subset, decontamination against HumanEval+/MBPP+ and drop counts. The
tests of a row are judged by :mod:`rewards.code_tests`. Overview: docs/training.md ("Training corpora").
"""

from .build import CorpusSelection, TrainingTask, build_tasks, check_judged, prompt_messages
from .specs import CORPUS_NAMES, SPECS, CorpusError, CorpusSpec, spec_for
from .tasks import CorpusTask

__all__ = ["CORPUS_NAMES", "SPECS", "CorpusError", "CorpusSelection", "CorpusSpec", "CorpusTask",
           "TrainingTask", "build_tasks", "check_judged", "prompt_messages", "spec_for"]
