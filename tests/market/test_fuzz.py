"""Property-based fuzz of every operation in the OpenAPI schema (schemathesis, in-process ASGI): no 5xx, and
responses conform to the documented status codes and schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from eth_account import Account
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from sqlalchemy import Engine

from market.api import create_app
from tests.market.conftest import ADMIN, Clock, FakeChain, Market, empty_tables, make_settings, profile

pytestmark = pytest.mark.timeout(300)

AUTH: dict[str, str] = {}
# Auth-related checks (negative data, ignored auth) don't apply: every case is sent with a valid token.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(db_engine: Engine, db_url: str) -> Iterator[Any]:
    settings_ = make_settings(db_url)
    clock, chain = Clock(), FakeChain()
    app = create_app(settings_, engine=db_engine, chain=chain, clock=clock)
    with TestClient(app) as client:
        market = Market(client=client, clock=clock, chain=chain, engine=db_engine, settings=settings_)
        # One principal with every role that is also a staked worker and a requester with a funded job, so the
        # fuzzer gets past auth into the real handlers.
        chain.stake(ADMIN.address, 1000)
        headers = market.login(ADMIN, roles=["requester", "worker", "auditor", "admin"])
        assert client.post("/v1/workers", headers=headers, json=profile()).status_code == 200
        market.training_job(headers, tasks=50)
        market.worker(Account.create(), operator="op-2")
        AUTH.update(headers)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    empty_tables(db_engine)


def test_no_server_errors(api_schema: Any) -> None:
    # One hypothesis run per operation, driven from the Python API (schemathesis' pytest loader does not work
    # with this pytest); failures name the operation.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 18
    for operation in operations:

        @settings(
            max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            # Always with a valid token, so every case reaches the handler (the generated bearer values would all
            # stop at 401; the refusal paths have their own tests).
            if case.headers:
                case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
            response = case.call(headers=dict(AUTH))
            assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:500])
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc
