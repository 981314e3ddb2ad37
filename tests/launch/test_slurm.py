"""Slurm jobs: rendered scripts (content + bash syntax), grids, manifests, and the array-index logic run
locally.

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


MODEL = "actor_rollout_ref.model.path=/models/Dream-v0-Instruct-7B"  # exists on the cluster, not here


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
              "trainer.total_epochs=2", "data.train_files=[a b]", MODEL)
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
    run = cli("render", "eval-array", "--run-dir", str(run_dir), "--recipe", "eval/mbpp",
              "--max-parallel", "2", "--base-model", "/models/dream", "--include-base",
              "--gpus-per-node", "0", "--", "dataset.limit=3")
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
    assert picked.returncode == 0 and picked.stdout.strip().endswith(
        f"checkpoint={run_dir.resolve()}/global_step_5 dataset.limit=3")
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


def test_jobs_are_validated_before_anything_is_rendered(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The recipe and overrides of every command go through the entry point's own composition and checks
    first: a typo exits 2 with one line and no script, manifest or log folder is written (in-process: verl is
    imported once; the first case also runs the real CLI, for the absence of import noise and tracebacks)."""
    from launch.slurm.cli import main as slurm_main

    run_dir = tmp_path / "run"
    (run_dir / "global_step_1").mkdir(parents=True)
    out = tmp_path / "job"
    for args, message in (
        (("submit", "train", "--recipe", "nosuch", "--", "bogus.key=1"), "unknown recipe 'nosuch'"),
        (("submit", "train", "--recipe", "humaneval", "--", MODEL, "bogus.key=1"),
         "Could not override 'bogus.key'"),
        (("submit", "train", "--recipe", "demo_sft"),
         "is an SFT recipe: run it with python launch/train_sft.py"),
        (("submit", "train", "--recipe", "humaneval"), "actor_rollout_ref.model.path is not set"),
        (("submit", "sweep", "--recipe", "demo", "--grid", "actor_rollout_ref.rollout.n=4,two"),
         "array index 1 (actor_rollout_ref.rollout.n=two): actor_rollout_ref.rollout.n (group size) must be "
         "an integer"),
        (("submit", "eval-array", "--run-dir", str(run_dir), "--recipe", "eval/humaneval", "--",
          "generation.nope=1"),
         "array index 0 (global_step_1): cannot compose recipe 'eval/humaneval': Could not override"),
        (("submit", "sweep", "--recipe", "eval/mbpp", "--entry", "eval", "--grid", "dataset.limit=1,all",
          "--", "checkpoint=x"), "dataset.limit=all must be an integer"),
    ):
        argv = [*args[:2], "--out-dir", str(out), *args[2:]]
        code, err = slurm_main(argv), capsys.readouterr().err
        if "nosuch" in args:
            run = cli(*argv)
            code, err = run.returncode, run.stderr
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("error: ") and message in err, err
        assert not out.exists() and not (run_dir / "slurm").exists()
    ok = slurm_main(["render", "eval-array", "--run-dir", str(run_dir), "--recipe", "eval/humaneval", "--",
                     # cuda on the compute nodes, not on this machine
                     "device=cuda", "generation.n_samples=2"])
    assert ok == 0, capsys.readouterr().err


def test_sweep_array_script_runs_each_index_locally(tmp_path: Path) -> None:
    """Render a sweep whose entry records its argv, then run the real script once per array index."""
    entry = tmp_path / "record.py"
    entry.write_text("import json, sys, os\n"
                     "record = [sys.argv[1:], os.environ.get('RAY_ADDRESS'), os.environ['RAY_TMPDIR']]\n"
                     "open(os.environ['RECORD'], 'a').write(json.dumps(record) + '\\n')\n")
    out_dir = tmp_path / "job"
    run = cli("render", "sweep", "--recipe", "demo", "--entry", str(entry), "--grid", "lr=1e-6,2e-6",
              "--grid", "n=4,8", "--gpus-per-node", "0", "--out-dir", str(out_dir), "--job-name", "sw",
              "--", "trainer.total_epochs=1")
    assert run.returncode == 0, run.stderr
    script = out_dir / "sw.sbatch"
    assert "#SBATCH --array=0-3" in script.read_text()
    record = tmp_path / "argv.jsonl"
    env = {key: value for key, value in os.environ.items() if key != "RAY_TMPDIR"}
    for index in (3, 0):
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                              env={**env, "SLURM_ARRAY_TASK_ID": str(index), "RECORD": str(record),
                                   "SLURM_ARRAY_JOB_ID": "9", "RAY_ADDRESS": "10.0.0.1:6379"})
        assert done.returncode == 0, done.stderr
        assert f"[array index {index}/4]" in done.stdout
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen == [[["recipe=demo", "trainer.total_epochs=1", "lr=2e-6", "n=8"], None, "/tmp/ray_9_3"],
                    [["recipe=demo", "trainer.total_epochs=1", "lr=1e-6", "n=4"], None, "/tmp/ray_9_0"]]


def test_train_sweep_names_runs_and_pins_single_node(tmp_path: Path) -> None:
    run = cli("render", "sweep", "--recipe", "humaneval", "--grid", "algorithm.kl_ctrl.kl_coef=0,0.01",
              "--cpus-per-task", "12", "--gpus-per-node", "8", "--job-name", "kl", "--out-dir", str(tmp_path),
              "--dry-run", "--", MODEL)
    assert run.returncode == 0, run.stderr
    bash_syntax_ok(run.stdout)
    assert "[1] algorithm.kl_ctrl.kl_coef=0.01:" in run.stderr
    assert (f"trainer.nnodes=1 trainer.n_gpus_per_node=8 ray_kwargs.ray_init.num_cpus=12 {MODEL} "
            "algorithm.kl_ctrl.kl_coef=0.01 trainer.experiment_name=kl-001 "
            f"lockstep.run_dir={tmp_path}/kl-001"
            ) in run.stderr  # runs kept apart
    own_dirs = cli("render", "sweep", "--recipe", "humaneval", "--grid", "lockstep.run_dir=runs/a,runs/b",
                   "--dry-run", "--", MODEL)
    assert own_dirs.returncode == 0 and (
        "lockstep.run_dir=runs/b trainer.experiment_name=lockstep-sweep-001\n" in own_dirs.stderr)


def test_submit_calls_sbatch_and_explains_when_it_is_missing(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text('#!/bin/bash\necho "$@" > "$(dirname "$0")/args"\n'
                                     'echo "Submitted batch job 42"\n')
    (fake_bin / "sbatch").chmod(0o755)
    args = ("submit", "train", "--recipe", "humaneval", "--out-dir", str(tmp_path / "job"), "--job-name", "t",
            "--", MODEL)
    bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "sbatch").exists())
    missing = cli(*args, env={"PATH": bare_path})
    assert missing.returncode == 2 and "sbatch is not on PATH" in missing.stderr
    run = cli(*args, env={"PATH": f"{fake_bin}{os.pathsep}{bare_path}"})
    assert run.returncode == 0 and "Submitted batch job 42" in run.stdout, run.stderr
    assert (fake_bin / "args").read_text().strip() == str(tmp_path / "job" / "t.sbatch")
    dry = cli(*args[:-2], "--dry-run", *args[-2:], env={"PATH": bare_path})
    assert dry.returncode == 0 and "would write" in dry.stderr and "run: sbatch" in dry.stderr


FAKE_SLURM = {
    # scontrol show hostnames LIST -> the fake allocation's node names
    "scontrol": '#!/bin/bash\nprintf "%s\\n" $FAKE_NODES\n',
    # srun [options] -w NODE COMMAND...: log "NODE<TAB>options<TAB>command", then run COMMAND here
    "srun": ('#!/bin/bash\nnode=""; opts=()\n'
             'while [[ $# -gt 0 && $1 == -* ]]; do\n'
             '  if [[ $1 == -w ]]; then node=$2; shift 2; else opts+=("$1"); shift; fi\n'
             'done\n'
             'printf "%s\\t%s\\t%s\\n" "$node" "${opts[*]}" "$*" >> "$FAKE_LOG"\n'
             'exec "$@"\n'),
    # ray start ... --block: stays up until the job kills it; ray status: a line per started node (or
    # $FAKE_ALIVE)
    "ray": ('#!/bin/bash\nif [[ $1 == start ]]; then echo $$ >> "$FAKE_LOG.pids"; exec sleep 300; fi\n'
            'echo "Active:"; for ((i = 0; i < ${FAKE_ALIVE:-$(wc -l < "$FAKE_LOG.pids")}; i++)); do\n'
            '  echo " 1 node_$i"; done\necho "Idle:"; echo " (no idle nodes)"\n'),
}


def run_train_script_with_fake_slurm(tmp_path: Path, alive: int | None = None, join_timeout: int = 60
                                     ) -> tuple[subprocess.CompletedProcess, Path]:
    """Render the train job with a recording driver entry and run it under bash with srun/scontrol/ray
    stand-ins (no Slurm or multi-node Ray here): exercises the script's own orchestration logic."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, text in FAKE_SLURM.items():
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    driver = tmp_path / "driver.py"
    driver.write_text("import json, os, sys\n"
                      "token = open(os.environ['RAY_AUTH_TOKEN_PATH']).read()\n"
                      "keys = ('RAY_ADDRESS', 'RAY_AUTH_MODE', 'RAY_TMPDIR')\n"
                      "json.dump({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in keys}, "
                      "'token': token,\n"
                      "           'path': sys.path}, open(os.environ['DRIVER_OUT'], 'w'))\n")
    job = tmp_path / "job"
    render = cli("render", "train", "--recipe", "demo", "--nodes", "3", "--gpus-per-node", "2",
                 "--cpus-per-task", "6", "--entry", str(driver), "--ray-port", "6543",
                 "--ray-start-wait", "0", "--ray-join-timeout", str(join_timeout),
                 "--out-dir", str(job), "--job-name", "tr", "--", "trainer.total_epochs=1")
    assert render.returncode == 0, render.stderr
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "FAKE_NODES": "n1 n2 n3",
           "FAKE_LOG": str(tmp_path / "srun.log"), "DRIVER_OUT": str(tmp_path / "drv.json"),
           "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_ID": "77", "SLURM_CPUS_PER_TASK": "6"}
    env.pop("RAY_TMPDIR", None)
    if alive is not None:
        env["FAKE_ALIVE"] = str(alive)
    done = subprocess.run(["bash", str(job / "tr.sbatch")], capture_output=True, text=True, timeout=60,
                          env=env)
    return done, tmp_path


def test_train_script_orchestrates_ray_head_workers_and_driver_locally(tmp_path: Path) -> None:
    done, tmp = run_train_script_with_fake_slurm(tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [line.split("\t") for line in (tmp / "srun.log").read_text().splitlines()]
    host_ip = subprocess.run(["hostname", "--ip-address"], capture_output=True, text=True).stdout.split()[0]
    address = f"{host_ip}:6543"
    assert steps[0][::2] == ["n1", "hostname --ip-address"] and len(steps) == 5
    ray_steps = sorted(steps[1:4])  # started in the background: any order in the log
    assert [node for node, _, _ in ray_steps] == ["n1", "n2", "n3"]
    assert ray_steps[0][2].startswith(f"ray start --head --node-ip-address={host_ip} --port=6543 "
                                      "--num-cpus=6 --num-gpus=2")
    assert all(cmd.startswith(f"ray start --address={address} --num-cpus=6 --num-gpus=2")
               for _, _, cmd in ray_steps[1:])
    assert all(opts == "--nodes=1 --ntasks=1 --cpus-per-task=6 --gpus-per-node=2" for _, opts, _ in ray_steps)
    # one driver, on the head, after every node joined
    assert steps[4][0] == "n1" and "--overlap" in steps[4][1]
    assert steps[4][2].split()[:2] == [sys.executable, str(tmp / "driver.py")]
    driver = json.loads((tmp / "drv.json").read_text())
    assert driver["argv"] == ["recipe=demo", "trainer.nnodes=3", "trainer.n_gpus_per_node=2",
                              "trainer.total_epochs=1"]
    assert driver["env"] == {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_TMPDIR": "/tmp/ray_77"}
    assert len(driver["token"]) == 64 and int(driver["token"], 16) >= 0 and str(ROOT) in driver["path"]
    assert not (tmp / "job" / "logs" / ".ray_token_77").exists()  # removed on exit, with the Ray steps
    ray_pids = (tmp / "srun.log.pids").read_text().split()
    assert len(ray_pids) == 3 and not [pid for pid in ray_pids if process_running(int(pid))]  # killed on exit


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_train_script_fails_when_a_node_never_joins(tmp_path: Path) -> None:
    done, tmp = run_train_script_with_fake_slurm(tmp_path, alive=2, join_timeout=1)
    assert done.returncode == 1 and "error: only 2/3 Ray nodes joined within 1 s" in done.stderr
    assert "driver.py" not in (tmp / "srun.log").read_text()
