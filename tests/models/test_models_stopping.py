"""Stopping rules of a generated sequence: EOS ids, stop strings (held back while forming), max_new_tokens."""

from __future__ import annotations

import pytest

from market.coordinator.stopping import SequenceStop, cut_at_stop, held_back, validate_stops

# A toy "tokenizer": token i decodes to PIECES[i]; 0 is EOS (a special token, decoded as nothing).
PIECES = ["", "Hel", "lo", " wor", "ld", "!", "\n\n", "Q:", " end"]


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def run(
    tokens: list[int], *, eos: frozenset[int] = frozenset({0}), stops: tuple[str, ...] = (), max_new: int = 10
) -> tuple[SequenceStop, list[str]]:
    st = SequenceStop(eos, stops, decode)
    deltas = []
    for step, tok in enumerate(tokens[:max_new]):
        deltas.append(st.feed(tok))
        if st.finished:
            break
        if step == max_new - 1:
            deltas.append(st.finish_length())
    return st, deltas


def test_eos_stops_and_the_text_excludes_it() -> None:
    st, deltas = run([1, 2, 0, 3, 4])
    assert st.finish_reason == "stop" and st.tokens == [1, 2, 0] and st.text == "Hello"
    assert "".join(deltas) == "Hello"


def test_length_when_no_stop_comes() -> None:
    st, deltas = run([1, 2, 3, 4, 5], max_new=3)
    assert st.finish_reason == "length" and st.tokens == [1, 2, 3] and st.text == "Hello wor"
    assert "".join(deltas) == st.text


def test_stop_string_spanning_tokens_is_cut_and_never_streamed() -> None:
    # "world" is made of " wor" + "ld": the stream must hold " wor" back until it is known not to be the stop.
    st, deltas = run([1, 2, 3, 4, 5], stops=(" world",))
    assert st.finish_reason == "stop" and st.text == "Hello" and st.tokens == [1, 2, 3, 4]
    assert deltas == ["Hel", "lo", "", ""] and "".join(deltas) == st.text


def test_held_back_text_is_released_when_the_stop_does_not_complete() -> None:
    st, deltas = run([1, 3, 5, 2], stops=(" worm",), max_new=4)
    assert st.finish_reason == "length" and st.text == "Hel wor!lo"
    assert deltas[1] == "" and "".join(deltas) == st.text  # " wor" held back, then released with "!"


def test_ignore_eos_means_no_eos_ids() -> None:
    st, _ = run([1, 0, 2], eos=frozenset(), max_new=3)
    assert st.finish_reason == "length" and st.tokens == [1, 0, 2]


def test_helpers() -> None:
    assert held_back("abc Q", ("Q:",)) == 1 and held_back("abc", ("Q:",)) == 0
    assert cut_at_stop("one\n\ntwo", ["\n\n"]) == "one" and cut_at_stop("one", ["x"]) == "one"
    with pytest.raises(ValueError):
        validate_stops(["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError):
        validate_stops([""])
