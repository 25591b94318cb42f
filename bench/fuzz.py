"""Nightly-style fuzz of the market over HTTP: schemathesis drives every operation of the OpenAPI schema against a
real `globai market serve` process (SQLite, its own port, its own Anvil with the contracts), signed in (every
role) and anonymous, and counts 5xx answers and answers the schema does not document (status, content type,
body).

    python bench/fuzz.py [--requests 5000] [--seed N]

Prints one line per operation with problems and a summary: requests, 5xx, undocumented.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import schemathesis  # noqa: E402
from eth_account import Account  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from globai.chain.client import ChainClient  # noqa: E402
from globai.chain.deploy import deploy_all  # noqa: E402
from globai.chain.local import dev_accounts  # noqa: E402
from globai.client import sign_in  # noqa: E402
from globai.dev.services import anvil_service, free_port, wait_port  # noqa: E402

CHECKS = [checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance]


def _runner(
    operation: Any, base: str, headers: dict[str, str], examples: int, counts: Counter[str], problems: Counter[str]
) -> Any:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        if case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        response = case.call(base_url=base, headers=dict(headers))
        counts["requests"] += 1
        if response.status_code >= 500:
            counts["5xx"] += 1
            problems[f"{operation.label} 5xx {response.status_code}"] += 1
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # noqa: BLE001 - each failure is counted, not raised
            counts["undocumented"] += 1
            problems[f"{operation.label} {response.status_code}: {str(exc).splitlines()[0][:120]}"] += 1

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    var = Path(tempfile.mkdtemp(prefix="globai-fuzz-"))
    port = free_port()
    admin = Account.create()
    env = {
        **os.environ,
        "GLOBAI_PROFILE": "test",
        "GLOBAI_DATABASE_URL": f"sqlite:///{var / 'market.db'}",
        "GLOBAI_AUTH_SECRET": "fuzz-secret-" + "0123456789abcdef" * 3,
        "GLOBAI_PORT": str(port),
        "GLOBAI_HOST": "127.0.0.1",
        "GLOBAI_ADMIN_ADDRESSES": f'["{admin.address}"]',
        "GLOBAI_AUTH_DOMAIN": "127.0.0.1",
        "GLOBAI_AUTH_URI": f"http://127.0.0.1:{port}",
        "GLOBAI_RATE_LIMIT_PER_S": "100000",
        "GLOBAI_RATE_LIMIT_BURST": "100000",
        "GLOBAI_MODELS_DIR": str(var / "models"),
        "GLOBAI_BLOB_DIR": str(var / "blobs"),
    }
    # A real chain (its own Anvil, contracts deployed), so chain routes answer instead of a (documented) 503.
    anvil = anvil_service()
    deployment = deploy_all(ChainClient(anvil.url), admin=dev_accounts(1)[0], treasury=dev_accounts(1)[0].address)
    env.update(
        {
            "GLOBAI_RPC_URL": anvil.url,
            "GLOBAI_CHAIN_ID": str(deployment.chain_id),
            "GLOBAI_STAKING_VAULT_ADDRESS": deployment.vault,
            "GLOBAI_JOB_ESCROW_ADDRESS": deployment.escrow,
            "GLOBAI_TOKEN_ADDRESS": deployment.token,
        }
    )
    cli = [sys.executable, "-c", "from market.cli import main; main()"]
    subprocess.run([*cli, "market", "migrate"], env=env, check=True, cwd=ROOT, capture_output=True)
    log = open(var / "market.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*cli, "market", "serve"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    counts: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    try:
        wait_port(port, timeout=60, proc=proc)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as http:
            token = sign_in(http, admin, ["requester", "worker", "auditor", "admin"])
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        per_op = max(1, args.requests // (2 * len(operations)))
        started = time.monotonic()
        rounds = 0
        while counts["requests"] < args.requests:  # hypothesis stops early on small input spaces: go round again
            for anonymous in (False, True):
                for operation in operations:
                    run = _runner(
                        operation,
                        base,
                        {} if anonymous else {"Authorization": f"Bearer {token}"},
                        per_op,
                        counts,
                        problems,
                    )
                    random.seed(seed + rounds)
                    run()
            rounds += 1
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        anvil.stop()
    for line, n in problems.most_common(30):
        print(f"{n:5d}  {line}")
    print(
        f"\nseed {seed}: {counts['requests']} requests over {len(operations)} operations in {elapsed:.0f} s "
        f"(signed in with every role, and anonymous): {counts['5xx']} 5xx, {counts['undocumented']} undocumented "
        f"(log {var / 'market.log'})"
    )
    sys.exit(1 if counts["5xx"] or counts["undocumented"] else 0)


if __name__ == "__main__":
    main()
