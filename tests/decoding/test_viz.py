"""Canvas-fill visualisation: frames follow the commit trace; the CLI writes a GIF and a PNG strip."""

from __future__ import annotations

import pytest
from PIL import Image

from decoding.lockstep import LockstepCfg, lockstep_sample
from decoding.tokenizer import build_chat_prompt, encode_prompts
from decoding.viz import (
    CELL_H,
    CELL_W,
    LABEL_W,
    MASKED_FILL,
    PAD,
    main,
    render_frames,
    save_gif,
    save_strip,
    token_label,
)


@pytest.fixture(scope="module")
def result(tiny_model, tiny_tok):
    ids, mask = encode_prompts(tiny_tok, build_chat_prompt(tiny_tok, "Add two numbers."))
    cfg = LockstepCfg(mode="jacobi", r_len=3, a_len=5, tau_r=0.02, tau_a=0.02, max_fill_frac=0.5,
                      eos_guard=False)
    return lockstep_sample(tiny_model, ids, mask, cfg, delimiter_ids=[12])


def cell_centre(line: int, col: int) -> tuple[int, int]:
    return LABEL_W + col * CELL_W + CELL_W // 2, CELL_H + PAD + line * CELL_H + CELL_H - 4


def test_frames_follow_the_commit_trace(result, tiny_tok) -> None:
    frames = render_frames(result, tiny_tok, cols=4)
    assert len(frames) == result.steps + 1 and len({f.size for f in frames}) == 1
    # grid with 4 columns: R (3 cells) on line 0, delimiter on line 1, A (5 cells) on lines 2-3
    r_lo = result.layout.span("r")[0]
    first_r_step = int(result.commit_step[0, r_lo])
    before = frames[first_r_step].getpixel(cell_centre(0, 0))
    after = frames[first_r_step + 1].getpixel(cell_centre(0, 0))
    assert before == MASKED_FILL and after != MASKED_FILL
    assert after[2] > after[0]  # R is drawn blue
    a_lo = result.layout.span("a")[0]
    a_colour = frames[-1].getpixel(cell_centre(2, 0))
    assert int(result.commit_step[0, a_lo]) < result.steps and a_colour[0] > a_colour[2]  # A is orange
    for frame in (frames[0], frames[-1]):
        masked = [frame.getpixel(cell_centre(line, col)) == MASKED_FILL
                  for line, col in ((0, 1), (2, 3), (3, 0))]
        assert all(masked) if frame is frames[0] else not any(masked)


def test_gif_and_strip_files(result, tiny_tok, tmp_path) -> None:
    frames = render_frames(result, tiny_tok)
    gif = save_gif(frames, tmp_path / "fill.gif")
    with Image.open(gif) as im:
        assert im.n_frames == len(frames)
    strip = save_strip(frames, tmp_path / "fill.png", n=3)
    with Image.open(strip) as im:
        assert im.size == (frames[0].size[0], 3 * frames[0].size[1])
    with pytest.raises(ValueError, match="row"):
        render_frames(result, tiny_tok, row=5)


def test_token_label_handles_odd_ids(tiny_tok) -> None:
    assert token_label(tiny_tok, 10**6) == "<1000000>"
    newline = tiny_tok.encode("\n")[0]
    assert token_label(tiny_tok, newline) == "\\n"


def test_cli_writes_gif_and_strip(tiny_dream_dir, tmp_path, capsys) -> None:
    out = tmp_path / "fill.gif"
    code = main(["--model", str(tiny_dream_dir), "--prompt", "Add two numbers.", "--out", str(out),
                 "--r-len", "3",
                 "--a-len", "4", "--tau-r", "0.02", "--tau-a", "0.02", "--mode", "jacobi", "--device", "cpu"])
    assert code == 0 and out.exists() and out.with_suffix(".png").exists()
    assert "wrote" in capsys.readouterr().out
    assert main(["--model", str(tmp_path), "--prompt", "x", "--out", str(out), "--device", "cpu"]) == 2


def test_defaults_are_the_demo_rollout_and_give_a_readable_gif_of_the_demo_checkpoint(tmp_path,
                                                                                      capsys) -> None:
    """With no decoding flags the GIF of the committed demo checkpoint shows the canvas the demo trains on
    (recipes/demo.yaml's lockstep rollout): a few frames, one short line per 16 cells, end-of-text cells
    labelled ``<eot>`` rather than a cut ``<|endoft``, token text dark on light cells."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from decoding.lockstep import DEFAULT_DELIMITER
    from decoding.viz import CELL_H, VIZ_DEFAULTS, _colour

    root = Path(__file__).resolve().parents[2]
    rollout = OmegaConf.load(root / "recipes" / "demo.yaml").actor_rollout_ref.rollout.custom.dream.options
    for key, value in VIZ_DEFAULTS.items():  # unset in the recipe: the defaults of decoding/lockstep.py
        default = DEFAULT_DELIMITER if key == "delimiter" else LockstepCfg.__dataclass_fields__[key].default
        assert (rollout.get(key) if rollout.get(key) is not None else default) == value, key
    prompt = ("Please provide a self-contained Python script that solves the following problem in a markdown "
              "code block:\n```\ndef find_score(s: str) -> int:\n    \"\"\"Return the length of s.\n    >>> "
              "find_score('tree')\n    4\n    \"\"\"\n```\n")
    out = tmp_path / "fill.gif"
    assert main(["--model", str(root / "recipes" / "assets" / "demo_warmstart"), "--prompt", prompt,
                 "--out", str(out)]) == 0
    # the warm start writes the function
    assert "A: 'def find_score(s: str) -> int:" in capsys.readouterr().out
    gif = Image.open(out)
    assert 2 <= gif.n_frames <= 40 and gif.size[1] <= 12 * CELL_H  # 18 + 6 + 32 cells: a handful of lines
    for name in ("r", "a"):
        for step in (0, 10):  # darkest (earliest) cell colour still light enough for black text
            r, g, b = _colour(name, step, 11)
            assert 0.299 * r + 0.587 * g + 0.114 * b > 110, (name, step)


def test_special_tokens_get_short_labels(tiny_tok) -> None:
    eot = tiny_tok.convert_tokens_to_ids("<|endoftext|>")
    assert token_label(tiny_tok, eot) == "<eot>"
