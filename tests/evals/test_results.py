"""Results table and plot: step parsing, dedup of re-runs, exact markdown, CSV, plot, concurrent appends."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from evals import results

ROOT = Path(__file__).resolve().parents[2]


def test_parse_step_takes_the_nearest_step_component() -> None:
    assert results.parse_step("/runs/a/global_step_40/actor/lora_adapter") == 40
    assert results.parse_step("runs/step_7") == 7
    assert results.parse_step("out/checkpoint-1200") == 1200
    assert results.parse_step("/models/Dream-v0-Instruct-7B") is None
    assert results.parse_step("/x/global_step_3/eval/global_step_9") == 9


def test_find_checkpoints_sorts_numerically_and_explains_empty_dirs(tmp_path: Path) -> None:
    for name in ("global_step_10", "global_step_2", "global_step_5", "notes", "eval_results"):
        (tmp_path / name).mkdir()
    (tmp_path / "global_step_99").write_text("a file, not a checkpoint")
    assert [p.name for p in results.find_checkpoints(tmp_path)] == ["global_step_2", "global_step_5",
                                                                     "global_step_10"]
    with pytest.raises(ValueError, match="no checkpoints"):
        results.find_checkpoints(tmp_path / "notes")
    run = tmp_path / "grpo"  # launch/train_grpo.py writes <run>/checkpoints/global_step_N
    for step in (20, 3):
        (run / "checkpoints" / f"global_step_{step}" / "actor").mkdir(parents=True)
    steps = results.find_checkpoints(run)
    assert steps == results.find_checkpoints(run / "checkpoints") == [
        run / "checkpoints" / "global_step_3", run / "checkpoints" / "global_step_20"]
    assert results.run_root(steps[0]) == run and results.run_root(tmp_path / "global_step_2") == tmp_path
    with pytest.raises(ValueError, match="does not exist"):
        results.find_checkpoints(tmp_path / "missing")


def _row(ckpt: str, step: int | None, base: float, plus: float, **extra: object) -> dict:
    return {"checkpoint": ckpt, "eval_name": "he", "task": "humaneval", "step": step,
            "pass@1_base": base, "pass@1_plus": plus, **extra}


def test_rerun_replaces_row_and_views_are_exact(tmp_path: Path) -> None:
    results.append_row(tmp_path, _row("/r/global_step_2", 2, 0.5, 0.25))
    results.append_row(tmp_path, _row("/r/global_step_1", 1, 0.125, 0.0))
    written = results.append_row(tmp_path, _row("/r/global_step_2", 2, 0.75, 0.5, note="rerun"))
    with open(tmp_path / results.ROWS_FILE, "a") as handle:
        handle.write('{"checkpoint": "/r/torn", "st')  # a writer killed mid-line
    rows = results.load_rows(tmp_path)
    assert [(r["step"], r["pass@1_base"]) for r in rows] == [(1, 0.125), (2, 0.75)]
    assert results.to_markdown(rows) == (
        "| task | eval_name | step | pass@1_base | pass@1_plus | checkpoint | note |\n"
        "|---|---|---|---|---|---|---|\n"
        "| humaneval | he | 1 | 0.125 | 0 | /r/global_step_1 |  |\n"
        "| humaneval | he | 2 | 0.75 | 0.5 | /r/global_step_2 | rerun |\n"
    )
    with open(written["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert [(r["step"], r["pass@1_plus"], r["note"]) for r in table] == [("1", "0", ""),
                                                                          ("2", "0.5", "rerun")]
    with Image.open(written["plot"]) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_plot_is_skipped_without_steps(tmp_path: Path) -> None:
    written = results.append_row(tmp_path, _row("/models/base", None, 0.5, 0.5))
    assert "plot" not in written and not (tmp_path / results.PLOT_PNG).exists()
    assert results.format_cell(float("nan")) == "nan" and results.format_cell([1, 2]) == "[1, 2]"


def test_concurrent_appends_from_two_processes_keep_every_row(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from evals.results import append_row\n"
        "for i in range(15):\n"
        "    append_row(Path(sys.argv[1]), {'checkpoint': f'c{sys.argv[2]}-{i}', "
        "'eval_name': 'x', 'task': 't'})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)], cwd=ROOT)
             for w in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = (tmp_path / results.ROWS_FILE).read_text().splitlines()
    assert len(lines) == 30 and len({json.loads(line)["checkpoint"] for line in lines}) == 30
    assert len(results.load_rows(tmp_path)) == 30


def test_cli_renders_and_reports_missing_dir(tmp_path: Path) -> None:
    results.append_row(tmp_path, _row("/r/global_step_3", 3, 0.5, 0.5))
    (tmp_path / results.TABLE_MD).unlink()
    run = subprocess.run([sys.executable, "-m", "launch.results", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "| humaneval | he | 3 |" in run.stdout and (tmp_path / results.TABLE_MD).exists()
    bad = subprocess.run([sys.executable, "-m", "launch.results", str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no results.jsonl" in bad.stderr and "Traceback" not in bad.stderr
