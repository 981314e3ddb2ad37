"""Rendering of the Slurm sbatch templates and of array-job manifests.

Why: a cluster user needs three jobs — (a) multi-node GRPO training (Ray head + workers, one verl driver on
the head), (b) an array job that evaluates every checkpoint of a run directory, (c) an array job that sweeps
recipe overrides. The scripts are plain sbatch files rendered from ``templates/*.sbatch`` with ``{{name}}``
fields (not ``$name``: the scripts are bash and use ``${...}`` themselves).

Array jobs never compute "what does index i do" in bash: at render time the full list of commands is written
to a JSON *manifest* next to the script; every array task runs
``python -m launch.slurm.cli run-index MANIFEST``, which picks entry ``$SLURM_ARRAY_TASK_ID``. That logic is
plain Python and runs identically on a laptop.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
FIELD = re.compile(r"\{\{(\w+)\}\}")


class RenderError(ValueError):
    """A user mistake in the render request (bad grid, unknown field, no checkpoints...)."""


@dataclass
class SlurmResources:
    """Cluster-side resources shared by all job kinds; ``None`` options are left out of the script."""

    job_name: str
    time: str = "24:00:00"
    cpus_per_task: int = 16
    gpus_per_node: int = 8
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    extra: list[str] = field(default_factory=list)  # raw sbatch options, e.g. "--constraint=h100"

    def directives(self) -> str:
        """The optional ``#SBATCH`` lines (partition, account, qos, mem, GPUs, extras)."""
        options = []
        for name in ("partition", "account", "qos", "mem"):
            value = getattr(self, name)
            if value:
                options.append(f"--{name}={value}")
        if self.gpus_per_node > 0:
            options.append(f"--gpus-per-node={self.gpus_per_node}")
        for raw in self.extra:
            options.append(raw if raw.startswith("-") else f"--{raw}")
        return "\n".join(f"#SBATCH {opt}" for opt in options)


@dataclass
class Rendered:
    """A rendered job: the script text and, for arrays, the manifest that goes next to it."""

    kind: str
    script: str
    script_path: Path
    manifest: dict[str, Any] | None = None
    manifest_path: Path | None = None
    command: list[str] | None = None  # the driver command of a single (non-array) job

    def write(self) -> None:
        """Write the script (executable), the manifest and the log directory Slurm needs to exist."""
        self.script_path.parent.mkdir(parents=True, exist_ok=True)
        (self.script_path.parent / "logs").mkdir(exist_ok=True)
        if self.manifest is not None and self.manifest_path is not None:
            self.manifest_path.write_text(json.dumps(self.manifest, indent=2) + "\n")
        self.script_path.write_text(self.script)
        self.script_path.chmod(0o755)


def fill_template(name: str, values: dict[str, Any]) -> str:
    """Substitute every ``{{field}}`` of template ``name``; a missing or unused value is an error (typo
    guard)."""
    text = (TEMPLATE_DIR / name).read_text()
    wanted = set(FIELD.findall(text))
    missing = wanted - values.keys()
    unused = values.keys() - wanted
    if missing or unused:
        raise RenderError(f"template {name}: missing fields {sorted(missing)}, unused fields "
                          f"{sorted(unused)}")
    return FIELD.sub(lambda m: str(values[m.group(1)]), text)


def quote_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def split_values(spec: str) -> list[str]:
    """Split ``a,b,[1,2],'x,y'`` on top-level commas (brackets and quotes keep theirs)."""
    values, depth, quote, current = [], 0, "", []
    for char in spec:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    if quote or depth != 0:
        raise RenderError(f"unbalanced brackets or quotes in grid values {spec!r}")
    return values


def expand_grid(grid: list[str]) -> list[list[str]]:
    """Cartesian product of ``key=v1,v2`` specs, in order (last key varies fastest).

    >>> expand_grid(["a=1,2", "b=x"])
    [['a=1', 'b=x'], ['a=2', 'b=x']]
    """
    axes: list[list[str]] = []
    keys: list[str] = []
    for spec in grid:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise RenderError(f"grid spec {spec!r} must look like key=value1,value2")
        if key in keys:
            raise RenderError(f"grid key {key!r} given twice")
        keys.append(key)
        axes.append([f"{key}={v}" for v in split_values(values)])
    return [list(combo) for combo in itertools.product(*axes)]


def read_override_sets(path: Path) -> list[list[str]]:
    """One override set per non-empty, non-comment line of ``path`` (shell-style quoting)."""
    if not path.is_file():
        raise RenderError(f"overrides file {path} does not exist")
    sets = [shlex.split(line) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    if not sets:
        raise RenderError(f"overrides file {path} holds no override lines")
    return sets


def array_values(kind: str, res: SlurmResources, manifest_path: Path, n: int, max_parallel: int | None,
                 workdir: Path, setup: str, python: str, description: str) -> dict[str, Any]:
    """Field values of ``array.sbatch`` for an array of ``n`` commands."""
    if n < 1:
        raise RenderError("an array job needs at least one command")
    return {
        "description": description,
        "kind": kind,
        "manifest": shlex.quote(str(manifest_path)),
        "job_name": res.job_name,
        "last_index": n - 1,
        "array_throttle": f"%{max_parallel}" if max_parallel else "",
        "cpus_per_task": res.cpus_per_task,
        "time": res.time,
        "log_dir": manifest_path.parent / "logs",
        "sbatch_options": res.directives(),
        "workdir": shlex.quote(str(workdir)),
        "setup": setup,
        "python": shlex.quote(python),
    }


def make_manifest(kind: str, workdir: Path, commands: list[list[str]], labels: list[str]) -> dict[str, Any]:
    return {"kind": kind, "workdir": str(workdir), "commands": commands, "labels": labels}


def select_command(manifest: dict[str, Any], index: int) -> list[str]:
    """Command of array index ``index``; RenderError when out of range (e.g. a manifest re-rendered
    smaller)."""
    commands = manifest.get("commands")
    if not isinstance(commands, list) or not commands:
        raise RenderError("manifest holds no commands")
    if not 0 <= index < len(commands):
        raise RenderError(f"array index {index} is out of range: the manifest has {len(commands)} commands")
    return [str(a) for a in commands[index]]
