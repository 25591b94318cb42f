"""Logging for every daemon: plain text by default, or one JSON object per line (`GLOBAI_LOG_FORMAT=json`).

Every JSON line carries `request_id`, `run_id` and `job_id` (null when the event belongs to none): they come from
context variables that the market's request middleware, the coordinator (one generation), the paid-job runner and
the Celery task hooks set for the code they run, so an operator can follow one request, run or job across lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("globai_request_id", default=None)
RUN_ID: ContextVar[str | None] = ContextVar("globai_run_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("globai_job_id", default=None)
IDS = {"request_id": REQUEST_ID, "run_id": RUN_ID, "job_id": JOB_ID}

FORMATS = ("text", "json")
ENV = "GLOBAI_LOG_FORMAT"
# Attributes every LogRecord has; anything else passed with `extra=` is written as a field of its own.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    """Copies the current request / run / job ids onto every record (also for text output: `%(job_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in IDS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the three ids, `extra=` fields, exception text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for name, var in IDS.items():
            value = getattr(record, name, None)
            out[name] = value if value is not None else var.get()
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def log_format(value: str | None = None) -> str:
    fmt = (value or os.environ.get(ENV) or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"{ENV} must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def configure(fmt: str | None = None, *, level: int = logging.WARNING, stream: Any = None) -> str:
    """Set up the root logger once per process (replacing earlier handlers). Returns the format in use.

    The format is exported to the environment so child processes (uvicorn workers, Celery, workers started by
    the demo) log the same way."""
    chosen = log_format(fmt)
    os.environ[ENV] = chosen
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return chosen


def install_on(logger: logging.Logger) -> None:
    """Give a logger that someone else set up (Celery's, uvicorn's) our formatter and context filter."""
    fmt = log_format()
    for handler in logger.handlers:
        handler.addFilter(ContextFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Set some of request_id / run_id / job_id for the code inside (and the tasks it creates)."""
    tokens = [(IDS[name], IDS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
