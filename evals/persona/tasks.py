"""Static scoring table of the Twin-2K-500 wave-4 holdout: column -> task, range, transform.

Why a static table: the survey export's own range fields are unreliable (key names vary, some sliders have
none), and the paper's metric divides by a fixed range per column. The numbers below follow the authors'
MAD evaluation (their code comments mislabel some blocks; the numbers are what counts). Columns are keyed
the way our parser names them from the JSON:

- single-choice MC and numeric text entry: the QuestionID (``QID157``, pricing ``QID9_12``);
- matrix rows: ``{QID}_{row id}`` (``RowsID`` when present, else 1..n);
- slider statements: ``{QID}_{statement id}`` (``StatementsID`` when present, else 1..n).

Anchoring answers are free numbers; they are scored as deciles 1..10 whose edges come from the pooled
wave 1-3 answers of both arms of the same question pair (``decile_group``).

``QID290`` (the "what % of the public supports ..." slider of the false-consensus block) is keyed to the
authors' "false cons. others" columns with ids 1-7, 10-12; that id mapping is unverified against the hub.
"""

from __future__ import annotations

from dataclasses import dataclass

IDENTITY = "identity"
DECILE = "decile_group"


@dataclass(frozen=True)
class ColumnSpec:
    """How one response column is scored: task name, inclusive range, and the value transform."""

    column: str
    task: str
    lo: float
    hi: float
    transform: str = IDENTITY
    group: str | None = None  # decile pooling group (anchoring), None otherwise

    @property
    def span(self) -> float:
        return self.hi - self.lo


TASKS: tuple[str, ...] = (
    "false consensus",
    "base rate",
    "framing",
    "conjunction (Linda)",
    "outcome bias",
    "anchoring",
    "less is more",
    "sunk cost",
    "absolute vs relative savings",
    "WTA/WTP (Thaler)",
    "Allais",
    "myside",
    "probability matching",
    "non-separability",
    "omission",
    "denominator neglect",
    "pricing",
)


def _build_table() -> dict[str, ColumnSpec]:
    table: dict[str, ColumnSpec] = {}

    def add(
        column: str, task: str, lo: float, hi: float, transform: str = IDENTITY, group: str | None = None
    ):
        if column in table:
            raise AssertionError(f"duplicate column {column} in the range table")
        table[column] = ColumnSpec(column, task, lo, hi, transform, group)

    for i in range(1, 11):
        add(f"QID287_{i}", "false consensus", 1, 5)
    for i in (1, 2, 3, 4, 5, 6, 7, 10, 11, 12):
        add(f"QID290_{i}", "false consensus", 0, 100)
    add("QID154_1", "base rate", 0, 100)
    add("QID156_1", "base rate", 0, 100)
    for qid in ("QID157", "QID158"):
        add(qid, "framing", 1, 6)
    for qid in ("QID159", "QID160"):
        for i in (1, 2, 3):
            add(f"{qid}_{i}", "conjunction (Linda)", 1, 6)
    for qid in ("QID161", "QID162"):
        add(qid, "outcome bias", 1, 7)
    for qid in ("QID164", "QID166"):
        add(qid, "anchoring", 1, 10, DECILE, "anchoring_africa")
    for qid in ("QID168", "QID170"):
        add(qid, "anchoring", 1, 10, DECILE, "anchoring_redwood")
    for n in range(171, 177):
        add(f"QID{n}", "less is more", 1, 5)
    for n in range(177, 180):
        add(f"QID{n}", "less is more", 1, 6)
    for qid in ("QID181", "QID182"):
        add(qid, "sunk cost", 0, 20)
    for qid in ("QID183", "QID184"):
        add(qid, "absolute vs relative savings", 1, 2)
    for n in (189, 190, 191):
        add(f"QID{n}", "WTA/WTP (Thaler)", 1, 10)
    for qid in ("QID192", "QID193"):
        add(qid, "Allais", 1, 2)
    for qid in ("QID194", "QID195"):
        add(qid, "myside", 1, 6)
    for i in range(1, 11):
        add(f"QID198_{i}", "probability matching", 1, 2)
    for i in range(1, 7):
        add(f"QID203_{i}", "probability matching", 1, 2)
    for qid in ("QID288", "QID289"):
        for i in range(1, 5):
            add(f"{qid}_{i}", "non-separability", 1, 7)
    add("QID291", "omission", 1, 4)
    add("QID196", "denominator neglect", 1, 2)
    for k in range(1, 41):
        add(f"QID9_{k}", "pricing", 1, 2)
    unknown = {spec.task for spec in table.values()} - set(TASKS)
    if unknown:
        raise AssertionError(f"range table names unknown tasks: {sorted(unknown)}")
    return table


RANGE_TABLE: dict[str, ColumnSpec] = _build_table()


def column_spec(column: str, table: dict[str, ColumnSpec] | None = None) -> ColumnSpec | None:
    """The scoring spec of ``column`` (case-insensitive), or None when the column is not scored."""
    return (RANGE_TABLE if table is None else table).get(column.upper())


def holdout_qids(table: dict[str, ColumnSpec] | None = None) -> set[str]:
    """Every QuestionID whose columns are scored (used by the leakage guard)."""
    qids: set[str] = set()
    for col in RANGE_TABLE if table is None else table:
        if col.startswith("QID9_"):
            qids.add(col)  # pricing items are whole questions whose QID contains an underscore
        else:
            qids.add(col.split("_", 1)[0])
    return qids
