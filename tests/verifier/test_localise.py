"""`disputes.localise_chain`: which hop of a chain replica that lost its 2-of-3 lied, from its hops' re-runs."""

from __future__ import annotations

from market.verifier.disputes import Vote, localise_chain


def votes(*statuses: str) -> list[Vote]:
    return [Vote(10 + i, s, "no_replica" if s == "void" else "") for i, s in enumerate(statuses)]


def test_the_first_hop_two_re_runs_contradict_is_the_liar() -> None:
    liar, reason, honest = localise_chain([votes("pass", "pass"), votes("fail", "fail"), votes("fail", "fail")])
    assert liar == 1 and "hop 1" in reason and honest == {0}


def test_a_hop_reproduced_by_its_re_runs_is_honest_even_after_the_liar() -> None:
    assert localise_chain([votes("fail", "fail"), votes("pass", "void")]) == (
        0,
        "hop 0 contradicted by 2 independent re-runs",
        {1},
    )


def test_one_contradicting_re_run_convicts_nobody() -> None:
    for split in (votes("fail", "pass"), votes("fail", "void"), votes("void", "void")):
        liar, reason, honest = localise_chain([votes("pass", "pass"), split])
        assert liar is None and honest == {0} and reason.startswith("hop 1 not localised")
    assert "no_replica" in localise_chain([votes("void", "void")])[1]


def test_every_hop_reproduced_localises_nothing() -> None:
    liar, reason, honest = localise_chain([votes("pass", "pass"), votes("pass", "pass")])
    assert liar is None and honest == {0, 1} and "not one hop's lie" in reason
