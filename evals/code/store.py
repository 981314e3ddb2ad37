"""Crash-safe storage of one checkpoint evaluation: append-only JSONL journals keyed by (task_id, sample_idx).

Why: evaluating a 7B diffusion model on HumanEval+/MBPP+ takes hours and runs on preemptible Slurm nodes, so
every generated sample and every score is durable the moment it exists:

* ``generations.rank<R>.jsonl`` — one line per generated sample, written only by generation rank R
  (one process per GPU), each line flushed and fsync'd before the next batch starts;
* ``scores.jsonl`` — one line per scored sample, written by the scoring (main) process in chunks.

A re-run reads both journals and only generates/scores what is missing. A process killed mid-write leaves at
most one torn last line; :meth:`Journal.open_for_append` cuts it off before anything new is appended, so a
torn line never corrupts the next record. Duplicate keys (possible only after manual edits) resolve to the
first record, so work that was already scored is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SampleKey = tuple[str, int]


def sample_key(row: dict[str, Any]) -> SampleKey:
    return (str(row["task_id"]), int(row["sample_idx"]))


class Journal:
    """An append-only JSONL file with fsync'd appends and torn-tail repair.

    Contract: ``read()`` returns every complete record in file order (a torn or garbled line is skipped);
    ``append(rows)`` writes all rows then fsyncs once, so after it returns they survive a crash.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn tail of a killed writer
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return rows

    def open_for_append(self) -> None:
        """Open for appending after truncating a partial last line (only one writer per journal)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with open(self.path, "r+b") as handle:
                    handle.truncate(keep)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        if self._handle is None:
            self.open_for_append()
        for row in rows:
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def generation_journal(out_dir: Path, rank: int) -> Journal:
    return Journal(Path(out_dir) / f"generations.rank{rank}.jsonl")


def read_generations(out_dir: Path) -> dict[SampleKey, dict[str, Any]]:
    """All generated samples of every rank (first record wins per key)."""
    found: dict[SampleKey, dict[str, Any]] = {}
    for path in sorted(Path(out_dir).glob("generations.rank*.jsonl")):
        for row in Journal(path).read():
            found.setdefault(sample_key(row), row)
    return found


class GenerationTail:
    """Incremental reader of every rank's generation journal: each call returns only rows completed since the
    previous call (a line still being written is left for the next call). Lets the scorer poll cheaply."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.offsets: dict[Path, int] = {}
        self.rows: dict[SampleKey, dict[str, Any]] = {}

    def poll(self) -> dict[SampleKey, dict[str, Any]]:
        """All rows seen so far (first record wins per key), after reading what was appended since last
        poll."""
        for path in sorted(self.out_dir.glob("generations.rank*.jsonl")):
            with open(path, "rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                data = handle.read()
            end = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + end
            for line in data[:end].splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.rows.setdefault(sample_key(row), row)
        return self.rows


def read_scores(out_dir: Path) -> dict[SampleKey, dict[str, Any]]:
    found: dict[SampleKey, dict[str, Any]] = {}
    for row in Journal(Path(out_dir) / "scores.jsonl").read():
        found.setdefault(sample_key(row), row)
    return found


def fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that change what a sample is (sampler, steps, prompts...)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def check_settings(out_dir: Path, settings: dict[str, Any], record: bool = True) -> None:
    """Record ``settings`` in ``out_dir/settings.json``, or verify that a resumed run uses the same ones.

    Raises ValueError (clear message) when the directory holds samples made with other settings: mixing them
    would silently corrupt pass@k. ``record=False`` only checks (writes nothing).
    """
    path = Path(out_dir) / "settings.json"
    normalised = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != normalised:
            changed = sorted(k for k in set(previous) | set(normalised)
                             if previous.get(k) != normalised.get(k))
            raise ValueError(
                f"{out_dir} holds an evaluation made with different settings ({', '.join(changed)}); "
                "choose another eval_name= or output_root= (or delete that directory to start over)"
            )
        return
    if not record:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("settings.json.tmp")
    tmp.write_text(json.dumps(normalised, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def shard(items: list[SampleKey], rank: int, world: int) -> list[SampleKey]:
    """Items owned by ``rank``: every ``world``-th item of the fixed global order (stable across re-runs)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return items[rank::world]
