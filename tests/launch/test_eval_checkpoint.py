"""Checkpoint evaluation: resolution, journals, pass@k, config errors, end-to-end CPU runs and kill/resume.

The slow tests run the real entry point as a subprocess on a tiny random Dream plus random LoRA adapters
written by the GRPO trainer's exporter in its layout (``run/checkpoints/global_step_N/actor/lora_adapter``),
scoring in the real sandbox.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from evals.code import store
from evals.code.model import ModelSource, load_model, resolve_checkpoint
from evals.code.tasks import mean_pass_at_k, pass_at_k
from evals.generation import generate_texts
from launch.eval_checkpoint import main as eval_main

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "launch" / "eval_checkpoint.py"
STEPS = (1, 2)
# the plain sampler alone (the default decoder is the run's rollout, then plain:
# tests/evals/code/test_eval_decoder.py)
FAST_GEN = ["generation.sampler=plain", "generation.compare=[]", "generation.plain.max_new_tokens=16",
            "generation.plain.steps=4", "device=cpu"]


@pytest.fixture(scope="module")
def run_dir(tiny_dream_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRPO run in the trainer's exact layout: ``<run>/checkpoints/global_step_N/actor/lora_adapter``
    written by the trainer's own exporter (:func:`rl.verl.engine.export_weights`, random LoRA seeded by step),
    next to the config/tokenizer-only ``actor/huggingface`` folder verl saves in LoRA mode."""
    from peft import LoraConfig, get_peft_model

    from decoding import load_dream
    from rl.verl.engine import export_weights

    with warnings.catch_warnings():  # importing verl warns about every optional engine it lacks
        warnings.simplefilter("ignore")
        from verl.utils import fsdp_utils  # noqa: F401  (export_weights imports it)
    run = tmp_path_factory.mktemp("run")
    for step in STEPS:
        torch.manual_seed(step)
        model = load_dream(tiny_dream_dir, dtype=torch.float32)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        actor = step_dir(run, step) / "actor"
        export_weights(get_peft_model(model, lora), str(actor), str(tiny_dream_dir))
        shutil.copytree(tiny_dream_dir, actor / "huggingface",
                        ignore=shutil.ignore_patterns("*.safetensors*"))
    (run / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(STEPS[-1]))
    return run


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"global_step_{step}"


def entry(*args: str, **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRY), *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, **popen)


# ------------------------------------------------------------------------------------------------ fast tests
def test_pass_at_k_matches_hand_computed_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
    assert mean_pass_at_k({"a": [True, False], "b": [False, False]}, [1, 2, 10]) == {
        "pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_resolve_checkpoint_layouts(tiny_dream_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    full = resolve_checkpoint(tiny_dream_dir)
    assert full.model_dir == tiny_dream_dir and full.adapter_dir is None and full.step is None
    step = resolve_checkpoint(step_dir(run_dir, 2))  # the adapter, not verl's weightless actor/huggingface
    assert step.adapter_dir == step_dir(run_dir, 2) / "actor" / "lora_adapter"
    assert step.model_dir == tiny_dream_dir and step.step == 2
    assert resolve_checkpoint(step_dir(run_dir, 2) / "actor" / "lora_adapter").adapter_dir == step.adapter_dir
    assert resolve_checkpoint(step_dir(run_dir, 2), step=7).step == 7
    # the trainer's full fine-tuning layout
    full_ft = step_dir(tmp_path / "full", 6) / "actor" / "huggingface"
    shutil.copytree(tiny_dream_dir, full_ft)
    assert resolve_checkpoint(full_ft.parents[1]) == ModelSource(full_ft, None, 6)
    with pytest.raises(ValueError, match="not a directory"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no Dream model"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not a Dream checkpoint dir"):
        resolve_checkpoint(step_dir(run_dir, 1), base_model=tmp_path)


def test_journal_repairs_torn_tail_and_settings_guard(tmp_path: Path) -> None:
    journal = store.Journal(tmp_path / "scores.jsonl")
    journal.append([{"task_id": "T/0", "sample_idx": 0}, {"task_id": "T/0", "sample_idx": 1}])
    journal.close()
    with open(journal.path, "a") as handle:
        handle.write('{"task_id": "T/1", "sam')  # killed mid-write
    assert [store.sample_key(r) for r in journal.read()] == [("T/0", 0), ("T/0", 1)]
    journal.append([{"task_id": "T/1", "sample_idx": 0}])
    journal.close()
    assert journal.path.read_text().count("\n") == 3 and len(journal.read()) == 3
    store.check_settings(tmp_path, {"steps": 4})
    store.check_settings(tmp_path, {"steps": 4})
    with pytest.raises(ValueError, match="different settings \\(steps\\)"):
        store.check_settings(tmp_path, {"steps": 8})
    assert store.shard([("a", 0), ("a", 1), ("b", 0)], 1, 2) == [("a", 1)]


def test_adapter_changes_generation_and_seed_reproduces(tiny_dream_dir: Path, run_dir: Path) -> None:
    base_model, tok = load_model(resolve_checkpoint(tiny_dream_dir), torch.float32, torch.device("cpu"))
    tuned, _ = load_model(resolve_checkpoint(step_dir(run_dir, 1)), torch.float32, torch.device("cpu"))
    prompts = ["def add(a, b):", "Write a function."]
    kwargs = {"max_new_tokens": 12, "steps": 4, "alg": "entropy", "temperature": 0.0}
    a = generate_texts(base_model, tok, prompts, "plain", kwargs, seed=0)
    b = generate_texts(base_model, tok, prompts, "plain", kwargs, seed=0)
    c = generate_texts(tuned, tok, prompts, "plain", kwargs, seed=0)
    assert a.completions == b.completions and a.completions != c.completions
    assert all(0 <= n <= 12 for n in a.num_tokens) and a.canvas_tokens == 2 * 12
    lock = generate_texts(base_model, tok, prompts, "lockstep", {"r_len": 6, "a_len": 8, "mode": "jacobi"},
                          seed=0, delimiter="\n```python\n")
    assert all(t == f"{r}\n```python\n{t.split(chr(10) + '```python' + chr(10), 1)[1]}"
               for t, r in zip(lock.completions, lock.reasoning))
    assert lock.canvas_tokens >= 2 * 14


def test_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        ((), "missing recipe="),
        (("recipe=eval/nope",), "no recipe 'eval/nope'"),
        (("recipe=eval/humaneval",), "missing required setting(s) checkpoint"),
        (("recipe=eval/humaneval", f"checkpoint={tmp_path}"), "holds no Dream model"),
        (("recipe=eval/humaneval", "checkpoint=x", "generation.nope=1"),
         "cannot compose recipe 'eval/humaneval'"),
        (("recipe=eval/mbpp", "checkpoint=x", "+generation.plain.nope=1"), "unknown setting(s) ['nope']"),
        (("recipe=eval/mbpp", "checkpoint=x", "generation.sampler=lockstep", "generation.lockstep.mode=x"),
         "mode must be one of"),
        (("recipe=eval/humaneval", "checkpoint=x", "task=nope"),
         "task=nope is not one of humaneval, mbpp, persona"),
        (("recipe=eval/humaneval", "checkpoint=x", "scoring.reward.nope=1"),
         "Could not override 'scoring.reward.nope'"),
        (("recipe=eval/humaneval", "checkpoint=x", "generation.batch_size=0"),
         "generation.batch_size=0 must be"),
        (("recipe=eval/humaneval", "checkpoint=x", "generation.num_workers=two"),
         "must be an integer >= 1 or auto"),
        (("recipe=eval/humaneval", "checkpoint=x", "dataset.limit=all"), "dataset.limit=all must be"),
        (("recipe=eval/humaneval", "checkpoint=x", "scoring.k=[0,1]"), "scoring.k=[0, 1] must be a list"),
        (("recipe=eval/humaneval", "checkpoint=x", "dtype=fp8"), "dtype=fp8 is not one of"),
        (("recipe=eval/humaneval", "checkpoint=x", "device=tpu"), "device=tpu is not one of"),
    ):
        assert eval_main(list(args)) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
    run = entry("recipe=eval/persona", "checkpoint=/nonexistent")  # the script itself: no traceback
    assert run.returncode == 2 and run.stderr == "error: checkpoint /nonexistent is not a directory\n"


# ------------------------------------------------------------------------------------------------ slow tests
TINY_EVAL = ["dataset.mini=true", *FAST_GEN, "generation.plain.temperature=1.0", "scoring.k=[1,2]"]


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_known_completions_give_exact_pass_at_k_and_evalplus_files(run_dir: Path, tmp_path: Path) -> None:
    """Journals pre-filled with completions of known verdicts: the run only scores them (real sandbox,
    HumanEval+ Mini tests) and finalizes; pass@k must equal the hand-computed values.

    HumanEval/2: reference (base+plus pass), rounding to 4 decimals (passes the 3 base inputs, fails plus),
    constant (fails both); HumanEval/4: constant, reference, reference. With n=3:
    base  = [T,T,F], [F,T,T] -> pass@1 = (2/3 + 2/3) / 2 = 2/3, pass@2 = (1 + 1) / 2 = 1;
    plus  = [T,F,F], [F,T,T] -> pass@1 = (1/3 + 2/3) / 2 = 1/2, pass@2 = ((1 - C(2,2)/C(3,2)) + 1) / 2 = 5/6.
    """
    from evalplus.data.utils import load_solutions

    from rewards.extract import RESPONSE_PREFIX
    from rewards.tasks import load_tasks

    tasks, _ = load_tasks("humaneval", mini=True)
    out = tmp_path / "eval" / "known"
    fence = f"{RESPONSE_PREFIX}\n```python\n"
    right = {t: fence + tasks[t].reference_solution + "\n```" for t in ("HumanEval/2", "HumanEval/4")}
    base_only = fence + "def truncate_number(number: float) -> float:\n    return round(number % 1.0, 4)\n```"
    wrong = {"HumanEval/2": fence + "def truncate_number(number):\n    return 0.5\n```",
             "HumanEval/4": fence + "def mean_absolute_deviation(numbers):\n    return 0.0\n```"}
    rows = [("HumanEval/2", 0, right["HumanEval/2"]), ("HumanEval/2", 1, base_only),
            ("HumanEval/2", 2, wrong["HumanEval/2"]),
            ("HumanEval/4", 0, wrong["HumanEval/4"]), ("HumanEval/4", 1, right["HumanEval/4"]),
            ("HumanEval/4", 2, right["HumanEval/4"])]
    journal = store.generation_journal(out, 0)
    journal.append({"task_id": t, "sample_idx": i, "completion": c, "reasoning": None, "num_tokens": 10,
                    "batch_id": f"b{i % 2}", "batch_size": 3, "batch_seconds": 2.0 - i % 2,
                    "batch_canvas_tokens": 64 // (1 + i % 2)} for t, i, c in rows)
    journal.close()
    run = entry("recipe=eval/humaneval", f"checkpoint={step_dir(run_dir, 2)}", *TINY_EVAL,
                "generation.n_samples=3", "dataset.task_ids=[HumanEval/2,HumanEval/4]",
                "scoring.chunk_size=4",
                f"output_root={tmp_path / 'eval'}", f"results_dir={tmp_path / 'results'}", "eval_name=known")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "generate[" not in run.stderr  # nothing left to generate: the model was never run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass_at_k"]["base"] == {"pass@1": pytest.approx(2 / 3), "pass@2": pytest.approx(1.0)}
    assert summary["pass_at_k"]["plus"] == {"pass@1": pytest.approx(0.5), "pass@2": pytest.approx(5 / 6)}
    # batches b0 (2 s, 64 canvas tokens) and b1 (1 s, 32): 6 samples x 10 tokens over 3 s
    speed = {k: summary["speed"][k]
             for k in ("gen_seconds", "samples_per_s", "tokens_per_s", "canvas_tokens_per_s")}
    assert speed == {"gen_seconds": 3.0, "samples_per_s": 2.0, "tokens_per_s": 20.0,
                     "canvas_tokens_per_s": 32.0}
    evalplus = json.loads((out / "samples_eval_results.json").read_text())
    statuses = {t: [(s["base_status"], s["plus_status"]) for s in v] for t, v in evalplus["eval"].items()}
    assert statuses == {"HumanEval/2": [("pass", "pass"), ("pass", "fail"), ("fail", "fail")],
                        "HumanEval/4": [("fail", "fail"), ("pass", "pass"), ("pass", "pass")]}
    assert evalplus["pass_at_k"] == summary["pass_at_k"]
    samples = list(load_solutions(str(out / "samples.jsonl")))  # evalplus's own reader accepts the file
    assert [s["task_id"] for s in samples] == ["HumanEval/2"] * 3 + ["HumanEval/4"] * 3
    assert ("round(number % 1.0, 4)" in samples[1]["solution"]
            and "def truncate_number" in samples[0]["solution"])
    row = json.loads(read_lines(tmp_path / "results" / "results.jsonl")[0])
    assert row["pass@1_plus"] == pytest.approx(0.5) and row["step"] == 2 and row["eval_name"] == "known"


@pytest.mark.slow
def test_checkpoint_series_end_to_end_through_the_array_script(tiny_dream_dir: Path, run_dir: Path,
                                                               tmp_path: Path) -> None:
    """Render the eval array for the tiny run (base model as step 0 + every global_step_N), execute every
    index locally as Slurm would, and get the run-level table and plot in ``<run>/eval_results``."""
    render = subprocess.run(
        [sys.executable, "-m", "launch.slurm.cli", "render", "eval-array", "--run-dir", str(run_dir),
         "--recipe", "eval/humaneval", "--base-model", str(tiny_dream_dir), "--include-base",
         "--gpus-per-node", "0", "--out-dir", str(tmp_path / "job"), "--job-name", "ev",
         "--", *TINY_EVAL, "dataset.limit=2", "generation.n_samples=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert render.returncode == 0, render.stderr
    for index in range(1 + len(STEPS)):
        done = subprocess.run(["bash", str(tmp_path / "job" / "ev.sbatch")], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "SLURM_ARRAY_TASK_ID": str(index)})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "generate[0]: 100%" in done.stderr and "score: 100%" in done.stderr  # progress bars
    results_dir = run_dir / "eval_results"
    rows = [json.loads(line) for line in read_lines(results_dir / "results.jsonl")]
    assert [r["step"] for r in rows] == [0, *STEPS]
    assert len({r["eval_name"] for r in rows}) == 1  # one evaluation setting: one line pair in the plot
    for row in rows:
        assert row["num_tasks"] == 2 and row["n_samples"] == 2
        assert 0.0 <= row["pass@1_plus"] <= row["pass@1_base"] <= row["pass@2_base"] <= 1.0
        assert row["tokens_per_s"] > 0
        out = Path(row["output_dir"])
        expected_root = run_dir / "eval_base" if row["step"] == 0 else step_dir(run_dir, row["step"]) / "eval"
        assert out.parent == expected_root
        samples = [json.loads(line) for line in read_lines(out / "samples.jsonl")]
        assert len(samples) == 4 and {s["task_id"] for s in samples} == {"HumanEval/0", "HumanEval/1"}
        evalplus = json.loads((out / "samples_eval_results.json").read_text())
        assert set(evalplus["pass_at_k"]) == {"base", "plus"} and len(evalplus["eval"]["HumanEval/1"]) == 2
        assert {s["base_status"] for t in evalplus["eval"].values() for s in t} <= {"pass", "fail", "timeout"}
    completions = [[json.loads(line)["completion"]
                    for line in read_lines(Path(r["output_dir"]) / "generations.rank0.jsonl")]
                   for r in rows]
    assert completions[0] != completions[1] != completions[2]  # each index really evaluated its own weights
    table = (results_dir / "results.md").read_text()
    assert table.count("| humaneval |") == 1 + len(STEPS)
    with open(results_dir / "results.csv") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["0", *map(str, STEPS)]
    with Image.open(results_dir / "pass_at_1.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


@pytest.mark.slow
def test_kill_mid_run_then_resume_rescoring_nothing(run_dir: Path, tmp_path: Path) -> None:
    """SIGKILL the evaluation after some samples are scored; the re-run completes without redoing them."""
    args = [str(ENTRY), "recipe=eval/humaneval", f"checkpoint={step_dir(run_dir, 1)}", *TINY_EVAL,
            "dataset.limit=3", "generation.n_samples=2", "generation.batch_size=1", "scoring.chunk_size=1",
            f"output_root={tmp_path / 'eval'}", f"results_dir={tmp_path / 'results'}", "eval_name=resume"]
    out = tmp_path / "eval" / "resume"
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(read_lines(out / "scores.jsonl")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    scored_before = read_lines(out / "scores.jsonl")
    generated_before = read_lines(out / "generations.rank0.jsonl")
    assert 2 <= len(scored_before) < 6 and not (out / "summary.json").exists()

    rerun = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    scored_after = read_lines(out / "scores.jsonl")
    generated_after = read_lines(out / "generations.rank0.jsonl")
    complete_before = [line for line in scored_before if line.endswith("}")]
    assert scored_after[: len(complete_before)] == complete_before  # old scores kept verbatim, never redone
    keys = [store.sample_key(json.loads(line)) for line in scored_after]
    assert len(keys) == len(set(keys)) == 6
    assert generated_after[: len(generated_before) - 1] == generated_before[:-1]
    assert len(generated_after) == len({store.sample_key(json.loads(line)) for line in generated_after}) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["row"]["num_tasks"] == 3 and set(summary["pass_at_k"]["base"]) == {"pass@1", "pass@2"}
    assert eval_main(args[1:]) == 0  # a finished evaluation re-run (in-process): nothing generated or scored
    assert read_lines(out / "scores.jsonl") == scored_after
    rows = [json.loads(line) for line in read_lines(tmp_path / "results" / "results.jsonl")]
    assert len(rows) == 2 and rows[0]["pass@1_base"] == rows[1]["pass@1_base"]


@pytest.mark.slow
def test_data_parallel_workers_split_samples(run_dir: Path, tmp_path: Path) -> None:
    """Two generation worker processes (CPU stand-ins for two GPUs) each own every other sample."""
    run = entry("recipe=eval/humaneval", f"checkpoint={step_dir(run_dir, 2)}", *TINY_EVAL,
                "dataset.limit=2", "generation.n_samples=2", "generation.num_workers=2",
                f"output_root={tmp_path}", f"results_dir={tmp_path / 'results'}", "eval_name=dp")
    assert run.returncode == 0, run.stderr[-3000:]
    owned = [[store.sample_key(json.loads(line))
              for line in read_lines(tmp_path / "dp" / f"generations.rank{r}.jsonl")]
             for r in (0, 1)]
    assert owned == [[("HumanEval/0", 0), ("HumanEval/1", 0)], [("HumanEval/0", 1), ("HumanEval/1", 1)]]
    assert len(read_lines(tmp_path / "dp" / "scores.jsonl")) == 4
    assert json.loads((tmp_path / "dp" / "summary.json").read_text())["row"]["num_tasks"] == 2


@pytest.mark.slow
def test_persona_task_dispatch_writes_report_and_row(tiny_dream_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = ["recipe=eval/persona", f"checkpoint={tiny_dream_dir}", "persona.fixture=true",
            "persona.max_respondents=1",
            "persona.max_items_per_respondent=3", "persona.max_new_tokens=8", "persona.steps=2",
            "persona.max_context=512", f"output_root={tmp_path}", f"results_dir={tmp_path / 'results'}",
            "eval_name=twin", "device=cpu"]
    first = entry(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((tmp_path / "twin" / "persona_report.json").read_text())
    assert report["parsing"]["items"] == 3
    capsys.readouterr()
    assert eval_main(args) == 0  # in-process re-run: resumes at report granularity, no second generation
    assert "reusing" in capsys.readouterr().out
    assert eval_main([*args, "persona.max_context=64", "eval_name=small"]) == 2
    assert "error: persona: " in capsys.readouterr().err
    rows = [json.loads(line) for line in read_lines(tmp_path / "results" / "results.jsonl")]
    assert len(rows) == 2 and rows[0]["task"] == "persona" and rows[0]["step"] is None
    assert rows[0]["persona_retest"] == report["headline"]["retest"]


def test_help_lists_recipes_and_key_overrides() -> None:
    run = entry("--help")
    assert run.returncode == 0 and run.stderr == ""
    assert "recipe=<eval/humaneval|eval/mbpp|eval/persona> checkpoint=PATH" in run.stdout
    for key in ("generation.sampler=rollout|plain|fast|lockstep", "dtype=auto", "persona.fixture=true",
                "130 interrupted"):
        assert key in run.stdout, key


def test_broken_weights_exit_2_with_one_line_before_anything_is_written(
    tiny_dream_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut download (truncated safetensors) or a folder with config but no weights: the file is named, no
    model is loaded, no output folder is created."""
    cut = tmp_path / "cut"
    shutil.copytree(ROOT / "recipes" / "assets" / "demo_warmstart", cut)
    os.truncate(cut / "model.safetensors", (cut / "model.safetensors").stat().st_size - 1000)
    empty = tmp_path / "no_weights"
    shutil.copytree(tiny_dream_dir, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    out = tmp_path / "out"
    for model, message in ((cut, f"{cut / 'model.safetensors'} is truncated"),
                           (empty, "has no weights: model.safetensors.index.json lists missing shards")):
        assert eval_main(["recipe=eval/humaneval", f"checkpoint={model}", f"output_root={out}",
                          f"results_dir={out}", "device=cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert not out.exists()


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes(run_dir: Path, tmp_path: Path) -> None:
    """SIGINT once generation has started: one line saying how to resume, exit 130, no traceback; the progress
    bar shows an ETA; the same command then finishes without regenerating what was kept."""
    args = [str(ENTRY), "recipe=eval/humaneval", f"checkpoint={step_dir(run_dir, 2)}", *TINY_EVAL,
            "dataset.limit=4", "generation.n_samples=2", "generation.batch_size=1", "scoring.chunk_size=1",
            f"output_root={tmp_path / 'eval'}", f"results_dir={tmp_path / 'results'}", "eval_name=ctrlc"]
    out = tmp_path / "eval" / "ctrlc"
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while (len(read_lines(out / "generations.rank0.jsonl")) < 2 and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert (err.endswith("interrupted; run the same command to resume\n")
            and "Traceback" not in err), err[-3000:]
    # samples bar with an ETA
    assert re.search(r"generate\[0\]:.*\d+/8 \[\d\d:\d\d<\d\d:\d\d", err), err[-3000:]
    kept = read_lines(out / "generations.rank0.jsonl")
    assert 2 <= len(kept) < 8 and not (out / "summary.json").exists()
    rerun = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = read_lines(out / "generations.rank0.jsonl")
    complete = [line for line in kept if line.endswith("}")]
    assert after[: len(complete)] == complete and len(after) == 8  # kept samples were not generated again
    assert json.loads((out / "summary.json").read_text())["row"]["num_tasks"] == 4


def test_persona_recipe_offline_is_one_line_naming_the_fixture(tiny_dream_dir: Path, tmp_path: Path) -> None:
    """README's ``recipe=eval/persona`` on a machine without the hub ended in an ``httpx.ConnectError``
    trace."""
    out = tmp_path / "out"
    run = entry("recipe=eval/persona", f"checkpoint={tiny_dream_dir}", f"output_root={out}",
                f"results_dir={out}",
                env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: persona: the Hugging Face hub is unreachable (offline mode")
    assert "persona.wave_split_files=PATH (a local copy) or persona.fixture=true" in run.stderr
    assert not out.exists()
