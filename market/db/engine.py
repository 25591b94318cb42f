"""Engine and session factories. Built by the entry point from Settings, never at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, pool_size: int = 10, async_commit: bool = False, echo: bool = False) -> Engine:
    """An engine for `url`. `async_commit` (Postgres) turns off waiting for the WAL flush at commit: a crash may
    lose the last fraction of a second of commits but never leaves the database inconsistent."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    connect_args = {"options": "-c synchronous_commit=off"} if async_commit else {}
    # No pool_pre_ping: it costs a round trip per request; stale connections are recycled instead.
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800, connect_args=connect_args, echo=echo
    )


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: two claimers can never both read a task as queued and
        # then both upgrade to writers (the deferred-transaction race), and busy_timeout queues them instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
