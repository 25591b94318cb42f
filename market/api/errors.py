"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from globai.errors import ChainError, ConfigError, GlobaiError, RpcUnavailable
from market.domain_errors import (
    AuthError,
    ChainNotConfigured,
    Conflict,
    Forbidden,
    InsufficientQuota,
    InvalidRequest,
    NotFound,
    RateLimited,
)

log = logging.getLogger(__name__)

# First match wins, so subclasses come before their bases.
STATUS_BY_ERROR: list[tuple[type[GlobaiError], int]] = [
    (RateLimited, 429),
    (InsufficientQuota, 402),
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 400),
    (ChainNotConfigured, 503),
    (RpcUnavailable, 503),
    (ConfigError, 503),
    (ChainError, 502),
    (GlobaiError, 400),
]


def status_for(exc: GlobaiError) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 400


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GlobaiError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if status >= 500:
        log.warning("chain unavailable: %s", exc)
    return error_response(status, type(exc).__name__, str(exc), headers)


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value that passed validation (e.g. a NUL character, which Postgres text cannot
    # hold, or a number out of a column's range): the client's input is at fault, not the server. Routes should
    # bound their inputs so this is never reached; this keeps a missed bound from being a 500.
    log.info("database refused a request value: %s", exc.__class__.__name__)
    return error_response(400, "InvalidValue", "a value in the request cannot be stored (e.g. NUL character)")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405, ...) in the documented {error, detail} shape."""
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
    return error_response(
        exc.status_code, phrase.replace(" ", "").replace("-", ""), str(exc.detail), dict(exc.headers or {})
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 for a body, query or path that fails its schema (malformed JSON included), as {error, detail}."""
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(422, "ValidationError", "; ".join(parts)[:2000] or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(GlobaiError, _handle)
    app.add_exception_handler(DataError, _data_error)
    # The SQLite driver raises a bare OverflowError for integers beyond 64 bits (Postgres: DataError above).
    app.add_exception_handler(OverflowError, _data_error)
