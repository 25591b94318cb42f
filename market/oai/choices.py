"""From a run's token events to OpenAI choices (pure): text deltas, finish reasons, logprobs, usage.

The coordinator decides where each sequence ends (EOS, caller stop strings, `max_tokens`: market/coordinator/
stopping.py) and streams visible text deltas; each sequence is one choice here. A choice's completion tokens
are the tokens generated up to and including the one that ended it: what usage reports and what is charged.
With `echo` (/completions) a choice starts with its prompt: the text, and with logprobs the prompt tokens' (the
run's `prompt` event; the first token's logprob is None, as OpenAI shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Decode = Callable[[list[int]], str]


@dataclass
class Choice:
    index: int
    tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # per token: id, logprob, top
    prompt_logprobs: list[dict[str, Any]] = field(default_factory=list)  # echo + logprobs: per prompt token


@dataclass(frozen=True)
class Delta:
    index: int
    text: str
    logprobs: list[dict[str, Any]]
    finish_reason: str | None  # set on the delta that ends the choice


class Choices:
    def __init__(self, n: int) -> None:
        self.choices = [Choice(i) for i in range(n)]

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def prompt_event(self, event: dict[str, Any], prompts: Sequence[str]) -> list[Delta]:
        """The run's scored prompt (echo + logprobs): per choice, its prompt text and prompt tokens' logprobs."""
        out = []
        for choice, items, text in zip(self.choices, event["logprobs"], prompts, strict=True):
            choice.prompt_logprobs = list(items)
            out.append(Delta(choice.index, text, choice.prompt_logprobs, None))
        return out

    def finish_unended(self) -> list[Delta]:
        """Choices the run ended without a token (max_tokens 0: the prompt only) end with "length"."""
        out = []
        for choice in self.choices:
            if choice.finish_reason is None:
                choice.finish_reason = "length"
                out.append(Delta(choice.index, "", [], "length"))
        return out

    def token_event(self, event: dict[str, Any]) -> list[Delta]:
        """One decode step of the run: per choice that is still open, its delta."""
        tokens: Sequence[int | None] = event["tokens"]
        texts: Sequence[str] = event.get("text") or [""] * len(tokens)
        reasons: Sequence[str | None] = event.get("finish_reason") or [None] * len(tokens)
        logprobs = event.get("logprobs")
        out = []
        for choice, token, text, reason in zip(self.choices, tokens, texts, reasons, strict=True):
            if choice.finish_reason is not None or token is None:
                continue
            choice.tokens += 1
            choice.text += text
            lps = []
            if logprobs is not None and logprobs[choice.index] is not None:
                lp = logprobs[choice.index]
                lps = [{"id": int(token), "logprob": lp["logprob"], "top": lp["top"]}]
                choice.logprobs += lps
            choice.finish_reason = reason
            out.append(Delta(choice.index, text, lps, reason))
        return out


# --- OpenAI shapes of logprobs ----------------------------------------------------------------------------------


def chat_logprobs(items: list[dict[str, Any]], token_text: Decode) -> dict[str, Any]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        s = token_text([token_id])
        return {"token": s, "logprob": logprob, "bytes": list(s.encode())}

    return {
        "content": [
            {**entry(i["id"], i["logprob"]), "top_logprobs": [entry(t, v) for t, v in i["top"]]} for i in items
        ],
        "refusal": None,
    }


def completion_logprobs(items: list[dict[str, Any]], token_text: Decode, offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy shape; an item without a logprob (an echoed prompt's first token) shows None for both."""
    tokens = [token_text([i["id"]]) for i in items]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [i["logprob"] for i in items],
        "top_logprobs": [None if i["top"] is None else {token_text([t]): v for t, v in i["top"]} for i in items],
        "text_offset": offsets,
    }
