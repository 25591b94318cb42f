"""The chain indexer: killed mid-way (SIGKILL) and restarted, it records every event once - no duplicates, no gaps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from globai.chain.deploy import GLB
from globai.chain.web3_market import Web3ChainView
from market.db import ChainCursor, ChainEvent
from market.indexer import index_chain


def _activity(funder, chain, n: int = 12) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        worker = chain.accounts[2 + i % 6]
        funder.stake(worker, (i + 1) * GLB)  # transfer + approve + stake: one block each


def _env(db, chain, deployment) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        **os.environ,
        "GLOBAI_DATABASE_URL": str(db.url),
        "GLOBAI_RPC_URL": chain.url,
        "GLOBAI_STAKING_VAULT_ADDRESS": deployment.vault,
        "GLOBAI_JOB_ESCROW_ADDRESS": deployment.escrow,
        "GLOBAI_PROFILE": "dev",
    }


def _recorded(db) -> tuple[int, set[tuple[str, int]]]:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        rows = s.execute(select(ChainEvent.tx_hash, ChainEvent.log_index)).all()
        return len(rows), {(t, i) for t, i in rows}


def test_killed_indexer_resumes_without_duplicates_or_gaps(db, funder, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    _activity(funder, chain)
    with Session(db) as s:  # some events exist already for the direct call too
        funder.job(s)
    c = deployment.bind(chain.client)
    truth = {(e.tx_hash, e.log_index) for e in chain.client.get_logs([c.escrow, c.vault], deployment.first_block)}
    cmd = [
        sys.executable,
        "-m",
        "market.indexer",
        "--start-block",
        str(deployment.first_block),
        "--page",
        "1",
        "--page-delay",
        "0.03",
    ]
    proc = subprocess.Popen(cmd, env=_env(db, chain, deployment), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        with Session(db) as s:
            cursors = s.scalars(select(ChainCursor)).all()
        if cursors and min(c.block for c in cursors) >= deployment.first_block + 10:
            proc.send_signal(signal.SIGKILL)
            killed_at = {c.name: c.block for c in cursors}
            break
        time.sleep(0.02)
    proc.wait(timeout=10)
    assert killed_at is not None, "the indexer finished before it could be killed"
    count, seen = _recorded(db)
    assert count == len(seen) and seen < truth  # part done, nothing twice

    # Restart to completion (as the beat task would), then once more: nothing new.
    finished = subprocess.run(cmd[:-2], env=_env(db, chain, deployment), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    count, seen = _recorded(db)
    assert seen == truth and count == len(truth)

    view = Web3ChainView(chain.client, staking_address=deployment.vault, escrow_address=deployment.escrow)
    with Session(db) as s:
        again = index_chain(s, view, start_block=deployment.first_block)
        assert again.events == 0
        assert s.scalar(select(func.count()).select_from(ChainEvent)) == len(truth)
        cursors = {c.name: c.block for c in s.scalars(select(ChainCursor))}
    assert all(block >= max(b for _, b in [(0, chain.client.block_number())]) for block in cursors.values())
