"""The layout a newcomer relies on: where verl may be imported, and that README's layout table is the tree.

Why: verl pins torch, Ray and transformers behaviour and is heavy to import; keeping it behind ``rl/verl/`` and
the launcher means the decoder, the rewards and the evaluation run (and are tested) without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# packages that may import verl; tests and benchmarks are exempt (they exercise the integration)
VERL_IMPORTERS = ("rl/verl/", "launch/", "tests/", "bench/")


def _imports_verl(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "verl" or name.startswith("verl.") for name in names):
            lines.append(node.lineno)
    return lines


def _python_files() -> list[Path]:
    skip = {".git", ".venv", "runs", "outputs", "__pycache__"}
    return [p for p in ROOT.rglob("*.py") if not skip.intersection(p.relative_to(ROOT).parts)]


def test_only_rl_verl_and_the_launcher_import_verl() -> None:
    offenders = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(VERL_IMPORTERS):
            continue
        offenders += [f"{rel}:{line}" for line in _imports_verl(path)]
    assert offenders == [], f"verl imported outside rl/verl/ and launch/: {offenders}"


def test_the_verl_import_check_sees_imports() -> None:
    sample = ROOT / "rl" / "verl" / "engine.py"
    assert _imports_verl(sample), "rl/verl/engine.py imports verl; the checker must see it"
