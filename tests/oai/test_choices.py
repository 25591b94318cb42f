"""Pure pieces of the OpenAI-compatible API: choices from the run's token events, logprob shapes, request
validation, the credit's fee-inclusive availability and the split of a request's charge over work parts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from market.oai.choices import Choices, completion_logprobs
from market.oai.errors import OpenAIError
from market.oai.schemas import ChatIn, CompletionIn, parse
from market.services.credits import available, split_units
from market.settlement.payout import fee_of


def test_choices_follow_the_runs_stop_decisions_and_count_tokens() -> None:
    c = Choices(2)
    lp = {"logprob": -0.5, "top": [[4, -0.5], [7, -1.0]]}
    d1 = c.token_event({"tokens": [4, 5], "text": ["He", "Hi"], "logprobs": [lp, lp]})
    d2 = c.token_event({"tokens": [6, 9], "text": ["llo", ""], "finish_reason": [None, "stop"], "logprobs": [lp, lp]})
    d3 = c.token_event(
        {"tokens": [1, None], "text": ["!", ""], "finish_reason": ["length", "stop"], "logprobs": [lp, None]}
    )
    assert [d.text for d in d1 + d2 + d3] == ["He", "Hi", "llo", "", "!"]
    assert [(x.text, x.tokens, x.finish_reason) for x in c.choices] == [("Hello!", 3, "length"), ("Hi", 2, "stop")]
    assert c.done and c.completion_tokens == 5 and len(c.choices[0].logprobs) == 3
    shaped = completion_logprobs(c.choices[0].logprobs, lambda ids: f"<{ids[0]}>")
    assert shaped["tokens"] == ["<4>", "<6>", "<1>"] and shaped["text_offset"] == [0, 3, 6]
    assert shaped["top_logprobs"][0] == {"<4>": -0.5, "<7>": -1.0}


def test_fee_inclusive_availability_never_overdraws() -> None:
    credit = SimpleNamespace(spent=0, reserved=0, fee_bps=200)
    funded = 10**18 + 12345
    x = available(credit, funded)  # type: ignore[arg-type]
    assert x + fee_of(x, 200) <= funded < (x + 1) + fee_of(x + 1, 200)
    credit.spent, credit.reserved = 3 * 10**17, 10**17
    y = available(credit, funded)  # type: ignore[arg-type]
    used = 4 * 10**17 + y
    assert used + fee_of(used, 200) <= funded < used + 1 + fee_of(used + 1, 200)


@pytest.mark.parametrize("total", [0, 1, 7, 1000, 10**12 + 3])
def test_split_units_is_exact(total: int) -> None:
    parts = split_units(total, [("a", 3), ("b", 1), ("c", 3)])
    assert sum(parts.values()) == total and parts["a"] >= parts["c"] >= parts["b"]


def test_unsupported_and_invalid_parameters_are_400s() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse(ChatIn, {**base, "frequency_penalty": 0}).n == 1  # neutral value accepted
    for extra, param in (
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"temperature": 3}, "temperature"),
        ({"top_logprobs": 2}, None),
        ({"foo": 1}, "foo"),
    ):
        with pytest.raises(OpenAIError) as err:
            parse(ChatIn, {**base, **extra})
        assert err.value.status == 400 and err.value.param == param
    with pytest.raises(OpenAIError):
        parse(CompletionIn, {"model": "m", "prompt": [[1, 2, 3]]})
