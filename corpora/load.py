"""Load a corpus with ``datasets.load_dataset``: from the hub (a pinned revision) or from local files.

Why both through one function: the hub path and the ``--data-files`` path must yield the same rows (same
``Features``), so every later step (ids, filters, tests) is tested on the local fixtures and runs unchanged on
the hub. The provenance returned with the rows (hub repo, requested revision, the commit it resolved to, or
the local files with their sha256) goes into the run folder, so a run names exactly what it trained on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .specs import CorpusError, CorpusSpec

log = logging.getLogger(__name__)
_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_format(paths: Sequence[Path]) -> str:
    """``parquet`` or ``json`` from the file names (all files of one corpus share a format)."""
    formats = {_FORMATS.get(p.suffix.lower()) for p in paths}
    if None in formats or len(formats) != 1:
        raise CorpusError("data files must all be .parquet or all .json/.jsonl, got "
                          f"{[p.name for p in paths]}")
    return formats.pop()


def load_local(spec: CorpusSpec, data_files: Sequence[str | Path]) -> tuple[Any, dict[str, Any]]:
    """Rows of local files in the hub's on-disk format (a Gen-Verse JSON array file loads as rows too)."""
    from datasets import load_dataset

    paths = [Path(p).expanduser() for p in data_files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CorpusError(f"{spec.name}: data file not found: {missing[0]}")
    try:
        rows = load_dataset(local_format(paths), data_files=[str(p) for p in paths], split="train")
    except CorpusError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken file is the user's to fix: one line
        raise CorpusError(f"{spec.name}: cannot read {[p.name for p in paths]}: "
                          f"{' '.join(str(error).split())}") \
            from None
    provenance = {"source": "files", "files": [{"path": str(p.resolve()), "sha256": _sha256(p)}
                                               for p in paths]}
    return rows, provenance


def resolve_revision(spec: CorpusSpec, revision: str | None) -> str:
    """The commit sha that ``revision`` (a branch, tag or sha; ``None`` = the spec's default, else ``main``)
    names on the hub now; CorpusError (one line) when the hub cannot be asked."""
    from huggingface_hub import HfApi

    wanted = revision or spec.revision or "main"
    try:
        return str(HfApi().dataset_info(spec.hub, revision=wanted).sha)
    except Exception as error:  # noqa: BLE001 - offline, unknown revision, gated repo: one line
        raise CorpusError(f"{spec.name}: cannot resolve revision {wanted!r} of {spec.hub} on the hub "
                          f"({type(error).__name__}); pass local files with --data-files / "
                          "lockstep.data.data_files"
                          ) from None


def load_hub(spec: CorpusSpec, revision: str | None) -> tuple[Any, dict[str, Any]]:
    """Rows of the hub dataset at the commit ``revision`` resolves to (so every worker and rerun sees the
    same)."""
    from datasets import load_dataset

    sha = resolve_revision(spec, revision)
    kwargs: dict[str, Any] = {"revision": sha, "split": "train"}
    if spec.config:
        kwargs["name"] = spec.config
    if spec.hub_files:
        kwargs["data_files"] = list(spec.hub_files)
    try:
        rows = load_dataset(spec.hub, **kwargs)
    except Exception as error:  # noqa: BLE001
        raise CorpusError(f"{spec.name}: cannot load {spec.hub}@{sha[:12]}: {' '.join(str(error).split())}") \
            from None
    provenance = {"source": "hub", "hub": spec.hub, "config": spec.config, "files": list(spec.hub_files),
                  "revision": revision or spec.revision or "main", "resolved_sha": sha}
    return rows, provenance


def load_rows(spec: CorpusSpec, data_files: Sequence[str | Path] | None = None,
              revision: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(``datasets.Dataset``, provenance): local ``data_files`` when given, else the hub at ``revision``."""
    if spec.warn:
        log.warning("%s is licensed %s: non-commercial use only", spec.name, spec.licence)
    if data_files:
        return load_local(spec, data_files)
    return load_hub(spec, revision)
