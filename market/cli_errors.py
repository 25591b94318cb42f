"""One line for any exception that reaches the `globai` command boundary (`market.cli.main`).

What was wrong and, where we know, what to do. Imports nothing heavy: a library's exception types are looked up
only when that library is already loaded (the exception came from it).
"""

from __future__ import annotations

import json
import sys

MAX_LINE = 400


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def _is(exc: BaseException, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def pydantic_errors(exc: BaseException) -> str:
    """`field: problem; field: problem` from a pydantic ValidationError (no input dump, no URLs)."""
    parts = []
    for err in exc.errors()[:6]:  # type: ignore[attr-defined]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "value"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        parts.append(f"{loc}: {msg}")
    more = len(exc.errors()) - 6  # type: ignore[attr-defined]
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def describe(exc: BaseException) -> str:
    from globai.errors import GlobaiError

    if isinstance(exc, GlobaiError):
        return _one_line(str(exc))
    if _is(exc, "pydantic", "ValidationError"):
        return _one_line(f"invalid {getattr(exc, 'title', 'input')}: {pydantic_errors(exc)}")
    if isinstance(exc, json.JSONDecodeError):
        return _one_line(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if isinstance(exc, FileNotFoundError):
        return _one_line(f"file not found: {exc.filename or exc}")
    if isinstance(exc, IsADirectoryError):
        return _one_line(f"{exc.filename} is a directory, a file was expected")
    if isinstance(exc, PermissionError):
        return _one_line(f"permission denied: {exc.filename or exc}")
    if _is(exc, "httpx", "HTTPError"):
        request = getattr(exc, "_request", None)
        where = f" {request.url}" if request is not None else ""
        return _one_line(f"cannot reach{where} ({type(exc).__name__}): is the market running? (`globai dev status`)")
    if _is(exc, "web3.exceptions", "Web3RPCError") or _is(exc, "web3.exceptions", "Web3ValueError"):
        text = str(exc)
        if "insufficient funds" in text.lower():
            return "the account has no ETH to pay for gas: fund it first (on the devnet: `globai devnet faucet ADDR`)"
        return _one_line(f"the chain refused the request: {text}")
    if _is(exc, "web3.exceptions", "Web3ValidationError") or _is(exc, "web3.exceptions", "MismatchedABI"):
        return "a value does not fit the contract call (negative or too large amount, bad address?)"
    if isinstance(exc, OSError):
        return _one_line(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    return _one_line(f"unexpected {type(exc).__name__}: {exc} (run `globai -v ...` for the traceback)")
