"""`globai devnet up|down|status`."""

from __future__ import annotations

import typer

from globai.errors import ConfigError

DEFAULT_PORT = 8545  # globai.chain.local.DEFAULT_PORT (not imported here: web3 loads only when a command runs)

app = typer.Typer(help="A local Anvil chain with persisted state and the GlobAI contracts deployed once.")

PortOpt = typer.Option(DEFAULT_PORT, "--port", help="Port for a devnet that is not running yet.")


@app.command()
def up(port: int = PortOpt) -> None:
    """Start the devnet (or reuse the running one) and deploy the contracts if they are not deployed."""
    from globai.dev import devnet

    url, record, started, deployed = devnet.up(port)
    note = "" if started or url.endswith(f":{port}") else f" (--port {port} ignored; set GLOBAI_RPC_URL={url})"
    typer.echo(f"devnet {'started' if started else 'already running'} at {url} (chain {record.chain_id}){note}")
    typer.echo("contracts deployed now" if deployed else "contracts already deployed")
    for name, info in record.contracts.items():
        typer.echo(f"  {name:13s} {info.address}")


@app.command()
def down() -> None:
    """Stop the devnet cleanly; its state is kept for the next `up`."""
    from globai.chain import local
    from globai.dev import devnet

    stopped = devnet.stop_anvil(local.DevnetPaths())
    typer.echo("devnet stopped" if stopped else "devnet was not running")


@app.command()
def status(
    rpc: str = typer.Option(None, "--rpc", help="RPC URL (default: the running devnet)."),
) -> None:
    """Show chain, block, contract addresses and token balances."""
    from globai.chain import local

    rpc = rpc or _running_rpc()
    client, record = local.connect(rpc)
    token = client.contract("GLBToken", record.token)
    typer.echo(f"rpc {rpc}  chain {client.chain_id}  block {client.block_number()}")
    for name, info in record.contracts.items():
        balance = client.call(token.functions.balanceOf(info.address))
        typer.echo(f"  {name:13s} {info.address}  GLB {balance / 10**18:,.4f}")


@app.command()
def faucet(
    address: str = typer.Argument(..., help="Account to fund."),
    amount: float = typer.Option(1000.0, "--amount", help="GLB to send from the devnet treasury."),
    rpc: str = typer.Option(None, "--rpc", help="RPC URL (default: the running devnet)."),
) -> None:
    """Send GLB from the devnet treasury (Anvil account 0) to ADDRESS."""
    from eth_utils import is_address, to_checksum_address
    from web3 import Web3

    from globai.chain import local

    if not is_address(address):
        raise ConfigError(f"not an Ethereum address: {address!r}")
    client, record = local.connect(rpc or _running_rpc())
    token = client.contract("GLBToken", record.token)
    receipt = client.transact(
        token.functions.transfer(to_checksum_address(address), int(amount * 10**18)), local.dev_accounts(1)[0]
    )
    balance = client.call(token.functions.balanceOf(to_checksum_address(address)))
    typer.echo(
        f"sent {amount:,.4f} GLB to {address} (tx {Web3.to_hex(receipt['transactionHash'])}); "
        f"balance {balance / 10**18:,.4f} GLB"
    )


def _running_rpc() -> str:
    from globai.chain import local

    port = local.running_port(local.DevnetPaths())
    if port is None:
        raise ConfigError("devnet is not running: start it with `globai devnet up`")
    return local.rpc_url(port)
