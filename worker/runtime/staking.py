"""Read and add a worker's stake on chain (the market decides eligibility; this is the worker's own view)."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount

from market.chain import devnet
from market.chain.client import ChainClient
from market.chain.deploy import Deployment
from market.devservices import dev_accounts

GLB = 10**18


def _connect(rpc: str | None) -> tuple[ChainClient, Deployment]:
    paths = devnet.DevnetPaths()
    if rpc is None:  # the running devnet, on whatever port `globai devnet up` gave it
        port = devnet.DEFAULT_PORT
        if devnet.running_pid(paths) is not None:
            port = int(paths.pid_file.read_text().split()[1])
        rpc = devnet.rpc_url(port)
    return devnet.connect(rpc, paths)


def stake_of(address: str, rpc: str | None = None) -> int:
    client, record = _connect(rpc)
    return int(client.call(record.bind(client).vault.functions.stakeOf(address)))


def stake_glb(account: LocalAccount, *, amount_glb: float | None, rpc: str | None, faucet: bool) -> tuple[int, int]:
    """Approve and stake `amount_glb` (default: the vault minimum); returns (staked now, total stake)."""
    client, record = _connect(rpc)
    contracts = record.bind(client)
    amount = int(amount_glb * GLB) if amount_glb else int(client.call(contracts.vault.functions.minStake()))
    balance = int(client.call(contracts.token.functions.balanceOf(account.address)))
    if balance < amount and faucet:
        treasury = dev_accounts(1)[0]  # the devnet deployment mints the supply to account 0
        client.transact(contracts.token.functions.transfer(account.address, amount - balance), treasury)
    client.transact(contracts.token.functions.approve(contracts.vault.address, amount), account)
    client.transact(contracts.vault.functions.stake(amount), account)
    return amount, int(client.call(contracts.vault.functions.stakeOf(account.address)))
