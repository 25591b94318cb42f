"""Celery processes log like every other daemon: our formatter (GLOBAI_LOG_FORMAT) on Celery's loggers, and per
task the job id (from a `job_id` argument) and the Celery task id as the run id on every line it logs."""

from __future__ import annotations

import logging
from typing import Any

from globai.logs import JOB_ID, RUN_ID, install_on

_installed = False
_tokens: dict[str, list[Any]] = {}


def install_task_logging() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from celery import signals

    @signals.after_setup_logger.connect(weak=False)
    def _root(logger: logging.Logger, **_kw: Any) -> None:
        install_on(logger)

    @signals.after_setup_task_logger.connect(weak=False)
    def _task(logger: logging.Logger, **_kw: Any) -> None:
        install_on(logger)

    @signals.task_prerun.connect(weak=False)
    def _bind(
        task_id: str,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        task: Any = None,
        **_kw: Any,
    ) -> None:
        job_id = (kwargs or {}).get("job_id")
        if job_id is None and args and "job_id" in _parameters(task):
            job_id = args[_parameters(task).index("job_id")]
        _tokens[task_id] = [JOB_ID.set(str(job_id) if job_id else None), RUN_ID.set(task_id)]

    @signals.task_postrun.connect(weak=False)
    def _unbind(task_id: str, **_kw: Any) -> None:
        tokens = _tokens.pop(task_id, None)
        if tokens:
            RUN_ID.reset(tokens[1])
            JOB_ID.reset(tokens[0])


def _parameters(task: Any) -> list[str]:
    import inspect

    try:
        names = list(inspect.signature(task.run).parameters)
    except (TypeError, ValueError):
        return []
    return names
