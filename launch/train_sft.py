"""Masked-diffusion SFT of a Dream model: ``python launch/train_sft.py recipe=demo_sft [key=value ...]``.

Why: the CPU demo's GRPO run starts from a warm start whose held-out pass rate is low but non-zero; this
command produces it (and regenerates the committed one with ``export_dir=recipes/assets/demo_warmstart``).
It composes ``recipes/<recipe>.yaml`` with Hydra, validates it, builds (or loads) the model, renders the
synthetic tasks in the HumanEval recipe's R/A format, trains with :func:`rl.sft.train_sft`, evaluates the
held-out split (lockstep decoding + sandboxed rewards, and a deterministic ELBO) before, during and after
training, logs to W&B (offline by default) and saves the checkpoint in the HF Dream layout.
Exit codes: 0 success, 2 bad recipe/config (message on stderr, no stack trace).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = PROJECT_ROOT / "recipes"

from launch.recipes import RecipeError  # noqa: E402

logger = logging.getLogger("train_sft")


HELP = """usage: python launch/train_sft.py [recipe=<{recipes}>] [key=value ...]

Masked-diffusion SFT of a Dream model (the CPU demo's warm start). The recipe (recipes/<name>.yaml, default
demo_sft) is composed by Hydra with the key=value overrides, validated, then run: held-out evaluation before,
during and after training, W&B offline, the final checkpoint in <run_dir>/checkpoint (HF Dream layout).
GRPO recipes ({grpo}) run with launch/train_grpo.py instead.

Key overrides (all keys: the recipe file):
  run_dir=DIR                 outputs: checkpoint/, sft_metrics.json, wandb/
  export_dir=DIR              also write the final checkpoint here (e.g. recipes/assets/demo_warmstart)
  model.path=DIR              start from this Dream checkpoint (default: a random tiny Dream, model.tiny.*)
  train.steps=N               length of the LR schedule;  train.stop_after=N  end earlier on it
  train.batch_size=N  train.lr=X  seed=N  threads=N
  tasks.n_train=N  tasks.bug_rate=X  tasks.canvas.r_len=N  tasks.canvas.a_len=N
  eval.every=N                held-out evaluation interval (steps)
  wandb.mode=offline|online|disabled

Exit status: 0 done, 2 bad recipe, override or model (one line on stderr, nothing written).
"""


def usage() -> str:
    from launch.recipes import recipe_names

    return HELP.format(recipes="|".join(recipe_names("sft")), grpo=", ".join(recipe_names("grpo")))


def compose_recipe(argv: list[str]) -> Any:
    """Hydra-compose ``recipes/<recipe>.yaml`` (``recipe=`` argument, default ``demo_sft``) with overrides.

    ``-h``/``--help`` prints the usage and exits 0; a GRPO/eval recipe or an unknown one is a RecipeError.
    """
    from launch.recipes import check_recipe, compose

    if any(arg in ("-h", "--help") for arg in argv):
        print(usage())
        raise SystemExit(0)
    recipe = "demo_sft"
    overrides = []
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif "=" not in arg and not arg.startswith("~"):
            raise RecipeError(f"arguments are recipe=<name> and key=value overrides, got {arg!r} "
                              "(see --help)")
        else:
            overrides.append(arg)
    check_recipe(recipe, "sft")
    return compose(recipe, overrides)


def build_settings(cfg: Any) -> tuple[Any, Any, Any]:
    """(SFTConfig, CanvasSpec, DemoEvalConfig) from the recipe; RecipeError for unknown keys or bad values."""
    from omegaconf import OmegaConf

    from cpu_demo.evaluate import DemoEvalConfig
    from cpu_demo.tasks import CanvasSpec
    from rl.sft import SFTConfig

    required = {"run_dir", "seed", "model", "tasks", "train", "eval", "wandb"}
    missing = sorted(required - set(cfg.keys()))
    if missing:
        raise RecipeError(f"recipe lacks required sections {missing}")
    try:
        train = SFTConfig(seed=int(cfg.seed), eval_every=int(cfg.eval.every),
                          **OmegaConf.to_container(cfg.train))
        train.validate()
        canvas = CanvasSpec(**OmegaConf.to_container(cfg.tasks.canvas))
        ev = cfg.eval
        extra = OmegaConf.to_container(ev.lockstep, resolve=True) if ev.get("lockstep") else {}
        evaluation = DemoEvalConfig(canvas=canvas, batch_size=int(ev.batch_size), mode=str(ev.mode),
                                    tau=float(ev.tau), alg=str(ev.alg), temperature=float(ev.temperature),
                                    seed=int(cfg.seed), lockstep=dict(extra))
        evaluation.lockstep_cfg()  # validates mode/alg/tau
    except (TypeError, ValueError) as error:
        raise RecipeError(f"invalid recipe: {error}") from None
    bug_rate = cfg.tasks.get("bug_rate", 0.0)
    if not isinstance(bug_rate, (int, float)) or not 0.0 <= float(bug_rate) <= 1.0:
        raise RecipeError(f"tasks.bug_rate must be a number in [0, 1], got {bug_rate!r}")
    if cfg.wandb.mode not in ("offline", "online", "disabled"):
        raise RecipeError(f"wandb.mode must be offline, online or disabled, got {cfg.wandb.mode!r}")
    return train, canvas, evaluation


def load_or_make_model(cfg: Any, run_dir: Path) -> tuple[Any, Any, Path]:
    """(model, tokenizer, source dir): ``model.path`` if set, else a fresh random tiny Dream under run_dir."""
    import torch

    from decoding.checkpoint import load_dream
    from decoding.tiny import make_tiny_dream
    from decoding.tokenizer import load_tokenizer

    if cfg.model.path:
        source = Path(str(cfg.model.path))
        if not (source / "config.json").is_file():
            raise RecipeError(f"model.path={source} is not a Dream checkpoint directory (no config.json)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        source = make_tiny_dream(run_dir / "init", seed=int(cfg.seed), shard=False, **dict(cfg.model.tiny))
    try:  # SFT runs on CPU in fp32 (the recipe's purpose: the demo's warm start)
        from decoding.integrity import check_dream_weights

        check_dream_weights(source)  # a truncated file is named (headers only) before the load
        model = load_dream(source, dtype=torch.float32, device="cpu")
        tokenizer = load_tokenizer(source)
    except (ValueError, OSError) as error:  # truncated weights, a config without weights, a broken tokenizer
        raise RecipeError(f"model.path: {error}") from None
    return model, tokenizer, source


def save_checkpoint(model: Any, tokenizer: Any, source: Path, out_dir: Path, info: dict[str, Any]) -> None:
    """Write the model (safetensors), tokenizer, generation config and ``sft_info.json`` to ``out_dir``."""
    from decoding.checkpoint import sync_remote_code

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if (source / "generation_config.json").is_file():
        shutil.copy(source / "generation_config.json", out_dir / "generation_config.json")
    sync_remote_code(out_dir, source)  # a valid hub-style folder: auto_map only with the user's code files
    (out_dir / "sft_info.json").write_text(json.dumps(info, indent=2) + "\n")


def run(cfg: Any) -> dict[str, Any]:
    """Train as the recipe says; return the summary written to ``sft_metrics.json``."""
    import torch
    import wandb
    from omegaconf import OmegaConf

    from cpu_demo.evaluate import evaluate_pass_rate
    from cpu_demo.tasks import DemoTaskSpec, buggy_demonstrations, sft_example
    from rl.sft import collate_left_padded, elbo_nll, train_sft

    train_cfg, canvas, eval_cfg = build_settings(cfg)
    if int(cfg.get("threads", 0) or 0) > 0:
        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(str(cfg.run_dir))
    try:  # every check before anything is written
        splits = DemoTaskSpec.from_dict({
            "seed": int(cfg.tasks.seed), "n_train": int(cfg.tasks.n_train),
            "n_heldout": int(cfg.tasks.n_heldout),
            "operations": list(cfg.tasks.operations) if cfg.tasks.operations else None,
        }).generate()
        buggy = buggy_demonstrations(len(splits.train), float(cfg.tasks.get("bug_rate", 0.0)),
                                     int(cfg.tasks.seed))
    except (TypeError, ValueError) as error:
        raise RecipeError(f"invalid tasks settings: {error}") from None
    # a given model.path is loaded before any write
    model, tokenizer, source = load_or_make_model(cfg, run_dir)
    try:
        train_examples = [sft_example(tokenizer, t, canvas, b) for t, b in zip(splits.train, buggy)]
        held_batch = collate_left_padded([sft_example(tokenizer, t, canvas) for t in splits.heldout],
                                         tokenizer.pad_token_id)
    except ValueError as error:
        raise RecipeError(f"invalid tasks settings: {error}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    mask_id = tokenizer.mask_token_id

    def evaluate(step: int) -> dict[str, float]:
        nll = elbo_nll(model, held_batch.input_ids, held_batch.completion_mask, mask_id,
                       held_batch.attention_mask,
                       held_batch.position_ids, n_rates=int(cfg.eval.nll_rates), seed=int(cfg.seed))
        result = evaluate_pass_rate(model, tokenizer, splits.heldout, eval_cfg)
        logger.info("step %d: held-out pass rate %.3f, ELBO NLL %.4f", step, result.pass_rate, nll)
        return {"heldout/nll": nll, **result.metrics()}

    os.environ.setdefault("WANDB_SILENT", "true")
    run_log = wandb.init(project=str(cfg.wandb.project), name=str(cfg.wandb.name), mode=str(cfg.wandb.mode),
                         dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True))
    start = time.perf_counter()
    try:
        history = train_sft(model, train_examples, train_cfg, tokenizer.pad_token_id, mask_id,
                            evaluate=evaluate,
                            log=lambda record, step: run_log.log(record, step=step))
    finally:
        run_log.finish()
    evals = [h for h in history if "heldout/pass_rate" in h]
    summary = {
        "recipe": OmegaConf.to_container(cfg, resolve=True),
        "wall_s": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "n_train": len(splits.train), "n_heldout": len(splits.heldout),
        "evals": [{k: h[k] for k in ("step", "heldout/pass_rate", "heldout/nll", "heldout/well_formed")}
                  for h in evals],
        "final_pass_rate": evals[-1]["heldout/pass_rate"],
        "history": history,
    }
    info = {k: summary[k] for k in ("wall_s", "n_train", "n_heldout", "evals", "final_pass_rate")}
    info["command"] = "python launch/train_sft.py " + " ".join(sys.argv[1:])
    save_checkpoint(model, tokenizer, source, run_dir / "checkpoint", info)
    if cfg.get("export_dir"):
        save_checkpoint(model, tokenizer, source, Path(str(cfg.export_dir)), info)
    (run_dir / "sft_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = compose_recipe(list(sys.argv[1:] if argv is None else argv))
        summary = run(cfg)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    steps = " -> ".join(f"{e['heldout/pass_rate']:.2f}@{e['step']}" for e in summary["evals"])
    print(f"held-out pass rate {steps}; checkpoint in {Path(str(cfg.run_dir)) / 'checkpoint'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
