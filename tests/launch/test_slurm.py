"""Slurm jobs: rendered scripts (content + bash syntax), grids, manifests, and the array-index logic run locally.

No Slurm here: the array scripts are executed with plain bash and ``SLURM_ARRAY_TASK_ID`` set by the test,
which runs exactly what an array task runs (``python -m launch.slurm.cli run-index MANIFEST``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.slurm.render import RenderError, expand_grid, fill_template, select_command, split_values

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.slurm.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def bash_syntax_ok(script: str) -> None:
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_grid_expansion_and_value_splitting() -> None:
    assert expand_grid(["a=1,2", "b=x,[3,4]"]) == [
        ["a=1", "b=x"], ["a=1", "b=[3,4]"], ["a=2", "b=x"], ["a=2", "b=[3,4]"]]
    assert split_values("'p,q',r") == ["'p,q'", "r"]
    for bad in (["a"], ["=1"], ["a=1", "a=2"], ["a=[1,2"]):
        with pytest.raises(RenderError):
            expand_grid(bad)


def test_template_fields_must_match_exactly() -> None:
    with pytest.raises(RenderError, match="missing fields"):
        fill_template("array.sbatch", {"job_name": "x"})
    with pytest.raises(RenderError, match="out of range"):
        select_command({"commands": [["a"]]}, 1)


def test_train_script_starts_ray_head_workers_and_one_driver() -> None:
    run = cli("render", "train", "--recipe", "humaneval", "--nodes", "3", "--gpus-per-node", "4",
              "--partition", "h100", "--setup", "source .venv/bin/activate", "--dry-run", "--",
              "trainer.total_epochs=2", "data.train_files=[a b]")
    assert run.returncode == 0, run.stderr
    script = run.stdout
    bash_syntax_ok(script)
    for line in ("#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=h100", "source .venv/bin/activate"):
        assert line in script.splitlines()
    head = script.index("ray start --head")
    workers = script.index('ray start --address="$RAY_ADDRESS"')
    driver = script.index("srun --overlap --nodes=1 --ntasks=1 -w \"$HEAD_NODE\"")
    assert head < workers < driver and script.count("launch/train_grpo.py") == 1
    assert "recipe=humaneval trainer.nnodes=3 trainer.n_gpus_per_node=4 trainer.total_epochs=2" in script
    assert "'data.train_files=[a b]'" in script  # overrides are shell-quoted
    assert 'export RAY_ADDRESS="$HEAD_IP:$RAY_PORT"' in script
    # every #SBATCH directive precedes the first command (sbatch stops reading them there)
    lines = [ln for ln in script.splitlines() if ln.strip()]
    first_cmd = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    assert all(not ln.startswith("#SBATCH") for ln in lines[first_cmd:])
    assert "would write" in run.stderr


def test_eval_array_renders_one_index_per_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (10, 2, 5):
        (run_dir / f"global_step_{step}").mkdir(parents=True)
    run = cli("render", "eval-array", "--run-dir", str(run_dir), "--recipe", "eval/mbpp", "--max-parallel", "2",
              "--base-model", "/models/dream", "--include-base", "--gpus-per-node", "0", "--", "dataset.limit=3")
    assert run.returncode == 0, run.stderr
    script_path = run_dir / "slurm" / "lockstep-eval-array.sbatch"
    script = script_path.read_text()
    bash_syntax_ok(script)
    assert "#SBATCH --array=0-3%2" in script and "--gpus-per-node" not in script
    assert (run_dir / "slurm" / "logs").is_dir() and os.access(script_path, os.X_OK)
    manifest = json.loads((run_dir / "slurm" / "lockstep-eval-array.manifest.json").read_text())
    assert manifest["labels"] == ["base", "global_step_2", "global_step_5", "global_step_10"]
    assert manifest["commands"][3][2:] == [
        "recipe=eval/mbpp", f"results_dir={run_dir.resolve() / 'eval_results'}", "base_model=/models/dream",
        f"checkpoint={run_dir.resolve() / 'global_step_10'}", "dataset.limit=3"]
    assert {"step=0", "checkpoint=/models/dream", f"output_root={run_dir.resolve() / 'eval_base'}"} <= set(
        manifest["commands"][0])
    manifest_path = str(run_dir / "slurm" / "lockstep-eval-array.manifest.json")
    picked = cli("run-index", manifest_path, "--print", env={"SLURM_ARRAY_TASK_ID": "2"})
    assert picked.returncode == 0 and picked.stdout.strip().endswith(f"checkpoint={run_dir.resolve()}/global_step_5 dataset.limit=3")
    out_of_range = cli("run-index", manifest_path, "--print", env={"SLURM_ARRAY_TASK_ID": "4"})
    assert out_of_range.returncode == 2 and "out of range" in out_of_range.stderr
    no_index = cli("run-index", manifest_path, env={"SLURM_ARRAY_TASK_ID": ""})
    assert no_index.returncode == 2 and "no array index" in no_index.stderr


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    for args, message in (
        (("render", "eval-array", "--run-dir", str(tmp_path), "--dry-run"), "no checkpoints"),
        (("render", "sweep", "--recipe", "x", "--dry-run"), "either --grid"),
        (("render", "sweep", "--recipe", "x", "--grid", "a", "--dry-run"), "key=value1,value2"),
        (("render", "train", "--recipe", "x", "--nodes", "0", "--dry-run"), "--nodes >= 1"),
    ):
        run = cli(*args)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_sweep_array_script_runs_each_index_locally(tmp_path: Path) -> None:
    """Render a sweep whose entry records its argv, then run the real script once per array index."""
    entry = tmp_path / "record.py"
    entry.write_text("import json, sys, os\n"
                     "open(os.environ['RECORD'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    out_dir = tmp_path / "job"
    run = cli("render", "sweep", "--recipe", "demo", "--entry", str(entry), "--grid", "lr=1e-6,2e-6",
              "--grid", "n=4,8", "--gpus-per-node", "0", "--out-dir", str(out_dir), "--job-name", "sw",
              "--", "trainer.total_epochs=1")
    assert run.returncode == 0, run.stderr
    script = out_dir / "sw.sbatch"
    assert "#SBATCH --array=0-3" in script.read_text()
    record = tmp_path / "argv.jsonl"
    for index in (3, 0):
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SLURM_ARRAY_TASK_ID": str(index), "RECORD": str(record)})
        assert done.returncode == 0, done.stderr
        assert f"[array index {index}/4]" in done.stdout
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen == [["recipe=demo", "trainer.total_epochs=1", "lr=2e-6", "n=8"],
                    ["recipe=demo", "trainer.total_epochs=1", "lr=1e-6", "n=4"]]


def test_train_sweep_names_runs_and_pins_single_node() -> None:
    run = cli("render", "sweep", "--recipe", "humaneval", "--grid", "algorithm.kl=0,0.01", "--cpus-per-task", "12",
              "--gpus-per-node", "8", "--job-name", "kl", "--dry-run")
    assert run.returncode == 0, run.stderr
    bash_syntax_ok(run.stdout)
    assert "[1] algorithm.kl=0.01:" in run.stderr
    assert ("trainer.nnodes=1 trainer.n_gpus_per_node=8 ray_kwargs.ray_init.num_cpus=12 algorithm.kl=0.01 "
            "trainer.experiment_name=kl-001") in run.stderr


def test_submit_calls_sbatch_and_explains_when_it_is_missing(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text('#!/bin/bash\necho "$@" > "$(dirname "$0")/args"\necho "Submitted batch job 42"\n')
    (fake_bin / "sbatch").chmod(0o755)
    args = ("submit", "train", "--recipe", "humaneval", "--out-dir", str(tmp_path / "job"), "--job-name", "t")
    bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "sbatch").exists())
    missing = cli(*args, env={"PATH": bare_path})
    assert missing.returncode == 2 and "sbatch is not on PATH" in missing.stderr
    run = cli(*args, env={"PATH": f"{fake_bin}{os.pathsep}{bare_path}"})
    assert run.returncode == 0 and "Submitted batch job 42" in run.stdout, run.stderr
    assert (fake_bin / "args").read_text().strip() == str(tmp_path / "job" / "t.sbatch")
    dry = cli(*args, "--dry-run", env={"PATH": bare_path})
    assert dry.returncode == 0 and "would write" in dry.stderr and "run: sbatch" in dry.stderr
