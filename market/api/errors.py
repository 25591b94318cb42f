"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from market.domain_errors import (
    AuthError,
    ChainNotConfigured,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
)
from market.errors import ChainError, ConfigError, GlobaiError, RpcUnavailable

log = logging.getLogger(__name__)

# First match wins, so subclasses come before their bases.
STATUS_BY_ERROR: list[tuple[type[GlobaiError], int]] = [
    (RateLimited, 429),
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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GlobaiError, _handle)
    app.add_exception_handler(DataError, _data_error)
    # The SQLite driver raises a bare OverflowError for integers beyond 64 bits (Postgres: DataError above).
    app.add_exception_handler(OverflowError, _data_error)
