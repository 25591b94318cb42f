"""Sending Celery tasks by name from a process that is not a Celery worker (the market API)."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery


class TaskProducer:
    """One broker connection per process, opened on first use (an API that never enqueues never connects)."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._app: Celery | None = None
        self._lock = threading.Lock()

    def send(self, name: str, *args: Any) -> None:
        """Enqueue task `name` once, without retrying: callers decide what a broker outage means."""
        with self._lock:
            if self._app is None:
                self._app = Celery("globai-api", broker=self.redis_url)
                self._app.conf.update(
                    task_serializer="json",
                    accept_content=["json"],
                    broker_connection_timeout=2,
                    broker_connection_retry_on_startup=False,
                )
        self._app.send_task(name, args=list(args), retry=False)
