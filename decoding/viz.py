"""See the lockstep canvas fill: an animated GIF (one frame per step) and a PNG strip of a few frames.

Why: the commit order of R and A is the object we train on; watching it shows EOS floods, an answer written
before its reasoning, or a block stuck on low confidence at a glance. Each frame draws the completion canvas
of one row (R block, delimiter, A block, each starting on a new line): masked cells are grey, committed cells
show their token on the block's colour (R blue, A orange) shaded by commit order (dark = early, light =
late), cells committed at that very step get a red outline.

CLI::

    python -m decoding.viz --model DIR --prompt "Write a function ..." --out fill.gif [--strip fill.png
        --mode jacobi --r-len 18 --a-len 32 --tau-r 0.9 --tau-a 0.9 --max-fill-frac 1 --alg entropy
        --device auto]

(defaults: the demo recipe's rollout settings; for Dream-7B use longer blocks, e.g.
``--r-len 128 --a-len 256``)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from .lockstep import DEFAULT_DELIMITER
from .lockstep_trace import LockstepResult

CELL_W, CELL_H, LABEL_W, PAD = 58, 20, 44, 4
MASKED_FILL = (215, 215, 215)
DELIM_FILL = (190, 230, 190)
BLOCK_CMAPS = {"r": "Blues", "a": "Oranges"}
# short labels of the special tokens a completion is padded with (their full text does not fit a cell)
SPECIAL_LABELS = {"<|endoftext|>": "<eot>", "<|im_end|>": "<im_end>", "<|mask|>": "<mask>"}


def token_label(tokenizer, token_id: int, max_chars: int = 8) -> str:
    """Short printable text of one token (``\\n`` for newlines, ``_`` for blanks, unknown ids as ``<id>``)."""
    if tokenizer is None or not 0 <= token_id < len(tokenizer):
        return f"<{token_id}>"
    text = tokenizer.decode([token_id])
    if text in SPECIAL_LABELS:
        return SPECIAL_LABELS[text]
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    text = text if text.strip() else text.replace(" ", "_")
    text = text.encode("latin-1", "replace").decode("latin-1")  # the default bitmap font is latin-1
    return text[:max_chars] if text else f"<{token_id}>"


def _grid(result: LockstepResult, cols: int) -> list[tuple[str, int, int, int]]:
    """(block, canvas position, grid row, grid col) of every completion cell; each block starts a new line."""
    cells, line = [], 0
    for name in ("r", "delim", "a"):
        lo, hi = result.layout.span(name)
        for i, pos in enumerate(range(lo, hi)):
            cells.append((name, pos, line + i // cols, i % cols))
        if hi > lo:
            line += (hi - lo - 1) // cols + 1
    return cells


def _colour(name: str, step: int, total_steps: int) -> tuple[int, int, int]:
    if name == "delim":
        return DELIM_FILL
    # early commits darker, late ones lighter; kept within the light half of the colour map so that the black
    # token text stays readable on every cell
    shade = 0.55 - 0.4 * (step / max(total_steps - 1, 1))
    r, g, b, _ = colormaps[BLOCK_CMAPS[name]](shade)
    return int(r * 255), int(g * 255), int(b * 255)


def render_frames(result: LockstepResult, tokenizer=None, row: int = 0, cols: int = 16) -> list[Image.Image]:
    """One RGB frame per state: before step 0, then after each step (``result.steps + 1`` frames)."""
    if not 0 <= row < result.sequences.shape[0]:
        raise ValueError(f"row {row} out of range for a batch of {result.sequences.shape[0]}")
    if cols <= 0:
        raise ValueError(f"cols must be positive, got {cols}")
    cells = _grid(result, cols)
    n_lines = max((c[2] for c in cells), default=0) + 1
    width, height = LABEL_W + cols * CELL_W + PAD, n_lines * CELL_H + 2 * PAD + CELL_H
    seq = result.sequences[row].tolist()
    when = result.commit_step[row].tolist()
    labels = {pos: token_label(tokenizer, seq[pos]) for _, pos, _, _ in cells}
    font = ImageFont.load_default()
    frames = []
    for state in range(result.steps + 1):
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        draw.text((PAD, PAD), f"step {state}/{result.steps}   R blue  A orange  (darker = earlier)",
                  fill="black", font=font)
        for name, pos, line, col in cells:
            x0, y0 = LABEL_W + col * CELL_W, CELL_H + PAD + line * CELL_H
            if col == 0 and (pos == result.layout.span(name)[0]):
                draw.text((PAD, y0 + 4), {"r": "R", "a": "A", "delim": "|"}[name], fill="black", font=font)
            done = when[pos] == -1 or when[pos] < state
            fill = _colour(name, max(when[pos], 0), result.steps) if done else MASKED_FILL
            outline = (220, 30, 30) if when[pos] == state - 1 and when[pos] >= 0 else (255, 255, 255)
            draw.rectangle([x0, y0, x0 + CELL_W - 2, y0 + CELL_H - 2], fill=fill, outline=outline, width=2)
            if done:
                draw.text((x0 + 3, y0 + 4), labels[pos], fill="black", font=font)
        frames.append(img)
    return frames


def save_gif(frames: Sequence[Image.Image], path: str | Path, ms_per_frame: int = 350) -> Path:
    """Animated GIF of the frames (the last one held three times longer)."""
    if not frames:
        raise ValueError("no frames to save")
    path = Path(path)
    durations = [ms_per_frame] * (len(frames) - 1) + [ms_per_frame * 3]
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0)
    return path


def save_strip(frames: Sequence[Image.Image], path: str | Path, n: int = 6) -> Path:
    """PNG of ``n`` evenly spaced frames (first and last included) stacked top to bottom."""
    if not frames:
        raise ValueError("no frames to save")
    picks = sorted({round(i * (len(frames) - 1) / max(n - 1, 1)) for i in range(min(n, len(frames)))})
    width, height = frames[0].size
    strip = Image.new("RGB", (width, height * len(picks)), "white")
    for i, k in enumerate(picks):
        strip.paste(frames[k], (0, i * height))
    path = Path(path)
    strip.save(path)
    return path


# Defaults = the lockstep rollout of recipes/demo.yaml (the settings the demo checkpoint was trained with), so
# `python -m decoding.viz --model recipes/assets/demo_warmstart --prompt ...` shows what the demo's rollouts
# look like in a GIF small enough to read; for Dream-7B pass longer blocks (e.g. --r-len 128 --a-len 320).
VIZ_DEFAULTS = {"mode": "jacobi", "r_len": 18, "a_len": 32, "tau_r": 0.9, "tau_a": 0.9, "max_fill_frac": 1.0,
                "alg": "entropy", "delimiter": DEFAULT_DELIMITER}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .devices import DTYPE_CHOICES

    d = VIZ_DEFAULTS
    p = argparse.ArgumentParser(prog="python -m decoding.viz",
                                description="Animate the lockstep R/A canvas filling (GIF + PNG strip). "
                                            "Defaults are the demo recipe's rollout settings "
                                            "(recipes/demo.yaml).")
    p.add_argument("--model", required=True, help="Dream checkpoint directory (HF layout)")
    p.add_argument("--prompt", required=True, help="user message (wrapped in the chat template)")
    p.add_argument("--out", default="fill.gif", help="GIF path (default: %(default)s)")
    p.add_argument("--strip", default=None, help="PNG strip path (default: the GIF path with .png)")
    p.add_argument("--delimiter", default=d["delimiter"], help="text between the R and A blocks")
    p.add_argument("--mode", default=d["mode"], choices=["gauss_seidel", "jacobi"],
                   help="default: %(default)s")
    p.add_argument("--r-len", type=int, default=d["r_len"], help="default: %(default)s")
    p.add_argument("--a-len", type=int, default=d["a_len"], help="default: %(default)s")
    p.add_argument("--tau-r", type=float, default=d["tau_r"])
    p.add_argument("--tau-a", type=float, default=d["tau_a"])
    p.add_argument("--max-fill-frac", type=float, default=d["max_fill_frac"])
    p.add_argument("--alg", default=d["alg"], choices=["maskgit_plus", "topk_margin", "entropy"],
                   help="default: %(default)s")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--use-cache", action="store_true")
    p.add_argument("--cols", type=int, default=16, help="cells per line (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--reference-exact", action="store_true",
                   help="allow sampling the mask id and ids beyond the tokenizer (as the reference does)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 after writing the GIF and strip; 2 with one ``error:`` line for bad input."""
    args = _parse_args(argv)
    from .checkpoint import load_dream
    from .devices import pick_device, pick_dtype
    from .lockstep import LockstepCfg, lockstep_sample
    from .tokenizer import build_chat_prompt, encode_prompts, load_tokenizer

    try:
        cfg = LockstepCfg(mode=args.mode, r_len=args.r_len, a_len=args.a_len, tau_r=args.tau_r,
                          tau_a=args.tau_a, max_fill_frac=args.max_fill_frac, alg=args.alg,
                          temperature=args.temperature, use_cache=args.use_cache)
        if args.cols <= 0:
            raise ValueError(f"--cols must be positive, got {args.cols}")
        device = pick_device(args.device)
        model = load_dream(args.model, dtype=pick_dtype(args.dtype, device), device=device)
        tokenizer = load_tokenizer(args.model)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.device = device
    torch.manual_seed(args.seed)
    ids, mask = encode_prompts(tokenizer, build_chat_prompt(tokenizer, args.prompt))
    delimiter = tokenizer.encode(args.delimiter, add_special_tokens=False)
    result = lockstep_sample(model, ids.to(args.device), mask.to(args.device), cfg, delimiter_ids=delimiter,
                             valid_vocab_size=None if args.reference_exact else len(tokenizer), progress=True)
    frames = render_frames(result, tokenizer, cols=args.cols)
    gif = save_gif(frames, args.out)
    strip = save_strip(frames, args.strip or Path(args.out).with_suffix(".png"))
    reasoning, answer = result.texts(tokenizer)
    print(f"R: {reasoning[0]!r}\nA: {answer[0]!r}")
    print(" ".join(f"{k}={v:.3g}" for k, v in result.metrics().items()))
    print(f"wrote {gif} ({len(frames)} frames) and {strip}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
