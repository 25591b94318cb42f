"""Typed client over web3.py used by every component that touches the chain.

- transactions are signed locally (eth-account) with per-sender nonce management;
- transient RPC errors are retried with backoff, reverts are decoded into their custom error;
- events are decoded strictly: a log emitted by a watched contract that matches no event of its ABI
  raises `EventDecodeError` instead of being dropped;
- log queries are paged by block range.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3RPCError

from globai.chain.artifacts import load_artifact
from globai.chain.ports import ChainLog
from globai.errors import ChainError, EventDecodeError, RpcUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = (ConnectionError, TimeoutError, OSError)


class ContractReverted(ChainError):
    """A call or transaction reverted; `error` is the decoded custom error name (or the revert reason)."""

    def __init__(self, error: str, args: tuple[Any, ...] = (), tx_hash: str | None = None) -> None:
        where = f" in {tx_hash}" if tx_hash else ""
        super().__init__(f"reverted{where}: {error}{args if args else ''}")
        self.error = error
        self.args_ = args
        self.tx_hash = tx_hash


def _error_selectors(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for item in abi:
        if item.get("type") == "error":
            types = [inp["type"] for inp in item.get("inputs", [])]
            signature = f"{item['name']}({','.join(types)})"
            table[keccak(text=signature)[:4]] = (item["name"], types)
    return table


class ChainClient:
    """A connection to one EVM RPC endpoint."""

    def __init__(
        self,
        rpc_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        poll_interval: float = 0.02,
        tx_lock: Callable[[str], AbstractContextManager[Any]] | None = None,
    ):
        """`tx_lock(address)`: a lock shared by every process sending from that address (`redis_tx_lock`); while
        it is held the nonce is read from the node and the transaction sent, so several processes (Celery
        workers settling and slashing, the market) can use one key without nonce races."""
        self.rpc_url = rpc_url
        self.tx_lock = tx_lock
        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.timeout = timeout
        self.retries = retries
        self.poll_interval = poll_interval
        self._nonces: dict[str, int] = {}
        self._nonce_lock = threading.Lock()
        self._errors: dict[bytes, tuple[str, list[str]]] = {}
        self._chain_id: int | None = None

    # --- connection -------------------------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise RpcUnavailable(self.rpc_url, f"{what}: {exc.__class__.__name__}") from exc
                log.info("transient RPC error on %s (%s); retrying", what, exc)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self._retry("eth_chainId", lambda: int(self.w3.eth.chain_id))
        return self._chain_id

    def check(self) -> int:
        """Raise `RpcUnavailable` unless the endpoint answers; return the chain id."""
        try:
            return self.chain_id
        except RpcUnavailable:
            raise
        except Exception as exc:  # a non-JSON answer, a refused connection wrapped by requests, ...
            raise RpcUnavailable(self.rpc_url, exc.__class__.__name__) from exc

    def block_number(self) -> int:
        return self._retry("eth_blockNumber", lambda: int(self.w3.eth.block_number))

    def rpc(self, method: str, *params: Any) -> Any:
        """A raw JSON-RPC call (e.g. `evm_snapshot` on Anvil)."""
        response = self._retry(method, lambda: self.w3.provider.make_request(method, list(params)))  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"{method} failed: {response['error']}")
        return response["result"]

    # --- contracts --------------------------------------------------------------------------------------------

    def contract(self, name: str, address: str) -> Contract:
        """A web3 contract bound to the ABI of artifact `name`."""
        abi = load_artifact(name)["abi"]
        self._errors.update(_error_selectors(abi))
        return self.w3.eth.contract(address=to_checksum_address(address), abi=abi)

    def deploy(self, name: str, *args: Any, sender: LocalAccount) -> tuple[Contract, dict[str, Any]]:
        """Deploy artifact `name` with constructor `args`; return the bound contract and the receipt."""
        artifact = load_artifact(name)
        self._errors.update(_error_selectors(artifact["abi"]))
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = self.transact(factory.constructor(*args), sender)
        return self.contract(name, receipt["contractAddress"]), receipt

    # --- transactions -----------------------------------------------------------------------------------------

    def _next_nonce(self, address: str) -> int:
        with self._nonce_lock:
            if address not in self._nonces:
                self._nonces[address] = self._retry(
                    "eth_getTransactionCount",
                    lambda: int(self.w3.eth.get_transaction_count(address, "pending")),  # type: ignore[arg-type]
                )
            nonce = self._nonces[address]
            self._nonces[address] = nonce + 1
            return nonce

    def reset_nonce(self, address: str) -> None:
        """Forget the cached nonce (after a chain revert/snapshot or an external sender)."""
        with self._nonce_lock:
            self._nonces.pop(address, None)

    def reset_nonces(self) -> None:
        with self._nonce_lock:
            self._nonces.clear()

    def decode_revert(self, exc: Exception, tx_hash: str | None = None) -> ContractReverted:
        data = getattr(exc, "data", None)
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            raw = bytes.fromhex(data[2:])
            known = self._errors.get(raw[:4])
            if known is not None:
                name, types = known
                return ContractReverted(name, tuple(abi_decode(types, raw[4:])), tx_hash)
            if raw[:4] == keccak(text="Error(string)")[:4]:
                return ContractReverted(abi_decode(["string"], raw[4:])[0], (), tx_hash)
        message = getattr(exc, "message", None) or str(exc)
        return ContractReverted(message.removeprefix("execution reverted: "), (), tx_hash)

    def transact(
        self,
        fn: ContractFunction | Any,
        sender: LocalAccount,
        *,
        gas: int | None = None,
        value: int = 0,
    ) -> dict[str, Any]:
        """Sign, send and wait for `fn` (a bound contract function or constructor); return the receipt.

        Reverts raise `ContractReverted` with the decoded custom error, before sending when gas estimation
        already shows the revert (nothing is spent), or after mining otherwise.
        """
        tx: Any = {"from": sender.address, "value": value, "chainId": self.chain_id}  # web3 TxParams
        try:
            if gas is None:
                tx["gas"] = int(self._retry("eth_estimateGas", lambda: fn.estimate_gas(tx)) * 1.2) + 10_000
            else:
                tx["gas"] = gas
        except (ContractCustomError, ContractLogicError) as exc:
            raise self.decode_revert(exc) from exc
        for attempt in range(4):
            with self.tx_lock(sender.address) if self.tx_lock is not None else nullcontext():
                if self.tx_lock is not None:  # another process may have sent since: the node knows the nonce
                    self.reset_nonce(sender.address)
                tx["nonce"] = self._next_nonce(sender.address)
                built: Any = fn.build_transaction(tx)
                raw = sender.sign_transaction(built).raw_transaction
                try:
                    tx_hash = self._retry(
                        "eth_sendRawTransaction",
                        lambda raw=raw: self.w3.eth.send_raw_transaction(raw),  # type: ignore[misc]
                    )
                    break
                except (ValueError, Web3RPCError) as exc:  # the node refused the transaction
                    # A stale nonce (another sender used it) is recoverable: ask the node again; else give up.
                    if _stale_nonce(exc) and attempt < 3:
                        log.info("nonce %s of %s was stale (%s); retrying", tx["nonce"], sender.address, exc)
                        self.reset_nonce(sender.address)
                        continue
                    self.reset_nonce(sender.address)
                    raise ChainError(f"transaction refused by the node: {exc}") from exc
        receipt = self.wait(tx_hash)
        if receipt["status"] != 1:
            raise self._replay_revert(built, receipt)
        return receipt

    def wait(self, tx_hash: Any) -> dict[str, Any]:
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash,  # type: ignore[arg-type]
                timeout=self.timeout,
                poll_latency=self.poll_interval,
            )
        except TimeExhausted as exc:
            raise ChainError(f"no receipt for {Web3.to_hex(tx_hash)} after {self.timeout}s") from exc
        return dict(receipt)

    def _replay_revert(self, built: dict[str, Any], receipt: dict[str, Any]) -> ContractReverted:
        tx_hash = Web3.to_hex(receipt["transactionHash"])
        call = {k: built[k] for k in ("from", "to", "data", "value") if k in built}
        try:
            self.w3.eth.call(call, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError) as exc:
            return self.decode_revert(exc, tx_hash)
        return ContractReverted("out of gas or unknown revert", (), tx_hash)

    def call(self, fn: ContractFunction, block: Any = "latest") -> Any:
        """A read-only call with retries and decoded reverts."""
        try:
            return self._retry("eth_call", lambda: fn.call(block_identifier=block))
        except (ContractCustomError, ContractLogicError) as exc:
            raise self.decode_revert(exc) from exc

    # --- events -----------------------------------------------------------------------------------------------

    def decode_logs(self, logs: Iterable[Any], contracts: Sequence[Contract]) -> list[ChainLog]:
        """Decode every log emitted by one of `contracts`; logs of other addresses are ignored.

        A log from a watched address whose topic matches none of its ABI's events raises `EventDecodeError`.
        """
        by_address = {c.address.lower(): c for c in contracts}
        out: list[ChainLog] = []
        for entry in logs:
            contract = by_address.get(str(entry["address"]).lower())
            if contract is None:
                continue
            topic0 = bytes(entry["topics"][0]) if entry["topics"] else b""
            event = _event_for_topic(contract, topic0)
            if event is None:
                raise EventDecodeError(
                    f"log {Web3.to_hex(entry['transactionHash'])}#{entry['logIndex']} from {contract.address} "
                    f"matches no event of its ABI"
                )
            try:
                decoded = event.process_log(entry)
            except Exception as exc:
                raise EventDecodeError(f"cannot decode {event.event_name} log: {exc}") from exc
            out.append(
                ChainLog(
                    name=decoded["event"],
                    args=dict(decoded["args"]),
                    address=contract.address,
                    block_number=int(decoded["blockNumber"]),
                    tx_hash=Web3.to_hex(decoded["transactionHash"]),
                    log_index=int(decoded["logIndex"]),
                )
            )
        return out

    def events(self, receipt: dict[str, Any], *contracts: Contract) -> list[ChainLog]:
        """The decoded events of a receipt, in log order."""
        return self.decode_logs(receipt["logs"], contracts)

    def get_logs(
        self,
        contracts: Sequence[Contract],
        from_block: int,
        to_block: int | None = None,
        *,
        page: int = 2_000,
    ) -> list[ChainLog]:
        """All decoded events of `contracts` in [from_block, to_block], queried `page` blocks at a time."""
        last = self.block_number() if to_block is None else to_block
        addresses = [c.address for c in contracts]
        out: list[ChainLog] = []
        start = from_block
        while start <= last:
            end = min(start + page - 1, last)
            raw = self._retry(
                "eth_getLogs",
                lambda s=start, e=end: self.w3.eth.get_logs(  # type: ignore[misc]
                    {"address": addresses, "fromBlock": s, "toBlock": e}
                ),
            )
            out.extend(self.decode_logs(raw, contracts))
            start = end + 1
        return out


def _stale_nonce(exc: Exception) -> bool:
    text = str(exc).lower()
    return "nonce" in text or "already known" in text or "replacement transaction underpriced" in text


def redis_tx_lock(redis_url: str, *, timeout_s: float = 120.0) -> Callable[[str], AbstractContextManager[Any]]:
    """A per-address lock in Redis around nonce + send (`ChainClient(tx_lock=...)`), shared by every process."""
    import redis

    r = redis.Redis.from_url(redis_url)

    def lock(address: str) -> AbstractContextManager[Any]:
        return r.lock(f"globai:tx-lock:{address.lower()}", timeout=timeout_s, blocking_timeout=timeout_s)

    return lock


def _event_for_topic(contract: Contract, topic0: bytes) -> Any:
    abi: list[dict[str, Any]] = list(contract.abi)  # type: ignore[arg-type]
    for item in abi:
        if item.get("type") != "event" or item.get("anonymous"):
            continue
        types = ",".join(_canonical_type(inp) for inp in item.get("inputs", []))
        if keccak(text=f"{item['name']}({types})") == topic0:
            return contract.events[item["name"]]()
    return None


def _canonical_type(inp: dict[str, Any]) -> str:
    kind = str(inp["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in inp.get("components", []))
        return f"({inner}){kind[len('tuple') :]}"
    return kind
