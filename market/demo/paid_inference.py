"""The paid-inference story on a local cluster: stake workers (one cheats), post and fund a job with a permit,
stream its text, wait for verification and settlement, check balances, audit the job and the chain.

`globai demo run` prints it; the end-to-end test runs the same function and asserts on its result.

Who does what is fixed so that the story is deterministic without touching the coordinator's planning: while the
job runs, the only route is the cheater (the first half of the layers, e.g. [0, 15) of SmolLM2's 30) followed by an
honest worker (the second half); two verifier workers serving the first half and one serving the second half join
once the work is done and the verification beat starts after them, so the sampled chunks of the cheater are replayed
on them (round 0 + a dispute round: 2 of 2 votes against it) and the honest worker's on the third (work that no
replica could check would be refunded, not paid).

With a real chat model (the default: SmolLM2-135M-Instruct) the prompts are questions sent as chat messages,
answered greedily until the model's end-of-sequence token; with the tiny random model (fast tests) they are
plain text continuations and the output is gibberish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from globai.chain.deploy import GLB
from globai.chain.ids import job_id_bytes
from globai.dev.cluster import Cluster
from globai.dev.services import free_port

STAKE = 200 * GLB
PRICE_PER_UNIT = GLB // 100  # 0.01 GLB per generated token per stage part

DEFAULT_PROMPTS = [
    "Once upon a time",
    "The market pays workers for",
    "A verifier replays",
    "Settlement on chain means",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "What is 2 + 2?",
    "Name the three primary colours.",
    "Write a haiku about the sea.",
]


def demo_account(label: str) -> LocalAccount:
    """Deterministic devnet keys (never for real funds): the same workers and requester on every run."""
    return Account.from_key(keccak(text=f"globai-demo/{label}"))


@dataclass
class Actor:
    name: str
    account: LocalAccount
    layers: str
    operator: str
    cheat: str | None = None


@dataclass
class Outcome:
    job_id: str = ""
    funding_tx: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    credited: dict[str, int] = field(default_factory=dict)  # escrow balance gained this run, per worker
    stake_before: dict[str, int] = field(default_factory=dict)
    stake_after: dict[str, int] = field(default_factory=dict)
    escrow_status: int = 0
    settlement_tx: str = ""
    audit_job: tuple[bool, str] = (False, "")
    audit_chain: tuple[bool, str] = (False, "")
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.audit_job[0] and self.audit_chain[0] and self.escrow_status == 2


def actors(layers: int = 4) -> tuple[list[Actor], list[Actor]]:
    """(workers that do the job, verifiers that join afterwards) for a model of `layers` layers."""
    half = layers // 2
    first, second = f"0:{half}", f"{half}:{layers}"
    work = [
        Actor("worker-cheat", demo_account("worker-cheat"), first, "op-mallory", cheat="noise"),
        Actor("worker-honest", demo_account("worker-honest"), second, "op-alice"),
    ]
    verify = [
        Actor("verifier-1", demo_account("verifier-1"), first, "op-bob"),
        Actor("verifier-2", demo_account("verifier-2"), first, "op-carol"),
        # Work no replica can check is never paid: the honest worker's layers need one too.
        Actor("verifier-3", demo_account("verifier-3"), second, "op-dave"),
    ]
    return work, verify


def run_paid_inference(
    cluster: Cluster,
    *,
    prompts: list[str] | None = None,
    max_new_tokens: int = 24,
    say: Callable[[str], None] = lambda _m: None,
    write: Callable[[str], None] = lambda _m: None,
    generate_timeout: float = 120.0,
    settle_timeout: float = 150.0,
    markets: int = 1,
    during: Callable[[str], None] | None = None,
) -> Outcome:
    """The paid-inference story on `cluster`. `markets` > 1 starts that many market processes (the cluster's
    environment must share the swarm: GLOBAI_SHARED_COORDINATOR) and spreads the workers over them, each listing
    the others to reconnect to; `during(job_id)` runs once the job is funded (a test kills a process there, and
    may point `cluster.market_url` at a survivor). The live text stream is shown with one market process only."""
    out = Outcome()
    t0 = time.monotonic()
    c = cluster.contracts
    chain = cluster.chain

    say("• market, Celery worker")
    cluster.prepare()
    chat = _has_chat_template(cluster)
    prompts = prompts or (CHAT_PROMPTS if chat else DEFAULT_PROMPTS)
    work, verify = actors(cluster.cfg.layers)
    everyone = work + verify
    cluster.start_market()
    urls = [cluster.market_url] + [cluster.start_market(f"market{i}", port=free_port()) for i in range(1, markets)]
    if markets > 1:  # the verifier reaches the market through any of them (it moves on when one is down)
        cluster.env["GLOBAI_MARKET_URL"] = ",".join(urls)
    cluster.start_celery_worker()
    for a in everyone:  # top up to STAKE (a re-run on the same devnet finds the earlier stake, minus slashes)
        missing = STAKE - int(chain.call(c.vault.functions.stakeOf(a.account.address)))
        if missing > 0:
            cluster.stake(a.account, missing)
        else:
            cluster.give(a.account, 0)  # gas
    out.stake_before = {a.name: int(chain.call(c.vault.functions.stakeOf(a.account.address))) for a in everyone}
    credited0 = {a.name: int(chain.call(c.escrow.functions.balanceOf(a.account.address))) for a in everyone}
    say(f"• {STAKE // GLB} GLB staked by each of " + ", ".join(a.name for a in everyone))
    for i, a in enumerate(work):
        cluster.start_worker(
            a.name, a.account, layers=a.layers, operator=a.operator, cheat=a.cheat, market_url=_spread(urls, i)
        )
        say(
            f"• {a.name} {a.account.address} serves layers [{a.layers.replace(':', ', ')})"
            + ("  ← CHEATS: its outputs are scaled by 1.10 (GLOBAI_WORKER_CHEAT=noise)" if a.cheat else "")
        )
    cluster.wait_workers([a.account.address for a in work], timeout=300)
    out.timings["workers_up"] = time.monotonic() - t0

    requester = demo_account("requester")
    units = len(prompts) * max_new_tokens
    budget = PRICE_PER_UNIT * units * 3  # two stage parts per token, plus the fee; the rest is refunded
    cluster.give(requester, budget)
    spec = {
        "kind": "inference",
        "model": cluster.cfg.model,
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        # A real model answers greedily (the most likely answer); the tiny one samples (seeded, reproducible).
        "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 7}
        if chat
        else {"temperature": 0.8, "top_p": 0.95, "seed": 7},
    }
    if chat:
        spec["chat"] = True  # each prompt is a user message, rendered with the model's chat template
    out.job_id, out.funding_tx = cluster.post_and_fund(requester, spec, price_per_unit=PRICE_PER_UNIT, budget=budget)
    if chat:
        say(
            f"• the model is {cluster.cfg.model} (real pretrained weights, {cluster.cfg.layers} layers), split across"
            " two workers; each answer ends at the model's end-of-sequence token"
        )
    else:
        say("• the model is a tiny Llama with random weights (built locally): expect gibberish, not prose")
    say(
        f"• requester {requester.address} posted job {out.job_id} and funded {budget / GLB:g} GLB with a permit "
        f"(tx {out.funding_tx})"
    )

    if during is not None:
        during(out.job_id)
    client = cluster.requester(requester)
    if markets == 1:
        _stream(cluster, client, out.job_id, prompts, write)
    result = cluster.wait("the job to complete", lambda: _done(client, out.job_id), timeout=generate_timeout)
    out.outputs = result["outputs"]
    out.timings["generated"] = time.monotonic() - t0

    say("• verifiers join (they replay sampled chunks of the work on the same layers)")
    for i, a in enumerate(verify):
        cluster.start_worker(
            a.name, a.account, layers=a.layers, operator=a.operator, cheat=a.cheat, market_url=_spread(urls, i + 1)
        )
    cluster.wait_workers([a.account.address for a in verify], timeout=300)
    cluster.start_celery_beat()
    say("• Celery beat started: sample → replay → 2-of-3 → slash → settle")
    last = [""]

    def settled() -> dict[str, Any] | None:
        r = client.request("GET", f"/v1/jobs/{out.job_id}/result")
        v = r.get("verification") or {}
        if v.get("status") and v["status"] != last[0]:
            last[0] = v["status"]
            say(f"  verification: {v['status']}" + (f" ({v['detail']})" if v.get("detail") else ""))
        status = int(chain.call(c.escrow.functions.getJob(job_id_bytes(out.job_id, requester.address)))[3])
        return r if r.get("settlement") and status == 2 else None

    out.result = cluster.wait("verification and settlement", settled, timeout=settle_timeout, every=0.5)
    out.timings["settled"] = time.monotonic() - t0
    out.escrow_status = int(chain.call(c.escrow.functions.getJob(job_id_bytes(out.job_id, requester.address)))[3])
    out.settlement_tx = _settlement_tx(cluster, out.job_id, requester.address)
    out.credited = {
        a.name: int(chain.call(c.escrow.functions.balanceOf(a.account.address))) - credited0[a.name] for a in everyone
    }
    out.stake_after = {a.name: int(chain.call(c.vault.functions.stakeOf(a.account.address))) for a in everyone}

    record = cluster.var / "deployment.json"
    record.write_text(json.dumps(cluster.cfg.deployment.to_json()))
    report = f"{cluster.market_url}/v1/audit/jobs/{out.job_id}/report"
    job_audit = cluster.globai(
        "audit", "job", out.job_id, "--rpc", cluster.cfg.rpc_url, "--deployment", str(record), "--report", report
    )
    out.audit_job = (job_audit.returncode == 0, (job_audit.stdout + job_audit.stderr).strip())
    chain_audit = cluster.globai("audit", "chain", "--rpc", cluster.cfg.rpc_url, "--deployment", str(record))
    out.audit_chain = (chain_audit.returncode == 0, (chain_audit.stdout + chain_audit.stderr).strip())
    out.timings["audited"] = time.monotonic() - t0
    return out


def _spread(urls: list[str], i: int) -> str:
    """Worker i's market URLs: process i first, then the others (tried in turn after a lost connection)."""
    k = i % len(urls)
    return ",".join(urls[k:] + urls[:k])


def _has_chat_template(cluster: Cluster) -> bool:
    from globai.models.manifest import load_manifest

    manifest = load_manifest(cluster.var / "models" / cluster.cfg.model)
    return manifest.generation is not None and bool(manifest.generation.chat_template)


def _done(client: Any, job_id: str) -> dict[str, Any] | None:
    r = client.request("GET", f"/v1/jobs/{job_id}/result")
    if r["status"] == "cancelled":
        raise RuntimeError(f"job {job_id} could not be run and was refunded")
    return r if r["status"] == "completed" else None


def _stream(cluster: Cluster, client: Any, job_id: str, prompts: list[str], write: Callable[[str], None]) -> None:
    """Print the text as it is generated: the first sequence of each batch live, the others when it ends."""
    token = client.sign_in()
    n = len(prompts)
    with httpx.stream(
        "GET",
        f"{cluster.market_url}/v1/jobs/{job_id}/stream",
        params={"format": "ndjson"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(10, read=120),
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            ev = json.loads(line)
            first = int(ev.get("first_prompt", 0))
            if ev["event"] == "route":
                write(f"  batch {ev.get('batch', 0)}, route: {_route(ev)}\n")
                write(f"  [{first}] {prompts[first]!r} →")
            elif ev["event"] == "token":
                delta = (ev.get("text") or [""])[0]
                write(delta.replace("\n", " "))
            elif ev["event"] == "done":
                write("\n")
                for b, text in enumerate(ev.get("text") or []):
                    if b > 0 and first + b < n:
                        write(f"  [{first + b}] {prompts[first + b]!r} →{text.replace(chr(10), ' ')}\n")
            elif ev["event"] == "failover":
                write(f"\n  (failover: {ev.get('detail', ev)})\n")
            elif ev["event"] == "job_done":
                return


def _route(ev: dict[str, Any]) -> str:
    hops = ev.get("route") or []
    return " → ".join(f"layers {h['layers'][0]}-{h['layers'][1]} on {str(h.get('worker'))[:10]}…" for h in hops)


def _settlement_tx(cluster: Cluster, job_id: str, requester: str) -> str:
    c = cluster.contracts
    for ev in cluster.chain.get_logs([c.escrow], cluster.cfg.deployment.first_block):
        if ev.name == "JobSettled" and ev.args.get("jobId") == job_id_bytes(job_id, requester):
            return str(ev.tx_hash)
    return ""
