"""The demo's story on the real model: SmolLM2-135M-Instruct split over real `globai worker run` processes (the
first half served by a cheater), a paid chat job through the market and the pipeline. The answer to "What is the
capital of France?" names Paris and ends at the model's end-of-sequence token; the cheater is still caught and
slashed, the honest worker paid, and both audits pass (the same code `globai demo run` runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from globai.chain.deploy import GLB
from globai.dev.cluster import Cluster, ClusterConfig
from market.demo.paid_inference import CHAT_PROMPTS, run_paid_inference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_demo_answers_the_capital_question_with_paris(
    chain: Any, deployment: Any, redis_url: str, smollm2: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    cfg = ClusterConfig(
        var=tmp_path,
        rpc_url=chain.url,
        deployment=deployment,
        operator=chain.accounts[0],
        redis_url=redis_url,
        redis_db=12,
        model_dir=smollm2,
    )
    with Cluster(cfg) as cluster:
        out = run_paid_inference(cluster, max_new_tokens=24)

    assert cfg.model == "smollm2-135m-instruct" and cfg.layers == 30
    answers = {o["prompt"]: o for o in out.outputs}
    assert list(answers) == CHAT_PROMPTS
    capital = answers["What is the capital of France?"]
    assert "Paris" in capital["text"], capital
    assert capital["finish_reason"] == "stop" and len(capital["tokens"]) < 24
    assert all(o["finish_reason"] in ("stop", "length") and o["text"].strip() for o in out.outputs)
    assert [s["status"] for s in out.result["slashes"]] == ["confirmed"]
    assert out.stake_after["worker-cheat"] == out.stake_before["worker-cheat"] - 50 * GLB
    assert out.credited["worker-cheat"] == 0 and out.credited["worker-honest"] > 0
    assert out.escrow_status == 2 and out.settlement_tx
    assert out.audit_job[0], out.audit_job[1]
    assert out.audit_chain[0], out.audit_chain[1]
    print(f"\nreal-model demo: {time.monotonic() - started:.1f} s ({out.timings}); answer: {capital['text']!r}")
