"""Every error the API returns has the documented {error, detail} body: unknown routes, wrong methods,
malformed JSON and schema failures included (FastAPI's and Starlette's defaults are not in the OpenAPI)."""

from __future__ import annotations

from tests.market.conftest import ADMIN, Market


def _is_error_body(body: object) -> bool:
    return (
        isinstance(body, dict) and set(body) == {"error", "detail"} and all(isinstance(v, str) for v in body.values())
    )


def test_error_bodies_match_the_schema(market: Market) -> None:
    c = market.client
    headers = market.login(ADMIN, roles=["requester", "worker", "admin"])
    unknown = c.get("/v1/no-such-route")
    assert unknown.status_code == 404 and _is_error_body(unknown.json())
    wrong = c.get("/v1/tasks/claim", headers=headers)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST" and _is_error_body(wrong.json())
    put = c.put("/v1/jobs", headers=headers)
    assert put.status_code == 405 and _is_error_body(put.json())
    malformed = c.post("/v1/jobs", headers={**headers, "content-type": "application/json"}, content=b"{not json")
    assert malformed.status_code == 422 and _is_error_body(malformed.json())
    missing = c.post("/v1/jobs", headers=headers, json={"spec": {}})
    assert missing.status_code == 422 and _is_error_body(missing.json()) and "body" in missing.json()["detail"]
    spec = c.get("/openapi.json").json()
    responses = spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert "405" in responses
