from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.settlement.support import Funder, empty, migrated_engine, operator_for


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    e = migrated_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'market.db'}")
    yield e
    e.dispose()


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    yield engine
    empty(engine)


@pytest.fixture
def funder(chain, deployment) -> Funder:  # type: ignore[no-untyped-def]
    funder = Funder(chain.client, deployment, chain.accounts[0], chain.accounts[1])
    funder.stake_payees()
    return funder


@pytest.fixture
def operator(chain, deployment):  # type: ignore[no-untyped-def]
    return operator_for(chain.client, deployment, chain.accounts[0])
