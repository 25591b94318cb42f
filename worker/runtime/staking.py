"""A worker's money on chain: stake, unstake (+ withdraw after unbonding), withdraw earnings, credited payments.

Which chain: `--rpc`, else GLOBAI_RPC_URL (the dev stack's state file fills it), else the running devnet. When the
market is known, its `/v1/info` must describe the same chain (id, genesis block, contracts): mixing a market on
one chain with staking on another is refused before anything is sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount

from globai.chain import local
from globai.chain.client import ChainClient
from globai.chain.deploy import BoundContracts, DeployedContract, Deployment, deployment_is_live
from globai.errors import ConfigError

GLB = 10**18


@dataclass
class Chain:
    client: ChainClient
    deployment: Deployment
    contracts: BoundContracts
    url: str


def _rpc_url(rpc: str | None) -> str:
    if rpc:
        return rpc
    if os.environ.get("GLOBAI_RPC_URL"):
        return os.environ["GLOBAI_RPC_URL"]
    # the running devnet, on whatever port `globai devnet up` gave it
    return local.rpc_url(local.running_port(local.DevnetPaths()) or local.DEFAULT_PORT)


def connect(rpc: str | None = None, *, market: str | None = None) -> Chain:
    """The chain and the GlobAI contracts on it; checked against the market's chain when `market` is given."""
    url = _rpc_url(rpc)
    env = {
        k: os.environ.get(f"GLOBAI_{k}", "") for k in ("STAKING_VAULT_ADDRESS", "JOB_ESCROW_ADDRESS", "TOKEN_ADDRESS")
    }
    if all(env.values()):
        client = ChainClient(url, retries=1)
        chain_id = client.check()
        block = int(os.environ.get("GLOBAI_CHAIN_START_BLOCK") or 0)
        deployment = Deployment(
            chain_id,
            {
                "GLBToken": DeployedContract(env["TOKEN_ADDRESS"], block),
                "StakingVault": DeployedContract(env["STAKING_VAULT_ADDRESS"], block),
                "JobEscrow": DeployedContract(env["JOB_ESCROW_ADDRESS"], block),
            },
        )
    else:
        client, deployment = local.connect(url)
    if not deployment_is_live(client, deployment):
        raise ConfigError(
            f"no GlobAI contracts at the recorded addresses on {url}: wrong chain? "
            "(`globai dev status` shows the stack's chain)"
        )
    chain = Chain(client, deployment, deployment.bind(client), url)
    if market:
        check_same_chain(chain, market)
    return chain


def genesis_hash(client: ChainClient) -> str:
    return "0x" + bytes(client.w3.eth.get_block(0)["hash"]).hex().removeprefix("0x")


def check_same_chain(chain: Chain, market: str) -> None:
    """Refuse when the market at `market` settles on another chain than `chain` (id, genesis, contracts)."""
    try:
        info = httpx.get(f"{market.rstrip('/')}/v1/info", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return  # no market to compare with: commands that need it fail on their own, with their own message
    ours = {
        "chain": chain.client.chain_id,
        "vault": chain.deployment.vault.lower(),
        "escrow": chain.deployment.escrow.lower(),
    }
    theirs = {
        "chain": info.get("chain_id"),
        "vault": str(info.get("staking_address") or "").lower(),
        "escrow": str(info.get("escrow_address") or "").lower(),
    }
    differs = [k for k in ours if theirs[k] and ours[k] != theirs[k]]
    if info.get("genesis_hash") and info["genesis_hash"] != genesis_hash(chain.client):
        differs.append("genesis block")
    if differs:
        raise ConfigError(
            f"the market at {market} uses another chain than {chain.url} ({', '.join(differs)} differ): point "
            "both at one chain (GLOBAI_RPC_URL / --rpc, or `globai dev up` and no overrides)"
        )


def stake_of(address: str, rpc: str | None = None) -> int:
    chain = connect(rpc)
    return int(chain.client.call(chain.contracts.vault.functions.stakeOf(address)))


def _need_gas(chain: Chain, account: LocalAccount) -> None:
    if int(chain.client.w3.eth.get_balance(account.address)) == 0:  # type: ignore[arg-type]
        raise ConfigError(
            f"{account.address} has no ETH to pay for gas on {chain.url}: fund it first "
            f"(devnet: `globai devnet faucet {account.address}`)"
        )


def stake_glb(
    account: LocalAccount, *, amount: int | None, rpc: str | None, faucet: bool, market: str | None = None
) -> tuple[int, int]:
    """Approve and stake `amount` wei (default: the vault minimum); returns (staked now, total stake).

    Everything is checked before the first transaction: gas money, GLB balance (or the devnet faucet)."""
    chain = connect(rpc, market=market)
    c = chain.contracts
    if amount is None:
        amount = int(chain.client.call(c.vault.functions.minStake()))
    _need_gas(chain, account)
    balance = int(chain.client.call(c.token.functions.balanceOf(account.address)))
    if balance < amount:
        if not faucet or not _is_devnet(chain):
            raise ConfigError(
                f"{account.address} holds {balance / GLB:,.4f} GLB, less than the {amount / GLB:,.4f} GLB to stake"
            )
        treasury = local.dev_accounts(1)[0]  # the devnet deployment mints the supply to account 0
        chain.client.transact(c.token.functions.transfer(account.address, amount - balance), treasury)
    chain.client.transact(c.token.functions.approve(c.vault.address, amount), account)
    chain.client.transact(c.vault.functions.stake(amount), account)
    return amount, int(chain.client.call(c.vault.functions.stakeOf(account.address)))


def _is_devnet(chain: Chain) -> bool:
    return chain.client.chain_id == 31337


def unstake(
    account: LocalAccount, *, amount: int | None, rpc: str | None, market: str | None = None
) -> tuple[int, int]:
    """Request unstaking of `amount` wei (default: the whole stake); returns (amount, release unix time)."""
    chain = connect(rpc, market=market)
    vault = chain.contracts.vault
    staked = int(chain.client.call(vault.functions.stakeOf(account.address)))
    amount = staked if amount is None else amount
    if amount == 0 or amount > staked:
        raise ConfigError(
            f"{account.address} has {staked / GLB:,.4f} GLB staked; cannot unstake {amount / GLB:,.4f} GLB"
        )
    _need_gas(chain, account)
    chain.client.transact(vault.functions.requestUnstake(amount), account)
    _, release = chain.client.call(vault.functions.unbondingOf(account.address))
    return amount, int(release)


def unbonding(account_address: str, rpc: str | None = None) -> tuple[int, int, int]:
    """(unbonding amount, release unix time, chain time now)."""
    chain = connect(rpc)
    amount, release = chain.client.call(chain.contracts.vault.functions.unbondingOf(account_address))
    now = int(chain.client.w3.eth.get_block("latest")["timestamp"])
    return int(amount), int(release), now


def withdraw_stake(account: LocalAccount, *, rpc: str | None) -> int:
    """Withdraw unbonded stake (after the unbonding period); returns wei received."""
    chain = connect(rpc)
    amount, release = chain.client.call(chain.contracts.vault.functions.unbondingOf(account.address))
    now = int(chain.client.w3.eth.get_block("latest")["timestamp"])
    if int(amount) == 0:
        raise ConfigError(f"{account.address} has nothing unbonding: `globai worker unstake` first")
    if now < int(release):
        raise ConfigError(
            f"{int(amount) / GLB:,.4f} GLB unbond at unix time {int(release)} "
            f"(in {(int(release) - now) / 3600:.1f} h); withdraw after that"
        )
    _need_gas(chain, account)
    chain.client.transact(chain.contracts.vault.functions.withdraw(), account)
    return int(amount)


def withdraw_earnings(account: LocalAccount, *, rpc: str | None, market: str | None = None) -> tuple[int, str]:
    """Withdraw everything the escrow credited to `account`; returns (wei, tx hash)."""
    chain = connect(rpc, market=market)
    escrow = chain.contracts.escrow
    credited = int(chain.client.call(escrow.functions.balanceOf(account.address)))
    if credited == 0:
        raise ConfigError(f"nothing to withdraw: the escrow holds no earnings for {account.address}")
    _need_gas(chain, account)
    receipt = chain.client.transact(escrow.functions.withdraw(), account)
    return credited, "0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x")


def escrow_history(address: str, *, rpc: str | None, market: str | None = None) -> dict[str, Any]:
    """From the escrow's events alone: per chain job id what was credited to `address`, what it withdrew, and what
    it can withdraw now."""
    chain = connect(rpc, market=market)
    escrow = chain.contracts.escrow
    credited: dict[str, int] = {}
    withdrawn = 0
    for ev in chain.client.get_logs([escrow], chain.deployment.first_block):
        if ev.name == "PaymentCredited" and str(ev.args["payee"]).lower() == address.lower():
            key = "0x" + bytes(ev.args["jobId"]).hex()
            credited[key] = credited.get(key, 0) + int(ev.args["amount"])
        elif ev.name == "Withdrawn" and str(ev.args["account"]).lower() == address.lower():
            withdrawn += int(ev.args["amount"])
    balance = int(chain.client.call(escrow.functions.balanceOf(address)))
    return {"credited": credited, "withdrawn": withdrawn, "withdrawable": balance}
