"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the status OpenAI uses."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

PREFIX = "/openai/"

# status -> (type, default code)
KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorBody


RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorOut, "description": f"{kind}: {code}"} for status, (kind, code) in KINDS.items()
}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status if status in KINDS else 503  # never a 500: anything unforeseen is "unavailable"
        self.message = message
        self.code = code or KINDS[self.status][1]
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": KINDS[self.status][0], "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """One line from pydantic's errors, and the offending top-level parameter."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {where}", param
    return f"Invalid value for '{where}': {first.get('msg', 'invalid')}", param


def install(app: FastAPI) -> None:
    """OpenAI-shaped answers for everything under /openai/; elsewhere the handlers installed before (the market's
    own shape, market/api/errors.py) still answer. Call after `install_error_handlers`."""
    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler

    before_validation = app.exception_handlers.get(RequestValidationError, request_validation_exception_handler)
    before_http = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)

    async def on_openai_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        return exc.response()

    async def on_validation(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith(PREFIX):
            message, param = validation_message(list(exc.errors()))
            return OpenAIError(400, message, param=param).response()
        answer = before_validation(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    async def on_http(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(PREFIX):
            status = exc.status_code if exc.status_code in KINDS else 400
            return OpenAIError(status, str(exc.detail)).response()
        answer = before_http(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
