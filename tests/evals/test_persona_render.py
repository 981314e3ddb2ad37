"""Question/persona rendering (golden text), the 2048-token fit, and no answer in any prompt."""

from __future__ import annotations

import re

import pytest

from decoding.tokenizer import load_tokenizer
from evals.persona.data import holdout_items, iter_questions
from evals.persona.render import (
    CUT_MARK,
    PersonaUnavailable,
    PromptTooLong,
    build_prompt,
    persona_for_variant,
    render_question,
    user_message,
)


@pytest.fixture(scope="module")
def tok(tiny_dream_dir):
    return load_tokenizer(tiny_dream_dir)


@pytest.fixture(scope="module")
def by_pid(fixture_respondents):
    return {r.pid: r for r in fixture_respondents}


def _persona_q(resp, qid):
    return next(q for _, q in iter_questions(resp.persona_json) if q["QuestionID"] == qid)


def test_golden_single_choice_both_modes(by_pid):
    q = _persona_q(by_pid["1"], "QID11")
    options = "Options:\n  1 - 18-29\n  2 - 30-49\n  3 - 50-64\n  4 - 65 or older\n"
    head = "How old are you?\nQuestion Type: Single Choice\n" + options
    assert render_question(q, mask=False) == head + "Answer: 2 - 30-49"
    assert render_question(q, mask=True) == head + "Answer: [Masked]"


def test_golden_matrix_both_modes(by_pid):
    q = _persona_q(by_pid["2"], "QID25")
    text = render_question(q, mask=False).splitlines()
    assert text[:3] == [
        "How well do the following statements describe you?",
        "Question Type: Matrix",
        "Options:",
    ]
    assert text[8:] == [
        "1. I see myself as someone who is talkative",
        "Answer: 2 - Disagree a little",
        "2. I see myself as someone who worries a lot",
        "Answer: 4 - Agree a little",
        "3. I see myself as someone who values art",
        "Answer: 1 - Disagree strongly",
    ]
    assert render_question(q, mask=True).count("Answer: [Masked]") == 3


def test_golden_slider_number_form_db(by_pid):
    template = {q["QuestionID"]: q for _, q in iter_questions(by_pid["1"].template)}
    assert render_question(template["QID154"], mask=True).splitlines()[1:] == [
        "Question Type: Slider",
        "1. [No Statement Needed]",
        "Answer: [Masked]",
    ]
    assert render_question(template["QID181"], mask=True).splitlines()[1:] == [
        "Question Type: Text Entry",
        "Answer: [Masked]",
    ]
    form = _persona_q(by_pid["1"], "QID30")
    assert render_question(form, mask=False).splitlines()[1:] == [
        "Question Type: Text Entry (Form)",
        "Hours of sleep: 7",
        "Cups of coffee: 2",
    ]
    assert render_question(_persona_q(by_pid["1"], "QID31"), mask=True) == (
        "Thank you! This part is done.\n[Descriptive Information]"
    )  # HTML and &nbsp; cleaned


def test_masked_mode_ignores_answers_even_if_present(by_pid):
    q = _persona_q(by_pid["1"], "QID11")
    assert "30-49\nAnswer" not in render_question(q, mask=True) and "Answer: 2" not in render_question(
        q, mask=True
    )


def test_persona_variants(by_pid):
    one = by_pid["1"]
    assert persona_for_variant(one, "full") == one.persona_text.strip()
    assert "Answer: 2 - 30-49" in persona_for_variant(one, "json")
    both = persona_for_variant(one, "summary+text")
    assert both.startswith(one.persona_summary) and "--- Detailed Responses ---" in both
    with pytest.raises(PersonaUnavailable):
        persona_for_variant(by_pid["17"], "summary")  # null summary: refuse, never an empty persona
    with pytest.raises(ValueError, match="variant"):
        persona_for_variant(one, "everything")


def test_no_wave4_answer_reaches_any_prompt(tok, fixture_respondents):
    for resp in fixture_respondents:
        persona = persona_for_variant(resp, "json")
        for item in holdout_items(resp):
            prompt = build_prompt(tok, item, persona).text
            question_part = prompt.split("## New Survey Question")[1]
            answer_lines = re.findall(r"Answer: (.*)", question_part)
            assert answer_lines and set(answer_lines) == {"[Masked]"}
    # a distinctive numeric answer of the retest (sunk cost 12 for pid 1, anchoring 65 for pid 17)
    # never appears
    one = next(r for r in fixture_respondents if r.pid == "1")
    sunk = next(i for i in holdout_items(one) if i.qid == "QID181")
    assert "Answer: 12" not in build_prompt(tok, sunk, persona_for_variant(one, "full")).text


def test_truncation_keeps_question_and_instructions(tok, by_pid):
    resp = by_pid["1"]
    persona = "\n".join(f"Earlier answer number {k}: I prefer tea to coffee." for k in range(200))
    item = next(i for i in holdout_items(resp) if i.qid == "QID198")
    max_context, max_new = 700, 48
    prompt = build_prompt(tok, item, persona, max_context=max_context, max_new_tokens=max_new)
    n = len(tok.encode(prompt.text, add_special_tokens=False))
    assert n == prompt.n_tokens and n <= max_context - max_new
    assert prompt.cut and 0 < prompt.persona_tokens_kept < prompt.persona_tokens
    tail = user_message("", item).split("---\n", 1)[1]  # question + format instructions, intact
    assert prompt.text.endswith(tail + "<|im_end|>\n<|im_start|>assistant\n")
    assert (
        CUT_MARK in prompt.text and "Earlier answer number 199" in prompt.text
    )  # the END of the persona stays
    assert "Earlier answer number 0:" not in prompt.text  # its start is what gets cut


def test_no_cut_when_it_fits(tok, by_pid):
    resp = by_pid["1"]
    item = holdout_items(resp)[0]
    prompt = build_prompt(tok, item, persona_for_variant(resp, "full"))
    assert not prompt.cut and prompt.persona_tokens_kept == prompt.persona_tokens > 0
    assert persona_for_variant(resp, "full") in prompt.text


def test_question_too_long_is_a_clear_error(tok, by_pid):
    item = holdout_items(by_pid["1"])[2]
    with pytest.raises(PromptTooLong, match="question"):
        build_prompt(tok, item, "persona", max_context=200, max_new_tokens=48)


def test_unanswered_rows_and_multi_choice():
    matrix = {
        "QuestionID": "QID5",
        "QuestionText": "Rate",
        "QuestionType": "Matrix",
        "Rows": ["a", "b"],
        "Columns": ["low", "high"],
        "Answers": {"SelectedByPosition": [2]},
    }
    assert render_question(matrix, mask=False).splitlines()[-4:] == [
        "1. a",
        "Answer: 2 - high",
        "2. b",
        "Answer: [No Answer Provided]",
    ]
    multi = {
        "QuestionID": "QID6",
        "QuestionText": "Pick all",
        "QuestionType": "MC",
        "Settings": {"Selector": "MAVR"},
        "Options": ["x", "y", "z"],
        "Answers": {"SelectedByPosition": [1, 3], "SelectedText": ["x", "z"]},
    }
    assert render_question(multi, mask=False).splitlines()[1] == "Question Type: Multiple Choice"
    assert render_question(multi, mask=False).endswith("Answer: 1 - x, 3 - z")
