"""A thin JSON-RPC batch client for the stateful test: one HTTP round trip per step's reads, two per transaction.

`ChainClient` estimates gas, fills fees and polls for receipts through web3's middleware: right for the product,
~10x too slow to run hundreds of random sequences. This signs locally with fixed gas and fees and batches reads.
"""

from __future__ import annotations

from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3.contract import Contract

GAS = 3_000_000
MAX_FEE = 100 * 10**9  # far above Anvil's base fee; the dev accounts hold 10,000 ETH


class RpcError(Exception):
    pass


class RawRpc:
    def __init__(self, url: str, chain_id: int) -> None:
        self.url = url
        self.chain_id = chain_id
        self.session = requests.Session()
        self.nonces: dict[str, int] = {}

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        answers = sorted(self.session.post(self.url, json=payload, timeout=30).json(), key=lambda a: a["id"])
        for answer in answers:
            if "error" in answer:
                raise RpcError(f"{calls[answer['id']][0]}: {answer['error']}")
        return [a["result"] for a in answers]

    def call(self, method: str, *params: Any) -> Any:
        return self.batch([(method, list(params))])[0]

    def load_nonces(self, accounts: list[LocalAccount]) -> None:
        counts = self.batch([("eth_getTransactionCount", [a.address, "latest"]) for a in accounts])
        self.nonces = {a.address: int(c, 16) for a, c in zip(accounts, counts, strict=True)}

    def send(self, contract: Contract, fn: str, args: list[Any], sender: LocalAccount) -> dict[str, Any]:
        """Send and return the receipt (Anvil automines); status 0 means reverted."""
        tx = {
            "to": contract.address,
            "data": contract.encode_abi(fn, args=args),
            "gas": GAS,
            "maxFeePerGas": MAX_FEE,
            "maxPriorityFeePerGas": 0,
            "nonce": self.nonces[sender.address],
            "chainId": self.chain_id,
            "value": 0,
            "type": 2,
        }
        signed = sender.sign_transaction(tx)
        tx_hash = self.call("eth_sendRawTransaction", "0x" + signed.raw_transaction.hex().removeprefix("0x"))
        self.nonces[sender.address] += 1
        receipt = None
        while receipt is None:
            receipt = self.call("eth_getTransactionReceipt", tx_hash)
        return receipt

    @staticmethod
    def eth_call(contract: Contract, fn: str, args: list[Any], sender: str | None = None) -> tuple[str, list[Any]]:
        call: dict[str, Any] = {"to": contract.address, "data": contract.encode_abi(fn, args=args)}
        if sender:
            call["from"] = sender
        return "eth_call", [call, "latest"]
