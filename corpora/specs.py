"""Where each public code-RL corpus lives on the hub, how its rows are named and under which licence.

Why a table: the loaders (:mod:`corpora.load`), the task ids (:mod:`corpora.tasks`), the data preparation and
the evaluation CLI all key on the same corpus names, which are the names :mod:`rewards.code_tests` judges
(``rewards.code_tests.CORPORA``). Schemas, formats and the sources of every fact here: docs/training.md
("Training corpora").
"""

from __future__ import annotations

import dataclasses


class CorpusError(ValueError):
    """A corpus problem the user can fix (unknown name, missing files, no hub access, nothing left to train
    on)."""


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """One corpus: ``hub`` repo id, ``config`` (``load_dataset(name=...)``), ``hub_files`` (files of the hub
    repo to load instead of its default layout), ``file_format`` of those files (``parquet`` | ``json``),
    ``revision`` (default hub revision; ``None`` = the repo's ``main``), ``id_column`` (row id for the task
    id; ``None`` = the 0-based row index in file order) and ``licence`` (``warn`` marks non-commercial
    data)."""

    name: str
    hub: str
    config: str | None = None
    hub_files: tuple[str, ...] = ()
    file_format: str = "parquet"
    revision: str | None = None
    id_column: str | None = None
    licence: str = "MIT"
    warn: bool = False

    def task_id(self, row: dict, index: int) -> str:
        """``<corpus>/<row id>``: the row's own id column, or its 0-based index in file order (ValueError when
        the id column is empty)."""
        if self.id_column is None:
            return f"{self.name}/{index}"
        value = row.get(self.id_column)
        if value is None or str(value) == "":
            raise ValueError(f"no {self.id_column}")
        return f"{self.name}/{value}"


_DEEPCODER = "agentica-org/DeepCoder-Preview-Dataset"
SPECS: dict[str, CorpusSpec] = {spec.name: spec for spec in (
    CorpusSpec("acecode", "TIGER-Lab/AceCode-87K", id_column="id"),
    CorpusSpec("kodcode-light", "KodCode/KodCode-Light-RL-10K", id_column="question_id",
               licence="CC-BY-NC-4.0", warn=True),
    # an older revision (9e74e16) of KodCode-V1 had another schema: pin one with lockstep.data.revision
    CorpusSpec("kodcode-v1", "KodCode/KodCode-V1", id_column="question_id", licence="CC-BY-NC-4.0",
               warn=True),
    CorpusSpec("deepcoder-lcbv5", _DEEPCODER, config="lcbv5"),
    CorpusSpec("deepcoder-primeintellect", _DEEPCODER, config="primeintellect"),
    CorpusSpec("deepcoder-taco", _DEEPCODER, config="taco"),
    CorpusSpec("primeintellect", "Gen-Verse/PrimeIntellect", hub_files=("train/PrimeIntellect.json",),
               file_format="json"),
    CorpusSpec("dream-coder", "Dream-org/Dream-Coder-RL-17k", id_column="task_id", licence="unverified"),
)}
CORPUS_NAMES = tuple(SPECS)


def spec_for(corpus: str) -> CorpusSpec:
    """The spec of ``corpus``; CorpusError naming the known corpora otherwise."""
    if corpus not in SPECS:
        raise CorpusError(f"unknown corpus {corpus!r}; corpora: {', '.join(CORPUS_NAMES)}")
    return SPECS[corpus]
