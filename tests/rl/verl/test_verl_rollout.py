"""The Dream rollout server (the object verl's agent loop talks to), driven directly without Ray."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from omegaconf import OmegaConf

from rl.verl.rollout import DreamRolloutServer, _Request, _SampleKeyedClient, apply_scored_mask, sample_key

PROMPTS = ("def add(a, b):", "Write a function that returns the square of x.\ndef square(x):")
SAMPLES_PER_PROMPT = 3


@pytest.fixture(scope="module")
def server(tiny_dream_dir) -> DreamRolloutServer:
    rollout_config = OmegaConf.create({
        "response_length": 24, "dtype": "bfloat16", "seed": 0,
        "custom": {"dream": {"sampler": "lockstep", "batch_wait_s": 0.05, "max_batch": 4, "options": {
            "mode": "gauss_seidel", "r_len": 4, "a_len": 12, "tau_r": 0.9, "tau_a": 0.9,
            "alg": "maskgit_plus", "delimiter": "\n```python\n"}}},
    })
    model_config = OmegaConf.create({"path": str(tiny_dream_dir), "trust_remote_code": False})
    return DreamRolloutServer(rollout_config, model_config, replica_rank=0)


def _serve(server: DreamRolloutServer, arrival: list[int], gap_s: float = 0.0) -> dict[int, list[int]]:
    """Submit one step's requests in ``arrival`` order the way our agent loop does: sample ``i`` is sample
    ``i % n`` of dataset row ``i // n`` and goes through the agent loop's keyed client (random request ids).
    ``gap_s``: the j-th request arrives ``j * gap_s`` seconds after the first (agent-loop workers start
    apart)."""
    tokenizer = server.tokenizer
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in PROMPTS]

    async def submit(i: int, delay: float):
        await asyncio.sleep(delay)
        client = _SampleKeyedClient(server, sample_key({"index": i // SAMPLES_PER_PROMPT,
                                                        "session_id": i % SAMPLES_PER_PROMPT}))
        return await client.generate(uuid.uuid4().hex, prompt_ids=prompts[i // SAMPLES_PER_PROMPT],
                                     sampling_params={"temperature": 1.0, "top_p": 1.0})

    async def step() -> list:
        server._worker_task = None  # a fresh event loop per step
        server._wakeup = asyncio.Event()
        return await asyncio.gather(*[submit(i, j * gap_s) for j, i in enumerate(arrival)])

    outputs = asyncio.run(step())
    return {i: output.token_ids for i, output in zip(arrival, outputs)}


def test_each_sample_gets_the_same_completion_whatever_the_arrival_order(server) -> None:
    """verl's agent loop submits a step's requests concurrently (arrival order varies between runs) and the
    samples of one prompt are identical requests: the completion of a sample must depend on its batch row
    (the sample key our agent loop sends), never on arrival order — otherwise a resumed run permutes each
    group. ``max_batch=4`` < 6 requests: which rows share a decode batch (and its seed) must not depend on it
    either."""
    server.set_global_steps(3)
    samples = len(PROMPTS) * SAMPLES_PER_PROMPT
    in_order = _serve(server, list(range(samples)))
    reversed_order = _serve(server, list(reversed(range(samples))))
    interleaved = _serve(server, [4, 0, 5, 2, 1, 3])
    # requests spread out within batch_wait_s: max_batch rows are queued well before the last one arrives
    config = server.sampler_config
    server.sampler_config = dataclasses.replace(config, batch_wait_s=0.2)
    try:
        spread_reversed = _serve(server, list(reversed(range(samples))), gap_s=0.12)
    finally:
        server.sampler_config = config
    assert in_order == reversed_order == interleaved == spread_reversed
    group = [tuple(in_order[i]) for i in range(SAMPLES_PER_PROMPT)]
    assert len(set(group)) > 1  # the samples of a prompt differ, so a permutation would be visible
    server.set_global_steps(4)
    assert _serve(server, list(range(samples))) != in_order  # a new weights version draws new rollouts


def test_a_response_is_the_canvas_with_its_scored_mask_and_reward_text(server) -> None:
    """What the agent loop and the reward receive: the whole decoded canvas (R 4 + delimiter + A 12), the mask
    of the tokens the loss scores and the text the reward reads."""
    from rl.rollout_decoding import SCORED_MASK_FIELD
    from rl.verl.reward import REWARD_TEXT_FIELD

    tokenizer = server.tokenizer
    delimiter = tokenizer.encode("\n```python\n", add_special_tokens=False)
    batch = [_Request(tokenizer.encode(PROMPTS[0], add_special_tokens=False), {"temperature": 1.0},
                      None, (0, 0))]
    (output,) = server._decode(batch)
    tokens, extra = output.token_ids, output.extra_fields
    assert len(tokens) == 4 + len(delimiter) + 12 and tokens[4:4 + len(delimiter)] == delimiter
    scored = extra[SCORED_MASK_FIELD]
    assert len(scored) == len(tokens) and scored[4:4 + len(delimiter)] == [0] * len(delimiter)
    assert extra["rollout/scored_tokens"] == sum(scored) > 0
    assert "```python" in extra[REWARD_TEXT_FIELD] and "<|endoftext|>" not in extra[REWARD_TEXT_FIELD]


def test_announced_rows_decode_as_one_batch_however_late_they_arrive(server) -> None:
    """On a loaded machine a step's requests arrive spread out, past any quiet period: the batches (and so the
    rollouts) must come out as if they had arrived together once the trainer announced the step's rows."""
    server.set_global_steps(5)
    samples = len(PROMPTS) * SAMPLES_PER_PROMPT
    together = _serve(server, list(range(samples)))
    late = list(reversed(range(samples)))
    unannounced = _serve(server, late, gap_s=0.15)  # 3x batch_wait_s apart: every request decoded on its own
    assert unannounced != together
    server.expect_rows(samples)
    assert _serve(server, late, gap_s=0.15) == together
    assert server._expected == 0  # all announced rows were taken


def test_announced_rows_that_never_come_are_decoded_after_the_timeout(server, caplog) -> None:
    config = server.sampler_config
    server.sampler_config = dataclasses.replace(config, expect_timeout_s=0.3)
    try:
        server.expect_rows(len(PROMPTS) * SAMPLES_PER_PROMPT + 1)  # one row more than the step sends
        with caplog.at_level("WARNING", logger="rl.verl.rollout"):
            outputs = _serve(server, list(range(len(PROMPTS) * SAMPLES_PER_PROMPT)))
    finally:
        server.sampler_config = config
    assert len(outputs) == 6 and server._expected == 0
    assert "6 of 7 announced requests arrived" in caplog.text


def test_the_scored_mask_becomes_the_response_mask() -> None:
    assert apply_scored_mask([1] * 6, [1, 1, 0, 0, 0, 1]) == [1, 1, 0, 0, 0, 1]
    assert apply_scored_mask([1, 1, 1], [1, 0, 0, 1, 1]) == [1, 0, 0]  # a canvas cut by the response length
    assert apply_scored_mask([1, 0, 1], None) == [1, 0, 1]


def test_sample_key_is_dataset_index_and_sample_number() -> None:
    assert sample_key({"index": 7, "session_id": 3, "uid": "3f2a"}) == (7, 3)
    assert sample_key({}) == (0, 0)
