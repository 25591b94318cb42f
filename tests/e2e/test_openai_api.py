"""Acceptance for the paid OpenAI-compatible API, through the official `openai` client against a running market
(uvicorn), real `globai worker run` processes, Celery worker + beat, Anvil and Redis.

One cluster per module: a tiny Llama given a chat template, four workers (two routes of two stages, four
operators, so sampled chunks are replayed on another operator's worker). The tests run in file order; the last
one closes the credits and checks their on-chain settlement against the usage the API reported, to the wei,
then `globai audit job` and `globai audit chain`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from eth_account.signers.local import LocalAccount

from globai.chain.deploy import GLB
from globai.dev.cluster import MODEL, ROOT, Cluster, ClusterConfig
from globai.models.importer import import_checkpoint
from globai.models.tiny import build_tiny_llama
from market.demo.paid_inference import demo_account
from market.settlement.payout import fee_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STAKE = 200 * GLB
WORKERS = [("w-a", "0:2", "op-a"), ("w-b", "2:4", "op-b"), ("w-c", "0:2", "op-c"), ("w-d", "2:4", "op-d")]
PROMPT = "Once upon a time"
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "The market pays"}]


@dataclass
class Api:
    cluster: Cluster
    requester: LocalAccount
    workers: dict[str, LocalAccount]
    base_url: str
    key: str = ""
    credit_id: str = ""
    usage: list[dict[str, Any]] = field(default_factory=list)  # the `globai` billing of every served request
    lock: threading.Lock = field(default_factory=threading.Lock)
    small: tuple[LocalAccount, str, int] | None = None  # second requester: (account, credit id, requests served)

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key or self.key, max_retries=0, timeout=120)

    def record(self, response: Any) -> Any:
        billing = (response.model_extra or {}).get("globai")
        assert billing is not None and int(billing["charged_wei"]) <= int(billing["reserved_wei"])
        with self.lock:
            self.usage.append(billing)
        return response

    def cli(self, account: LocalAccount, *args: str) -> str:
        env = {**self.cluster.env, "GLOBAI_PRIVATE_KEY": "0x" + bytes(account.key).hex()}
        done = subprocess.run(
            [sys.executable, "-c", "from market.cli import main; main()", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def credit(self, account: LocalAccount, credit_id: str) -> dict[str, Any]:
        return dict(self.cluster.requester(account).request("GET", f"/v1/credits/{credit_id}"))


def chat_model(models: Path) -> None:
    """The cluster's tiny Llama, re-imported with a chat template (and the EOS id of its config)."""
    out = models / MODEL
    build_tiny_llama(out, hidden=128, layers=4, seed=0)
    (out / "hf" / "chat_template.jinja").write_text(TEMPLATE)
    import_checkpoint(out / "hf", out, name=MODEL, overwrite=True)


@pytest.fixture(scope="module")
def api(anvil: Any, deployment: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    snapshot = anvil.snapshot()
    var = tmp_path_factory.mktemp("openai")
    chat_model(var / "models")
    cfg = ClusterConfig(
        var=var, rpc_url=anvil.url, deployment=deployment, operator=anvil.accounts[0], redis_url=redis_url, redis_db=12
    )
    cluster = Cluster(cfg)
    try:
        cluster.prepare()
        cluster.start_market()
        cluster.start_celery_worker()
        accounts = {name: demo_account(f"openai-{name}") for name, _, _ in WORKERS}
        for name, layers, op in WORKERS:
            cluster.stake(accounts[name], STAKE)
            cluster.start_worker(name, accounts[name], layers=layers, operator=op)
        cluster.wait_workers([a.address for a in accounts.values()])
        requester = demo_account("openai-requester")
        cluster.give(requester, 10 * GLB)
        yield Api(cluster, requester, accounts, f"{cluster.market_url}/openai/v1")
    finally:
        cluster.stop()
        anvil.revert(snapshot)


def test_keys_and_credit_from_the_cli_402_before_funding(api: Api) -> None:
    key = api.cli(api.requester, "keys", "create", "--name", "tests").strip().splitlines()[-1]
    assert key.startswith("glb-")
    listed = json.loads(api.cli(api.requester, "keys", "list"))
    assert [k["prefix"] for k in listed] == [key[:10]] and "key" not in listed[0]  # shown once, stored hashed
    api.key = key
    with pytest.raises(openai.APIStatusError) as err:  # no credit yet
        api.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert err.value.status_code == 402 and err.value.code == "insufficient_quota"
    funded = json.loads(api.cli(api.requester, "credit", "fund", "1", "--days", "2"))
    assert funded["status"] == "open" and funded["funded"] == str(GLB) and funded["job_status"] == "funded"
    api.credit_id = funded["id"]


def test_models_completions_seed_stop_logprobs_and_400s(api: Api) -> None:
    c = api.client()
    listed = {m.id: m for m in c.models.list().data}
    assert int(listed[MODEL].model_extra["pricing"]["completion"]) > 0
    with pytest.raises(openai.NotFoundError) as nf:
        c.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)
    assert nf.value.code == "model_not_found"

    greedy = api.record(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0))
    text = greedy.choices[0].text
    assert greedy.usage.prompt_tokens > 0 and 1 <= greedy.usage.completion_tokens <= 12 and text

    # Same seed, same output; another seed, another one.
    kw: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 10, "temperature": 1.0}
    a = api.record(c.completions.create(seed=7, **kw)).choices[0].text
    b = api.record(c.completions.create(seed=7, **kw)).choices[0].text
    d = api.record(c.completions.create(seed=8, **kw)).choices[0].text
    assert a == b and a != d

    # A stop string from the middle of the greedy text: cut before it, fewer tokens, finish_reason "stop".
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = api.record(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop]))
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < greedy.usage.completion_tokens

    # Logprobs from the final logits: greedy picks the most likely token every step.
    lp = api.record(
        c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3, stop=None)
    )
    got = lp.choices[0].logprobs
    assert len(got.token_logprobs) == lp.usage.completion_tokens and all(len(t) == 3 for t in got.top_logprobs)
    assert all(abs(v - max(top.values())) < 1e-4 for v, top in zip(got.token_logprobs, got.top_logprobs, strict=True))

    many = api.record(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=3, seed=3))
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    assert 3 <= many.usage.completion_tokens <= 18

    # Clear 400s: an unsupported parameter, n beyond the batch limit, a context overflow.
    with pytest.raises(openai.BadRequestError) as bad:
        c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"logit_bias": {"1": 5}})
    assert bad.value.param == "logit_bias" and bad.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, n=9)
    with pytest.raises(openai.BadRequestError) as long:
        c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=100_000)
    assert long.value.code == "context_length_exceeded"


def _stream_chat(api: Api, seed: int, content: str) -> tuple[str, str | None, Any]:
    chunks = list(
        api.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": content}],
            max_tokens=8,
            temperature=0.7,
            seed=seed,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and len(reasons) == 1
    api.record(chunks[-1])
    return text, reasons[0], chunks[-1].usage


def test_chat_streaming_logprobs_and_eight_concurrent_streams(api: Api) -> None:
    c = api.client()
    whole = api.record(
        c.chat.completions.create(
            model=MODEL, messages=CHAT, max_completion_tokens=8, temperature=0, logprobs=True, top_logprobs=2
        )
    )
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert len(choice.logprobs.content) == whole.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_completion_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == choice.message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    api.record(chunks[-1])
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=4,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert bad.value.param == "tools"

    before = api.credit(api.requester, api.credit_id)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _stream_chat(api, i, f"Question number {i}"), range(8)))
    assert all(reason in ("stop", "length") and usage.completion_tokens >= 1 for _, reason, usage in results)
    after = api.credit(api.requester, api.credit_id)
    assert after["reserved"] == "0" and int(after["spent"]) > int(before["spent"])


def test_rate_limit_and_revoked_key(api: Api) -> None:
    key = api.cli(api.requester, "keys", "create", "--name", "slow", "--rate", "2").strip().splitlines()[-1]
    c = api.client(key)
    c.models.list()
    c.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        c.models.list()
    assert int(limited.value.response.headers["retry-after"]) >= 1
    key_id = next(k["id"] for k in json.loads(api.cli(api.requester, "keys", "list")) if k["name"] == "slow")
    api.cli(api.requester, "keys", "revoke", key_id)  # the key is checked before its rate limit: 401, not 429
    with pytest.raises(openai.AuthenticationError) as revoked:
        c.models.list()
    assert revoked.value.status_code == 401


def test_spent_credit_answers_402_and_serves_nothing_more(api: Api) -> None:
    other = demo_account("openai-requester-2")
    api.cluster.give(other, GLB)
    key = api.cli(other, "keys", "create").strip().splitlines()[-1]
    funded = json.loads(api.cli(other, "credit", "fund", "0.0001"))  # a few requests' worth
    c = api.client(key)
    served = 0
    while True:
        try:
            api.record(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0))
            served += 1
        except openai.APIStatusError as exc:
            assert exc.status_code == 402 and exc.code == "insufficient_quota"
            break
        assert served < 20
    state = api.credit(other, funded["id"])
    assert served >= 2 and sum(k["requests"] for k in state["keys"]) == served  # the refused one never ran
    spent = int(state["spent"])
    assert spent + fee_of(spent, state["fee_bps"]) <= int(state["funded"])
    api.small = (other, funded["id"], served)


def test_credits_settle_on_chain_to_the_wei_and_audits_pass(api: Api) -> None:
    cluster = api.cluster
    assert api.small is not None
    other, small_id, small_served = api.small
    closed = json.loads(api.cli(api.requester, "credit", "close", api.credit_id))
    assert closed["status"] == "closed" and closed["job_status"] == "completed"
    api.cli(other, "credit", "close", small_id)
    escrow = cluster.contracts.escrow
    workers0 = sum(int(cluster.chain.call(escrow.functions.balanceOf(a.address))) for a in api.workers.values())
    cluster.start_celery_beat()

    def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
        a, b = api.credit(api.requester, api.credit_id), api.credit(other, small_id)
        return (a, b) if a["settlement"] and b["settlement"] else None

    big, small = cluster.wait("both credits settled", settled, timeout=240, every=1.0)
    status = json.loads(api.cli(api.requester, "credit", "status", "--json"))
    assert [s["job_status"] for s in status] == ["settled"]

    # To the wei: Σ charged of every request the API reported = spent = paid; fee on top; the rest refunded.
    charged = {u["request_id"]: int(u["charged_wei"]) for u in api.usage}
    small_report = cluster.requester(other).request("GET", f"/v1/audit/jobs/{small_id}/report")
    report = cluster.requester(api.requester).request("GET", f"/v1/audit/jobs/{api.credit_id}/report")
    for credit, rep in ((big, report), (small, small_report)):
        paid = int(credit["settlement"]["paid"])
        assert paid == int(credit["spent"]) == int(rep["paid"]) and credit["reserved"] == "0"
        assert int(rep["fee"]) == fee_of(paid, credit["fee_bps"])
        assert int(rep["refunded"]) == int(credit["funded"]) - paid - int(rep["fee"])
    assert int(big["spent"]) + int(small["spent"]) == sum(charged.values())
    assert len(charged) == len(api.usage)  # one billing record per request
    # Every served request's run is in its credit's report (paid parts of its workers).
    runs = {u["run_id"] for u in api.usage}
    reported = {r["task"].split("/")[0] for r in report["records"] + small_report["records"]}
    assert runs <= reported and len(reported) == len(runs)
    assert len({r["task"].split("/")[0] for r in small_report["records"]}) == small_served

    # On chain: the workers were credited exactly what was paid, the requester the refund.
    workers1 = sum(int(cluster.chain.call(escrow.functions.balanceOf(a.address))) for a in api.workers.values())
    assert workers1 - workers0 == int(report["paid"]) + int(small_report["paid"])
    assert int(cluster.chain.call(escrow.functions.balanceOf(api.requester.address))) == int(report["refunded"])

    print(
        f"\nopenai e2e: {len(api.usage)} requests, reserved {sum(int(u['reserved_wei']) for u in api.usage)} wei, "
        f"charged {sum(charged.values())} wei = paid {int(report['paid']) + int(small_report['paid'])} wei "
        f"(fee {int(report['fee']) + int(small_report['fee'])}, refunded "
        f"{int(report['refunded']) + int(small_report['refunded'])}); {len(report['records'])} + "
        f"{len(small_report['records'])} report records"
    )
    record = cluster.var / "deployment.json"
    record.write_text(json.dumps(cluster.cfg.deployment.to_json()))
    for credit_id in (api.credit_id, small_id):
        job = cluster.globai(
            "audit",
            "job",
            credit_id,
            "--rpc",
            cluster.cfg.rpc_url,
            "--deployment",
            str(record),
            "--report",
            f"{cluster.market_url}/v1/audit/jobs/{credit_id}/report",
        )
        assert job.returncode == 0, job.stdout + job.stderr
    chain = cluster.globai("audit", "chain", "--rpc", cluster.cfg.rpc_url, "--deployment", str(record))
    assert chain.returncode == 0, chain.stdout + chain.stderr
