"""Prompt scoring through the OpenAI-compatible API (`/openai/v1/completions` with `echo` and `logprobs`), with the
`openai` client against a real market (uvicorn) and two in-process workers: the prompt tokens' logprobs equal the
unsharded model's log_softmax at those positions, the first token's is null, `echo` puts the prompt in front of the
text (streamed too), `max_tokens: 0` scores without generating, and the limits answer clear 400s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from eth_account.signers.local import LocalAccount

from globai.models.reference import reference_logits
from tests.runtime.conftest import MODEL, InProcessWorker, MarketServer, openai_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(market: MarketServer, staked: list[LocalAccount], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The OpenAI client on a funded key, two workers serving the model's two halves."""
    cache = tmp_path_factory.mktemp("scoring")
    workers = [
        InProcessWorker.start(market, staked[i], layers, cache / str(i)) for i, layers in enumerate(["0:2", "2:4"])
    ]
    try:
        market.wait_workers(2, timeout=120)
        yield openai_client(market)
    finally:
        for w in workers:
            w.stop()


def reference_logprobs(tiny_model: Path, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(reference_logits(tiny_model, torch.tensor([ids])).float(), dim=-1)[0]


def test_echo_logprobs_score_the_prompt_like_the_unsharded_model(
    client: Any, market: MarketServer, tiny_model: Path
) -> None:
    ids = market.coordinator.encode_prompts(MODEL, [PROMPT], None)[0]
    ref = reference_logprobs(tiny_model, ids)
    scored = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=3)
    choice = scored.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert scored.usage.prompt_tokens == len(ids) and scored.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert abs(lp.token_logprobs[t] - float(ref[t - 1, ids[t]])) < 1e-4, t
        top = torch.topk(ref[t - 1], 3).values.tolist()
        # keyed by token text (OpenAI's shape): tokens that decode alike share an entry
        assert all(any(abs(v - x) < 1e-4 for x in top) for v in lp.top_logprobs[t].values())
        assert len(lp.top_logprobs[t]) >= 1 and lp.token_logprobs[t] <= top[0] + 1e-4
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:i]) for i in range(len(ids))]

    # With a completion: the prompt's rows, then the generated tokens' (the same greedy text as without echo).
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    both = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1, n=2
    )
    for c in both.choices:
        assert c.text == PROMPT + plain.choices[0].text
        n_new = len(c.logprobs.tokens) - len(ids)
        assert n_new == both.usage.completion_tokens // 2 and n_new >= 1
        assert c.logprobs.token_logprobs[1:][: len(ids) - 1] == pytest.approx(
            [float(ref[t - 1, ids[t]]) for t in range(1, len(ids))], abs=1e-4
        )
    # echo alone: the prompt in front, nothing else changes.
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text and echoed.choices[0].logprobs is None
    # Streamed: the prompt first (with its logprobs), then the completion.
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1, stream=True
        )
    )
    assert chunks[0].choices[0].text == PROMPT and chunks[0].choices[0].logprobs.token_logprobs[0] is None
    assert "".join(c.choices[0].text for c in chunks if c.choices) == PROMPT + plain.choices[0].text


def test_scoring_limits_are_clear_400s(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(openai.BadRequestError) as zero:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0)
    assert "echo" in str(zero.value)
    with pytest.raises(openai.BadRequestError) as unequal:
        client.completions.create(model=MODEL, prompt=[PROMPT, "A"], max_tokens=0, echo=True, logprobs=1)
    assert unequal.value.code == "scoring_limit" and "same token count" in str(unequal.value)
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"echo": True}
        )
    assert chat.value.param == "echo" and chat.value.code == "unsupported_parameter"
    # The bound on one answer's logits (rows x vocab x 4 bytes here), made small: named in the 400.
    import globai.protocol.pipeline as pipeline

    monkeypatch.setattr(pipeline, "SCORING_MAX_BYTES", 4 * 512 * 4)
    with pytest.raises(openai.BadRequestError) as big:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    assert big.value.code == "scoring_limit" and "limited to 4 prompt tokens" in str(big.value)
