from __future__ import annotations

import pytest

from globai.chain.client import ChainClient
from globai.dev.services import free_port
from globai.errors import RpcUnavailable


def test_client_reads_chain_id_and_blocks(anvil) -> None:
    assert anvil.client.check() == 31337
    assert anvil.client.block_number() >= 0


def test_unreachable_rpc_is_one_clear_error() -> None:
    client = ChainClient(f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(RpcUnavailable, match="not reachable"):
        client.check()


def test_snapshot_revert_isolates_tests(chain) -> None:
    before = chain.client.block_number()
    chain.client.rpc("evm_mine")
    assert chain.client.block_number() == before + 1
