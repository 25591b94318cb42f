"""Chain indexer: every StakingVault and JobEscrow event into `chain_events`, resuming from `chain_cursors`.

The work is `market.services.chain_sync` (one cursor per contract; each page of events is committed together
with its cursor, and events are keyed by (chain, tx hash, log index), so a crash at any point repeats at most one
page and never stores an event twice or skips one). This module is the entry point: `index_chain()` for code and
the Celery beat task (`market.tasks.indexer`), `python -m market.indexer` for a stand-alone run.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from globai.chain.ports import ChainView
from market.services.chain_sync import SyncReport, sync_escrow, sync_stakes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexReport:
    stakes: SyncReport
    escrow: SyncReport

    @property
    def events(self) -> int:
        return self.stakes.events + self.escrow.events


def index_chain(
    session: Session,
    chain: ChainView,
    *,
    start_block: int = 0,
    page: int = 2000,
    confirmations: int = 0,
    max_pages: int | None = None,
    now: datetime | None = None,
) -> IndexReport:
    """Index new vault and escrow events (both from their own cursor, `start_block` the first time)."""
    at = now or datetime.now(UTC)
    stakes = sync_stakes(
        session, chain, now=at, start_block=start_block, page=page, confirmations=confirmations, max_pages=max_pages
    )
    escrow = sync_escrow(
        session, chain, now=at, start_block=start_block, page=page, confirmations=confirmations, max_pages=max_pages
    )
    return IndexReport(stakes=stakes, escrow=escrow)


class _SlowView:
    """Delays each page read (only for `--page-delay`, which tests use to kill the process mid-way)."""

    def __init__(self, inner: ChainView, delay: float) -> None:
        self._inner, self._delay = inner, delay

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def staking_logs(self, from_block: int, to_block: int):  # type: ignore[no-untyped-def]
        time.sleep(self._delay)
        return self._inner.staking_logs(from_block, to_block)

    def escrow_logs(self, from_block: int, to_block: int):  # type: ignore[no-untyped-def]
        time.sleep(self._delay)
        return self._inner.escrow_logs(from_block, to_block)


def main(argv: list[str] | None = None) -> None:
    from market.config import Settings
    from market.db.engine import make_engine, make_session_factory
    from market.services.chain_view import chain_view_from_settings

    parser = argparse.ArgumentParser(description="Index GlobAI contract events into the market DB.")
    parser.add_argument("--start-block", type=int, default=0)
    parser.add_argument("--page", type=int, default=None, help="blocks per page (default: settings)")
    parser.add_argument("--page-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    chain = chain_view_from_settings(settings)
    if chain is None:
        raise SystemExit("no chain configured (GLOBAI_STAKING_VAULT_ADDRESS / GLOBAI_JOB_ESCROW_ADDRESS)")
    view: ChainView = _SlowView(chain, args.page_delay) if args.page_delay else chain  # type: ignore[arg-type,assignment]
    engine = make_engine(settings.database_url, pool_size=1)
    with make_session_factory(engine)() as session:
        report = index_chain(
            session,
            view,
            start_block=args.start_block,
            page=args.page or settings.log_page_blocks,
            confirmations=settings.confirmations,
        )
    log.info("indexed %d new events up to block %d", report.events, report.escrow.to_block)
    engine.dispose()


if __name__ == "__main__":
    main()
