"""The layout a newcomer relies on: where verl may be imported, and that README's layout table is the tree.

Why: verl pins torch, Ray and transformers behaviour and is heavy to import; keeping it behind ``rl/verl/``
and the launcher means the decoder, the rewards and the evaluation run (and are tested) without it.
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


def _readme_layout_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`") and cells[0].endswith("/`"):
            rows[cells[0].strip("`").rstrip("/")] = cells[1]
    return rows


def test_readme_layout_table_is_the_tree() -> None:
    """Every top-level folder of the project is in README's layout table, and every row names a real
    folder."""
    rows = _readme_layout_rows()
    skip = {".git", ".venv", ".ci", "runs", "outputs", "shared"}
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in skip
           and not p.name.startswith((".", "_"))
           and not p.name.endswith(".egg-info") and any(p.iterdir())}
    assert set(r for r in rows if "/" not in r) == top
    assert all((ROOT / path).is_dir() for path in rows), [p for p in rows if not (ROOT / p).is_dir()]


def test_readme_layout_names_the_files_it_mentions() -> None:
    """Files a row names in backticks (``results.py``, ``_grpo_7b.yaml``, ...) exist under that row's
    folder."""
    import re

    missing = []
    for folder, what in _readme_layout_rows().items():
        for name in re.findall(r"`([\w/]+\.(?:py|yaml))`", what):
            if not list((ROOT / folder).rglob(name.rsplit("/", 1)[-1])):
                missing.append(f"{folder}/{name}")
    assert missing == []


def test_no_script_or_test_edits_sys_path() -> None:
    """Every package the scripts import is installed (pyproject's packages list), so nothing patches sys.path.

    Exempt: ``rewards/_zygote.py``, the sandboxed script, which runs outside the installed project by design.
    """
    import re

    edit = re.compile(r"^\s*sys\.path\.(insert|append|extend)\(", re.M)
    offenders = [p.relative_to(ROOT).as_posix() for p in _python_files()
                 if p.relative_to(ROOT).as_posix() != "rewards/_zygote.py" and edit.search(p.read_text())]
    assert offenders == []


def test_every_top_level_package_is_installed() -> None:
    """pyproject's packages list names every top-level package (a missing one imports only from a
    checkout)."""
    import tomllib

    include = (tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["tool"]["setuptools"]["packages"]["find"]["include"])
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {name.rstrip("*") for name in include}
