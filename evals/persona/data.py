"""Twin-2K-500 loading: hub (`wave_split`, pinned revision) or the offline fixture, through one parser.

Why one path: the fixture exists to test the code that reads the real data, so both sources go through
``datasets.load_dataset`` and :func:`respondents_from_rows`; only the builder arguments differ.

Leakage contract (the reason this module is strict):
- the persona is ``wave1_3_persona_text`` / ``wave1_3_persona_json`` of ``wave_split`` only. ``full_persona``
  holds all four waves (wave-4 answers replace the earlier ones), so from it we read ``persona_summary``
  and nothing else; its other columns are dropped right after loading;
- :func:`assert_no_leakage` refuses a persona that contains any holdout QuestionID or the text of a
  wave-4 question; every respondent is checked at load time;
- the prompt template is ``wave4_Q_wave4_A`` with every ``Answers`` key removed (:func:`strip_answers`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from evals.persona.tasks import RANGE_TABLE, ColumnSpec, holdout_qids

HUB_DATASET = "LLM-Digital-Twin/Twin-2K-500"
HUB_SPLIT = "data"  # the hub split is named "data", not "train"
FIXTURE_DIR = Path(__file__).parent / "fixtures"
FIXTURE_WAVE_SPLIT = FIXTURE_DIR / "wave_split.jsonl"
FIXTURE_SUMMARY = FIXTURE_DIR / "persona_summary.jsonl"
WAVE_SPLIT_COLUMNS = (
    "pid",
    "wave1_3_persona_json",
    "wave1_3_persona_text",
    "wave4_Q_wave1_3_A",
    "wave4_Q_wave4_A",
)


class PersonaDataError(ValueError):
    """The data does not have the Twin-2K-500 schema we expect."""


class HubUnreachable(PersonaDataError):
    """The Hugging Face hub could not be reached (offline machine, ``HF_HUB_OFFLINE=1``, blocked endpoint).

    The message says so in one line and names both ways around it; ``hint`` is the caller's own spelling of
    them (command-line flags or recipe keys).
    """

    def __init__(self, reason: str, hint: str = "persona.wave_split_files=PATH (a local copy) or "
                                                 "persona.fixture=true (the offline fixture)") -> None:
        self.reason = reason
        super().__init__(f"the Hugging Face hub is unreachable ({reason}), so the Twin-2K-500 data "
                         f"({HUB_DATASET}) cannot be downloaded; use {hint}")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "no connection to the hub" (not: the dataset or revision does not exist)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # huggingface_hub before 1.0 uses requests, whose errors are ConnectionError/OSError
        pass
    try:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(errors)


class LeakageError(PersonaDataError):
    """A persona contains holdout questions or answers; scoring it would be meaningless."""


def decode_json_field(value: Any) -> Any:
    """Parse a JSON column value that may be already parsed, JSON text, or JSON text encoded twice."""
    for _ in range(3):
        if not isinstance(value, str):
            return value
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise PersonaDataError(f"column is not valid JSON: {value[:80]!r}") from err
    return value


def iter_questions(elements: Sequence[Mapping[str, Any]], block: str = "") -> Iterator[tuple[str, dict]]:
    """Yield (block name, question dict) in survey order, recursing into ``Branch`` elements."""
    for element in elements:
        if not isinstance(element, Mapping):
            raise PersonaDataError(f"survey element is not an object: {element!r:.80}")
        if "Elements" in element:  # Branch
            yield from iter_questions(element["Elements"], element.get("BlockName", block))
        name = str(element.get("BlockName", block) or "").strip()
        for question in element.get("Questions") or []:
            yield name, question


def question_kind(question: Mapping[str, Any]) -> str:
    """single | multi | matrix | slider | number | form | db | other (from QuestionType + Selector)."""
    qtype = question.get("QuestionType")
    selector = (question.get("Settings") or {}).get("Selector", "")
    if qtype == "MC":
        return "multi" if selector in ("MAVR", "MAHR") else "single"
    if qtype == "Matrix":
        return "matrix"
    if qtype == "Slider":
        return "slider"
    if qtype == "TE":
        return "form" if selector == "FORM" else "number"
    if qtype == "DB":
        return "db"
    return "other"


def _ids(question: Mapping[str, Any], labels_key: str, ids_key: str) -> list[str]:
    labels = question.get(labels_key) or []
    ids = question.get(ids_key)
    if ids:
        if len(ids) != len(labels):
            raise PersonaDataError(f"{question.get('QuestionID')}: {ids_key} and {labels_key} lengths differ")
        return [str(i) for i in ids]
    return [str(i + 1) for i in range(len(labels))]


def question_columns(question: Mapping[str, Any]) -> list[str]:
    """Response columns of a question, named as the range table names them (see ``tasks``)."""
    qid = str(question["QuestionID"])
    kind = question_kind(question)
    if kind in ("single", "number"):
        return [qid]
    if kind == "matrix":
        return [f"{qid}_{i}" for i in _ids(question, "Rows", "RowsID")]
    if kind == "slider":  # a slider without Statements still has one value (rendered "[No Statement Needed]")
        ids = _ids(question, "Statements", "StatementsID") if question.get("Statements") else ["1"]
        return [f"{qid}_{i}" for i in ids]
    if kind == "form":
        return [f"{qid}_{i}" for i in _ids(question, "Rows", "RowsID")]
    return []


def to_number(value: Any) -> float | None:
    """A finite float from an int/float/numeric string; None for blanks and non-numbers (dropped, not
    wrong)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip().replace(",", "")
        if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
            return None
        number = float(text)
    return number if number == number and abs(number) != float("inf") else None


def answer_values(question: Mapping[str, Any]) -> dict[str, float | None]:
    """Numeric value per column from a question's ``Answers`` (None where not answered / not numeric)."""
    columns = question_columns(question)
    answers = question.get("Answers") or {}
    kind = question_kind(question)
    if kind in ("single", "matrix"):
        raw = answers.get("SelectedByPosition")
    elif kind == "slider":
        raw = answers.get("Values")
    elif kind == "number":
        raw = answers.get("Text")
    elif kind == "form":
        raw = [
            next(iter(d.values()), None) if isinstance(d, Mapping) else None
            for d in answers.get("Text") or []
        ]
    else:
        return {}
    values = raw if isinstance(raw, list) else [raw]
    out: dict[str, float | None] = {}
    for i, column in enumerate(columns):
        out[column] = to_number(values[i]) if i < len(values) else None
    return out


def strip_answers(obj: Any) -> Any:
    """A deep copy with every ``Answers`` key removed at any depth (the prompt template must hold no
    answer)."""
    if isinstance(obj, Mapping):
        return {k: strip_answers(v) for k, v in obj.items() if k != "Answers"}
    if isinstance(obj, list):
        return [strip_answers(v) for v in obj]
    return copy.deepcopy(obj)


@dataclass
class Respondent:
    """One participant: persona sources, the answer-free wave-4 template, and truth/retest per column."""

    pid: str
    persona_text: str
    persona_json: list
    persona_summary: str | None
    template: list  # wave4_Q_wave4_A with all Answers stripped
    truth: dict[str, float | None]  # wave 1-3 answers to the wave-4 questions (ground truth)
    retest: dict[str, float | None]  # wave-4 answers (human test-retest)


@dataclass(frozen=True)
class HoldoutItem:
    """One question to ask one respondent; ``columns`` are all its columns, ``scored`` the valid scored
    ones."""

    pid: str
    qid: str
    kind: str
    question: dict = field(repr=False)  # answer-free question from the template
    columns: tuple[str, ...]
    scored: tuple[str, ...]


_QID_TOKEN = re.compile(r"(?<!\w)QID\d+(?:_\d+)*(?!\w)")


def _normalise_text(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text).replace("&nbsp;", " ")
    return re.sub(r"\s+", " ", text).strip().lower()


def assert_no_leakage(resp: Respondent, qids: set[str] | None = None, min_text_chars: int = 60) -> None:
    """Raise :class:`LeakageError` if the persona holds a holdout QID or the text of a wave-4 question.

    Checked: QuestionIDs in the persona JSON, QID tokens in the persona text/summary, and every wave-4
    question text of at least ``min_text_chars`` characters (shorter ones, e.g. "Please rate...", are too
    generic to identify a question) inside the persona text/summary.
    """
    holdout = set(qids if qids is not None else holdout_qids())
    holdout |= {str(q["QuestionID"]) for _, q in iter_questions(resp.template) if question_kind(q) != "db"}
    persona_qids = {str(q.get("QuestionID")) for _, q in iter_questions(resp.persona_json)}
    shared = sorted(persona_qids & holdout)
    if shared:
        raise LeakageError(f"pid {resp.pid}: persona JSON contains holdout questions {shared[:5]}")
    texts = [resp.persona_text, resp.persona_summary or ""]
    for text in texts:  # one scan per text: QID tokens, a matrix/slider column id counts as its question
        tokens = set(_QID_TOKEN.findall(text))
        found = sorted(t for t in tokens if t in holdout or t.split("_", 1)[0] in holdout)
        if found:
            raise LeakageError(f"pid {resp.pid}: persona text mentions holdout questions {found[:5]}")
    persona_norm = [_normalise_text(t) for t in texts]
    for _, q in iter_questions(resp.template):
        qtext = _normalise_text(str(q.get("QuestionText", "")))
        if (
            question_kind(q) != "db"
            and len(qtext) >= min_text_chars
            and any(qtext in p for p in persona_norm)
        ):
            raise LeakageError(
                f"pid {resp.pid}: persona contains the text of holdout question {q['QuestionID']}"
            )


def respondents_from_rows(
    wave_rows: Sequence[Mapping[str, Any]], summaries: Mapping[str, str | None] | None = None
) -> list[Respondent]:
    """Parse ``wave_split`` rows (+ optional pid -> persona_summary) into leakage-checked respondents."""
    out: list[Respondent] = []
    for row in tqdm(wave_rows, desc="parsing respondents", unit="person", disable=len(wave_rows) < 100):
        missing = [c for c in WAVE_SPLIT_COLUMNS if c not in row]
        if missing:
            raise PersonaDataError(f"wave_split row lacks columns {missing}; is this the wave_split config?")
        pid = str(row["pid"])
        truth_json = decode_json_field(row["wave4_Q_wave1_3_A"])
        retest_json = decode_json_field(row["wave4_Q_wave4_A"])
        truth: dict[str, float | None] = {}
        retest: dict[str, float | None] = {}
        for _, q in iter_questions(truth_json):
            truth.update(answer_values(q))
        for _, q in iter_questions(retest_json):
            retest.update(answer_values(q))
        resp = Respondent(
            pid=pid,
            persona_text=str(row["wave1_3_persona_text"] or ""),
            persona_json=decode_json_field(row["wave1_3_persona_json"]) or [],
            persona_summary=(summaries or {}).get(pid),
            template=strip_answers(retest_json),
            truth=truth,
            retest=retest,
        )
        assert_no_leakage(resp)
        out.append(resp)
    return out


def holdout_items(resp: Respondent, table: Mapping[str, ColumnSpec] | None = None) -> list[HoldoutItem]:
    """Questions worth asking: scored columns with both a truth and a retest value (between-subject arms
    the person did not see have blanks and are skipped)."""
    table = RANGE_TABLE if table is None else table
    items: list[HoldoutItem] = []
    for _, q in iter_questions(resp.template):
        columns = question_columns(q)
        scored = tuple(
            c
            for c in columns
            if c.upper() in table and resp.truth.get(c) is not None and resp.retest.get(c) is not None
        )
        if scored:
            items.append(
                HoldoutItem(resp.pid, str(q["QuestionID"]), question_kind(q), q, tuple(columns), scored)
            )
    return items


def resolve_revision(revision: str) -> str:
    """A 40-hex commit sha for ``revision`` (a sha is returned as is; a branch/tag is resolved online)."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import HfApi

    return str(HfApi().dataset_info(HUB_DATASET, revision=revision).sha)


def _file_builder(path: str) -> str:
    if not Path(path).exists():
        raise PersonaDataError(f"data file {path} does not exist")
    return "parquet" if path.endswith(".parquet") else "json"


def load_respondents(
    *,
    fixture: bool,
    need_summary: bool,
    revision: str = "main",
    wave_split_files: str | Path | None = None,
    summary_files: str | Path | None = None,
) -> tuple[list[Respondent], dict[str, Any]]:
    """Load respondents from the hub (pinned revision) or the fixture; returns (respondents, provenance).

    Hub: ``wave_split`` at ``revision`` resolved to a commit sha (recorded), and, only when a summary
    variant needs it, ``persona_summary`` of ``full_persona`` at the same sha (other columns dropped).
    Fixture / local files (a local copy of the hub data): the same loader with
    ``load_dataset("json" | "parquet", data_files=...)`` (parquet for ``*.parquet`` paths).
    """
    import datasets

    if fixture or wave_split_files is not None:
        wave_path = str(wave_split_files or FIXTURE_WAVE_SPLIT)
        wave = datasets.load_dataset(_file_builder(wave_path), data_files=wave_path, split="train")
        provenance: dict[str, Any] = {"source": "files", "wave_split": wave_path}
        summary_ds = None
        if need_summary:
            summary_path = str(summary_files or FIXTURE_SUMMARY)
            summary_ds = datasets.load_dataset(
                _file_builder(summary_path), data_files=summary_path, split="train"
            )
            provenance["persona_summary"] = summary_path
    else:
        try:
            sha = resolve_revision(revision)
            wave = datasets.load_dataset(HUB_DATASET, "wave_split", split=HUB_SPLIT, revision=sha)
            provenance = {"source": "hub", "dataset": HUB_DATASET, "config": "wave_split", "revision": sha}
            summary_ds = None
            if need_summary:
                summary_ds = datasets.load_dataset(HUB_DATASET, "full_persona", split=HUB_SPLIT, revision=sha)
        except _network_errors() as err:
            text = " ".join(str(err).split())
            if "offline mode is enabled" in text.lower() or "OfflineModeIsEnabled" in text:
                reason = "offline mode: HF_HUB_OFFLINE is set"
            else:
                reason = f"{type(err).__name__}: {text[:120]}" if text else type(err).__name__
            raise HubUnreachable(reason) from None
    summaries: dict[str, str | None] = {}
    if summary_ds is not None:
        if "persona_summary" not in summary_ds.column_names:
            raise PersonaDataError("summary source has no persona_summary column")
        summary_ds = summary_ds.select_columns(["pid", "persona_summary"])  # drop the leaking columns now
        summaries = {str(r["pid"]): r["persona_summary"] for r in summary_ds}
    respondents = respondents_from_rows(wave, summaries)
    provenance["respondents"] = len(respondents)
    return respondents, provenance
