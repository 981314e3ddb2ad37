r"""Render and submit the Slurm jobs of Lockstep; run one index of an array job.

Usage (from the project root)::

    python -m launch.slurm.cli render train --recipe humaneval --nodes 4 --gpus-per-node 8 \
        -- trainer.total_epochs=1
    python -m launch.slurm.cli render eval-array --run-dir RUN --recipe eval/humaneval --dry-run
    python -m launch.slurm.cli submit sweep --recipe humaneval --grid actor_rollout_ref.rollout.n=4,8
    python -m launch.slurm.cli run-index MANIFEST [--index I] [--print]     # what each array task runs

``render`` writes ``<out-dir>/<job-name>.sbatch`` (+ ``.manifest.json`` for arrays, + ``logs/``); with
``--dry-run`` it prints the script to stdout (and the per-index commands to stderr) and writes nothing.
``submit`` renders, writes and calls ``sbatch``; ``submit --dry-run`` prints what it would submit. Hydra
overrides for the job go after the options (``-- key=value ...``) and are passed verbatim to every command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from evals.results import find_checkpoints, run_root
from launch.slurm.render import (
    Rendered,
    RenderError,
    SlurmResources,
    array_values,
    expand_grid,
    fill_template,
    make_manifest,
    quote_command,
    read_override_sets,
    select_command,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRIES = {"train": "launch/train_grpo.py", "eval": "launch/eval_checkpoint.py"}
RUN_DIR_KEY = "lockstep.run_dir="  # where a training recipe puts data, checkpoints and W&B files


def add_common(parser: argparse.ArgumentParser, gpus_default: int) -> None:
    parser.add_argument("--job-name", default=None, help="Slurm job name (default: lockstep-<kind>)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the script, manifest and logs/ go")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--cpus-per-task", type=int, default=16)
    parser.add_argument("--gpus-per-node", type=int, default=gpus_default)
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--mem", help="e.g. 256G (default: the partition's)")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="extra sbatch option, repeatable (e.g. --sbatch=--constraint=h100)")
    parser.add_argument("--setup", default="",
                        help="shell line run before the job (module load / venv activate)")
    parser.add_argument("--python", default=sys.executable, help="interpreter on the compute nodes")
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT, help="project checkout on the cluster")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the script instead of writing/submitting")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.slurm.cli", description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    for action in ("render", "submit"):
        kinds = actions.add_parser(action, help=f"{action} a job").add_subparsers(dest="kind", required=True)
        train = kinds.add_parser("train", help="multi-node GRPO training (Ray head + workers)")
        add_common(train, gpus_default=8)
        train.add_argument("--recipe", required=True, help="training recipe name under recipes/")
        train.add_argument("--nodes", type=int, default=2)
        train.add_argument("--entry", default=ENTRIES["train"], help="training entry script")
        train.add_argument("--ray-port", type=int, default=6379)
        train.add_argument("--ray-join-timeout", type=int, default=300, help="seconds to wait for all nodes")
        train.add_argument("--ray-start-wait", type=int, default=10,
                           help="seconds between head and worker starts")
        evals = kinds.add_parser("eval-array", help="evaluate every checkpoint of a run directory")
        add_common(evals, gpus_default=1)
        evals.add_argument("--run-dir", type=Path, required=True, help="directory with global_step_N dirs")
        evals.add_argument("--recipe", default="eval/humaneval", help="eval recipe (eval/humaneval, ...)")
        evals.add_argument("--base-model", help="base Dream dir for adapter checkpoints")
        evals.add_argument("--include-base", action="store_true", help="also evaluate --base-model as step 0")
        evals.add_argument("--max-parallel", type=int, default=None, help="array throttle (%%N)")
        sweep = kinds.add_parser("sweep", help="array job over recipe overrides")
        add_common(sweep, gpus_default=8)
        sweep.add_argument("--recipe", required=True)
        sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                           help="swept key, repeatable; the array is the cartesian product")
        sweep.add_argument("--overrides-file", type=Path,
                           help="one override set per line (instead of --grid)")
        sweep.add_argument("--entry", default="train", help="train | eval | path of an entry script")
        sweep.add_argument("--name-key", default=None,
                           help="override that names each run (default trainer.experiment_name for train)")
        sweep.add_argument("--max-parallel", type=int, default=None)
    run_index = actions.add_parser("run-index", help="run the command of one array index (inside the job)")
    run_index.add_argument("manifest", type=Path)
    run_index.add_argument("--index", type=int, default=None, help="default: $SLURM_ARRAY_TASK_ID")
    run_index.add_argument("--print", action="store_true", help="print the command instead of running it")
    return parser


def resources(args: argparse.Namespace) -> SlurmResources:
    return SlurmResources(
        job_name=args.job_name or f"lockstep-{args.kind}", time=args.time, cpus_per_task=args.cpus_per_task,
        gpus_per_node=args.gpus_per_node, partition=args.partition, account=args.account, qos=args.qos,
        mem=args.mem, extra=list(args.sbatch),
    )


def out_dir_for(args: argparse.Namespace, res: SlurmResources, default: Path) -> Path:
    return (args.out_dir or default).resolve()


def build_train(args: argparse.Namespace) -> Rendered:
    """Multi-node training script: driver command with nnodes/GPUs filled from the allocation request."""
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise RenderError("training needs --nodes >= 1 and --gpus-per-node >= 1")
    res = resources(args)
    out_dir = out_dir_for(args, res, args.workdir / "runs" / "slurm" / res.job_name)
    command = [args.python, args.entry, f"recipe={args.recipe}", f"trainer.nnodes={args.nodes}",
               f"trainer.n_gpus_per_node={args.gpus_per_node}", *args.overrides]
    script = fill_template("train.sbatch", {
        "job_name": res.job_name, "nodes": args.nodes, "cpus_per_task": res.cpus_per_task,
        "gpus_per_node": res.gpus_per_node, "time": res.time, "log_dir": out_dir / "logs",
        "sbatch_options": res.directives(), "workdir": shlex.quote(str(args.workdir)), "setup": args.setup,
        "ray_port": args.ray_port, "ray_start_wait": args.ray_start_wait,
        "ray_join_timeout": args.ray_join_timeout,
        "command": quote_command(command),
    })
    return Rendered("train", script, out_dir / f"{res.job_name}.sbatch", command=command)


def build_eval_array(args: argparse.Namespace) -> Rendered:
    """One array index per checkpoint of ``--run-dir`` (sorted by step), all writing
    ``<run>/eval_results``."""
    res = resources(args)
    checkpoints = find_checkpoints(args.run_dir.resolve())
    run_dir = run_root(checkpoints[0])  # <run>, also when --run-dir is <run>/checkpoints
    results_dir = run_dir / "eval_results"
    common = [f"recipe={args.recipe}", f"results_dir={results_dir}"]
    if args.base_model:  # absolute when it exists here: array tasks run from --workdir
        base = Path(args.base_model).expanduser()
        args.base_model = str(base.resolve()) if base.exists() else args.base_model
        common.append(f"base_model={args.base_model}")
    entry = str(args.workdir / ENTRIES["eval"])
    commands = [[args.python, entry, *common, f"checkpoint={c}", *args.overrides] for c in checkpoints]
    labels = [c.name for c in checkpoints]
    if args.include_base:
        if not args.base_model:
            raise RenderError("--include-base needs --base-model")
        # the base model's directory may be read-only (shared model store): its outputs go into the run
        commands.insert(0, [args.python, entry, *common, f"checkpoint={args.base_model}", "step=0",
                            f"output_root={run_dir / 'eval_base'}", *args.overrides])
        labels.insert(0, "base")
    out_dir = out_dir_for(args, res, run_dir / "slurm")
    manifest_path = out_dir / f"{res.job_name}.manifest.json"
    values = array_values("eval-array", res, manifest_path, len(commands), args.max_parallel, args.workdir,
                          args.setup, args.python, f"Evaluate {len(commands)} checkpoint(s) of {run_dir}")
    return Rendered("eval-array", fill_template("array.sbatch", values), out_dir / f"{res.job_name}.sbatch",
                    make_manifest("eval-array", args.workdir, commands, labels), manifest_path)


def build_sweep(args: argparse.Namespace) -> Rendered:
    """One array index per override set (grid product or lines of --overrides-file); each run named apart.

    Training runs also get their own ``lockstep.run_dir`` (``<out-dir>/<job>-<index>``): the recipes put data,
    checkpoints and W&B files there, so runs sharing the recipe's default directory would overwrite each
    other.
    """
    if bool(args.grid) == bool(args.overrides_file):
        raise RenderError("give either --grid (repeatable) or --overrides-file")
    res = resources(args)
    sets = expand_grid(args.grid) if args.grid else read_override_sets(args.overrides_file)
    entry = ENTRIES.get(args.entry, args.entry)
    name_key = args.name_key if args.name_key is not None else (
        "trainer.experiment_name" if args.entry == "train" else "")
    single_node = []
    if args.entry == "train":  # one node per index: verl starts a local Ray with a fixed CPU count
        single_node = ["trainer.nnodes=1", f"trainer.n_gpus_per_node={args.gpus_per_node}",
                       f"ray_kwargs.ray_init.num_cpus={args.cpus_per_task}"]
    out_dir = out_dir_for(args, res, args.workdir / "runs" / "slurm" / res.job_name)
    commands, labels = [], []
    for idx, overrides in enumerate(sets):
        label = f"{res.job_name}-{idx:03d}"
        naming = [f"{name_key}={label}"] if name_key else []
        if args.entry == "train" and not any(o.startswith(RUN_DIR_KEY)
                                             for o in [*args.overrides, *overrides]):
            naming.append(f"{RUN_DIR_KEY}{out_dir / label}")
        commands.append([args.python, str(args.workdir / entry), f"recipe={args.recipe}", *single_node,
                         *args.overrides, *overrides, *naming])
        labels.append(" ".join(overrides))
    manifest_path = out_dir / f"{res.job_name}.manifest.json"
    values = array_values("sweep", res, manifest_path, len(commands), args.max_parallel, args.workdir,
                          args.setup, args.python,
                          f"Sweep of {len(commands)} override set(s) of {args.recipe}")
    return Rendered("sweep", fill_template("array.sbatch", values), out_dir / f"{res.job_name}.sbatch",
                    make_manifest("sweep", args.workdir, commands, labels), manifest_path)


BUILDERS = {"train": build_train, "eval-array": build_eval_array, "sweep": build_sweep}


def check_command(command: list[str], label: str = "") -> None:
    """RenderError unless the arguments of one job command compose and validate for its entry point.

    Why: a job that dies at once on a typo'd key or recipe name is found out only after it waited in the
    queue; the same Hydra composition and checks the entry point runs first are run here, before anything is
    rendered. Files (model folder, data) are not checked: they may exist only on the cluster. A custom
    ``--entry`` script is not ours to check.
    """
    script, args = Path(command[1]), command[2:]
    prefix = f"{label}: " if label else ""
    if script.name == Path(ENTRIES["train"]).name:
        from launch.recipes import RecipeError
        from launch.train_grpo import compose_recipe, split_recipe
        from rl.verl.config import validate_recipe

        try:
            recipe, overrides = split_recipe(args)
            validate_recipe(compose_recipe(recipe, overrides), check_files=False)
        except RecipeError as err:
            raise RenderError(f"{prefix}{err}") from None
    elif script.name == Path(ENTRIES["eval"]).name:
        from launch.eval_checkpoint import compose_config

        try:
            compose_config(args, local=False)
        except ValueError as err:
            raise RenderError(f"{prefix}{err}") from None


def check_job(job: Rendered) -> None:
    """:func:`check_command` for the job's driver command or every array index (each distinct argument
    set)."""
    if job.manifest is not None:
        for index, (command, label) in enumerate(zip(job.manifest["commands"], job.manifest["labels"])):
            check_command(command, f"array index {index} ({label})")
    elif job.command is not None:
        check_command(job.command)


def print_dry_run(job: Rendered, submit: bool) -> None:
    """Script to stdout; where it would go and what each index runs to stderr."""
    sys.stdout.write(job.script)
    note = f"# dry run: would write {job.script_path}"
    if submit:
        note += f" and run: sbatch {job.script_path}"
    print(note, file=sys.stderr)
    if job.manifest is not None:
        for idx, (cmd, label) in enumerate(zip(job.manifest["commands"], job.manifest["labels"])):
            print(f"# [{idx}] {label}: {quote_command(cmd)}", file=sys.stderr)


def submit(job: Rendered) -> int:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        print(f"error: sbatch is not on PATH; the script is at {job.script_path} "
              "(submit it from a login node)",
              file=sys.stderr)
        return 2
    result = subprocess.run([sbatch, str(job.script_path)], capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def run_index(args: argparse.Namespace) -> int:
    """Pick the manifest entry of this array task and exec it (``--print``: print it instead)."""
    if not args.manifest.is_file():
        raise RenderError(f"manifest {args.manifest} does not exist")
    manifest = json.loads(args.manifest.read_text())
    index = args.index
    if index is None:
        raw = os.environ.get("SLURM_ARRAY_TASK_ID")
        if raw is None or not raw.strip().isdigit():
            raise RenderError("no array index: pass --index or run inside a Slurm array task")
        index = int(raw)
    command = select_command(manifest, index)
    label = manifest.get("labels", [""] * (index + 1))[index]
    if args.print:
        print(quote_command(command))
        return 0
    print(f"[array index {index}/{len(manifest['commands'])}] {label}: {quote_command(command)}", flush=True)
    os.chdir(manifest.get("workdir", "."))
    os.execvp(command[0], command)
    return 1  # unreachable: execvp replaces the process or raises


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "run-index":
            return run_index(args)
        job = BUILDERS[args.kind](args)
        check_job(job)
    except (RenderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_dry_run(job, submit=args.action == "submit")
        return 0
    job.write()
    print(f"wrote {job.script_path}" + (f" and {job.manifest_path}" if job.manifest_path else ""))
    return submit(job) if args.action == "submit" else 0


if __name__ == "__main__":
    sys.exit(main())
