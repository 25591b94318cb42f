"""The OpenAI-compatible API on a local cluster: an API key, a credit funded on chain (permit + fund), a streamed
chat through the official `openai` package and one through `curl`, then the credit closed, verified, settled on
chain and audited. `globai demo openai` prints it (the real SmolLM2 by default; `--model tiny` streams
completions, the tiny model has no chat template)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from globai.chain.deploy import GLB
from globai.dev.cluster import ROOT, Cluster
from globai.models.manifest import load_manifest
from market.demo.paid_inference import demo_account

STAKE = 200 * GLB
QUESTION = "What is the capital of France?"


@dataclass
class ApiOutcome:
    credit_id: str = ""
    answers: list[str] = field(default_factory=list)
    credit: dict[str, Any] = field(default_factory=dict)
    audit_job: tuple[bool, str] = (False, "")
    audit_chain: tuple[bool, str] = (False, "")

    @property
    def passed(self) -> bool:
        return self.audit_job[0] and self.audit_chain[0] and bool(self.credit.get("settlement"))


def _cli(cluster: Cluster, key: str, *args: str) -> str:
    env = {**cluster.env, "GLOBAI_PRIVATE_KEY": key}
    done = subprocess.run(
        [sys.executable, "-c", "from market.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if done.returncode != 0:
        raise RuntimeError(f"globai {' '.join(args)}: {(done.stdout + done.stderr).strip()[-400:]}")
    return done.stdout


def run_openai_api(
    cluster: Cluster,
    *,
    max_tokens: int = 48,
    say: Callable[[str], None] = lambda _m: None,
    write: Callable[[str], None] = lambda _m: None,
) -> ApiOutcome:
    import openai

    out = ApiOutcome()
    cluster.prepare()
    cluster.start_market()
    cluster.start_celery_worker()
    cluster.start_celery_beat()
    half, layers = cluster.cfg.layers // 2, cluster.cfg.layers
    workers = [
        ("api-w1", f"0:{half}", "op-a"),
        ("api-w2", f"{half}:{layers}", "op-b"),
        ("api-w3", f"0:{half}", "op-c"),
        ("api-w4", f"{half}:{layers}", "op-d"),
    ]
    for name, span, op in workers:
        account = demo_account(name)
        missing = STAKE - int(cluster.chain.call(cluster.contracts.vault.functions.stakeOf(account.address)))
        if missing > 0:
            cluster.stake(account, missing)
        else:
            cluster.give(account, 0)  # gas
        cluster.start_worker(name, account, layers=span, operator=op)
    cluster.wait_workers([demo_account(n).address for n, _, _ in workers], timeout=300)
    say(f"• 4 workers serve {cluster.cfg.model} ({layers} layers, two routes of two stages)")

    requester = demo_account("api-requester")
    cluster.give(requester, 5 * GLB)
    rkey = "0x" + bytes(requester.key).hex()
    api_key = _cli(cluster, rkey, "keys", "create", "--name", "demo").strip().splitlines()[-1]
    say(f"• API key {api_key[:10]}… created (shown once, stored as a hash): `globai keys create`")
    credit = json.loads(_cli(cluster, rkey, "credit", "fund", "1"))
    out.credit_id = credit["id"]
    say(f"• credit {out.credit_id}: 1 GLB escrowed on chain with a permit: `globai credit fund 1`")

    base = f"{cluster.market_url}/openai/v1"
    client = openai.OpenAI(base_url=base, api_key=api_key, max_retries=0, timeout=300)
    model = client.models.retrieve(cluster.cfg.model)
    pricing = (model.model_extra or {}).get("pricing", {})
    say(f"• {model.id}: {pricing.get('prompt')} wei per prompt token, {pricing.get('completion')} per completion token")
    served = load_manifest(cluster.var / "models" / cluster.cfg.model)
    chat = served.generation is not None and bool(served.generation.chat_template)
    write(f"  openai package, {'chat' if chat else 'completion'} ({QUESTION!r}) →")
    if chat:
        stream: Any = client.chat.completions.create(
            model=model.id,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": QUESTION}],
        )
    else:
        stream = client.completions.create(
            model=model.id,
            prompt=QUESTION,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    text = ""
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta.content if chat else chunk.choices[0].text
            text += delta or ""
            write(delta or "")
        elif chunk.usage is not None:
            billing = (chunk.model_extra or {}).get("globai", {})
            write(
                f"\n  usage {chunk.usage.prompt_tokens} + {chunk.usage.completion_tokens} tokens, charged "
                f"{billing.get('charged_wei')} wei (reserved {billing.get('reserved_wei')})\n"
            )
    out.answers.append(text)

    path = "chat/completions" if chat else "completions"
    body = {
        "model": model.id,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **({"messages": [{"role": "user", "content": QUESTION}]} if chat else {"prompt": QUESTION}),
    }
    say(f"  curl -sN {base}/{path} -H 'Authorization: Bearer {api_key[:10]}…' -d '{json.dumps(body)}' →")
    curl = subprocess.run(
        [
            "curl",
            "-sN",
            f"{base}/{path}",
            "-H",
            f"Authorization: Bearer {api_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = ""
    for line in curl.stdout.splitlines():
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            for c in data.get("choices") or []:
                text += (c.get("delta", {}).get("content") if chat else c.get("text")) or ""
    write(f"  {text}\n")
    out.answers.append(text)

    closed = json.loads(_cli(cluster, rkey, "credit", "close", out.credit_id))
    say(f"• credit closed ({closed['status']}): spent {closed['spent']} wei; verification and settlement follow")
    owner = cluster.requester(requester)

    def settled() -> dict[str, Any] | None:
        c = owner.request("GET", f"/v1/credits/{out.credit_id}")
        return c if c.get("settlement") else None

    out.credit = cluster.wait("the credit's settlement", settled, timeout=300, every=1.0)
    s = out.credit["settlement"]
    say(
        f"• settled on chain: paid {s['paid']} wei to the workers (= spent {out.credit['spent']}), fee {s['fee']}, "
        f"refunded {s['refunded']} wei; report root {s['report_root']}"
    )
    record = cluster.var / "deployment.json"
    record.write_text(json.dumps(cluster.cfg.deployment.to_json()))
    report = f"{cluster.market_url}/v1/audit/jobs/{out.credit_id}/report"
    job = cluster.globai(
        "audit", "job", out.credit_id, "--rpc", cluster.cfg.rpc_url, "--deployment", str(record), "--report", report
    )
    out.audit_job = (job.returncode == 0, (job.stdout + job.stderr).strip())
    chain = cluster.globai("audit", "chain", "--rpc", cluster.cfg.rpc_url, "--deployment", str(record))
    out.audit_chain = (chain.returncode == 0, (chain.stdout + chain.stderr).strip())
    return out
