"""When a sequence's generation ends, and the text a requester may see so far.

A sequence stops at the model's end-of-sequence ids (`Manifest.generation.eos_token_ids`, unless the request
says `ignore_eos`), at the first caller-given stop string in its decoded text, or after `max_new_tokens`
(`finish_reason` "stop" for the first two, "length" for the last, as OpenAI's API reports it).

Stop strings are matched on decoded text, so one may span several tokens; the visible text never includes the
stop string, and while a stop string may still be forming at the end of the text, that tail is held back from
the stream (so a streamed text is always a prefix of the final one). Pure logic: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string (may still grow into it)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


@dataclass
class SequenceStop:
    """One sequence's stopping state; `feed` it every generated token in order."""

    eos_ids: frozenset[int]
    stops: tuple[str, ...]
    decode: Callable[[list[int]], str] | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""  # visible text: final once finished, else the part that can be streamed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, token: int) -> str:
        """Record `token`; returns the newly visible text (a delta), and sets `finish_reason` when it ends here."""
        if self.finished:
            raise ValueError("sequence already finished")
        self.tokens.append(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
        if self.decode is None:
            return ""
        # Hold back a trailing partial UTF-8 character (byte-level BPE splits them over tokens).
        full = self.decode(self.tokens).rstrip("\ufffd")
        visible = full
        if self.stops:
            cut = min((i for i in (full.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                visible = full[:cut]
                self.finish_reason = "stop"
            elif not self.finished:
                visible = full[: len(full) - held_back(full, self.stops)]
        delta = visible[len(self.text) :] if visible.startswith(self.text) else visible
        self.text = visible
        return delta

    def finish_length(self) -> str:
        """Generation hit max_new_tokens: the held-back tail (no stop string completed) becomes visible."""
        if self.finished:
            return ""
        self.finish_reason = "length"
        if self.decode is None:
            return ""
        full = self.decode(self.tokens)
        delta = full[len(self.text) :] if full.startswith(self.text) else full
        self.text = full
        return delta


def validate_stops(stops: Sequence[str]) -> tuple[str, ...]:
    """At most 4 non-empty stop strings of at most 256 characters (OpenAI allows 4)."""
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
    if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
        raise ValueError(f"stop strings must have 1 to {MAX_STOP_LENGTH} characters")
    return tuple(stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop string (the text a finished sequence shows), for re-decoded stored tokens."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text
