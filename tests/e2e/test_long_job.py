"""A long paid job end to end: 16 prompts of 512 tokens + 64 new tokens (two batches of 8 x 576 positions), with
the demo's cheating worker on layers [0, 2). Before commitments travelled as a binary frame, the first stage's
prefill answer (8 x 16 signed chunk commitments) overflowed the 64 KiB JSON header and the job failed; verifier
replays of the last stage (one [8, 768, vocab] frame) were refused as oversized. Now the job must generate, the
cheater be caught and slashed, the honest worker paid, and both audits pass - through the real processes
(Anvil, Redis, Celery worker + beat, market, worker daemons), on the tiny model. (The prompts make it long: 512
positions per sequence before the first new token; 64 new tokens take every sequence into its 18th chunk. It ran
256 new tokens until 2026-12-03: 62 s in the suite, against 35 s now, for no further property.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from globai.dev.cluster import Cluster, ClusterConfig
from globai.models.tiny import CORPUS, train_tokenizer
from market.demo.paid_inference import run_paid_inference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 16, 512, 64


def long_prompts() -> list[str]:
    """16 different prompts that the tiny model's tokenizer encodes to exactly 512 tokens (with its BOS)."""
    tok = train_tokenizer()
    words = (CORPUS.replace("\n", " ") * 40).split(" ")
    out = []
    for i in range(PROMPTS):
        text_words = words[i * 7 :]
        lo, hi = 1, len(text_words)
        while lo < hi:  # fewest words giving >= 512 tokens
            mid = (lo + hi) // 2
            if len(tok.encode(" ".join(text_words[:mid])).ids) >= PROMPT_TOKENS:
                hi = mid
            else:
                lo = mid + 1
        ids = tok.encode(" ".join(text_words[:lo])).ids[1:PROMPT_TOKENS]  # without BOS, cut to 511
        text = tok.decode(ids)
        assert len(tok.encode(text).ids) == PROMPT_TOKENS, len(tok.encode(text).ids)
        out.append(text)
    return out


def test_long_paid_job_verifies_settles_audits(chain: Any, deployment: Any, redis_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    prompts = long_prompts()
    cfg = ClusterConfig(
        var=tmp_path,
        rpc_url=chain.url,
        deployment=deployment,
        operator=chain.accounts[0],
        redis_url=redis_url,
        redis_db=12,
    )
    with Cluster(cfg) as cluster:
        out = run_paid_inference(
            cluster, prompts=prompts, max_new_tokens=NEW_TOKENS, generate_timeout=300, settle_timeout=400
        )
    assert len(out.outputs) == PROMPTS
    # A sequence may stop early at EOS (random weights); its batch still runs every step (padded).
    lengths = [len(o["tokens"] or []) for o in out.outputs]
    assert min(lengths) > 0 and max(lengths) == NEW_TOKENS, lengths
    v = out.result["verification"]
    assert v["status"] == "done", v
    assert [s["status"] for s in out.result["slashes"]] == ["confirmed"]
    assert out.credited["worker-cheat"] == 0 and out.credited["worker-honest"] > 0
    assert out.escrow_status == 2
    assert out.audit_job[0], out.audit_job[1]
    assert out.audit_chain[0], out.audit_chain[1]
    print(f"\nlong job (16x512+64): {time.monotonic() - started:.1f} s {out.timings} verification {v}")
