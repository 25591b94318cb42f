"""An independent reconciliation from raw chain events: plain JSON-RPC (`eth_getLogs`, `eth_call`) and keccak,
no project code (no ABI files, no market.chain), so a bug shared by the market and its own audit can't hide.

Checks, for the escrow and vault at the given addresses:
- no job is settled or refunded twice, none both; no (job, worker) is slashed twice (no double payment);
- per settled job: paid + fee + refunded == funded, and its PaymentCredited events sum to paid;
- escrow token balance == sum(JobFunded) - sum(escrow Withdrawn) - sum(JobRefunded) + donations
  (plain token transfers to the escrow, read from the token's Transfer events);
- vault token balance == sum(Staked) - sum(vault Withdrawn) - sum(Slashed) + donations.

Run: python market/demo/reconcile_raw.py RPC ESCROW VAULT TOKEN [FROM_BLOCK]; exit 1 with the reasons.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import httpx
from eth_utils import keccak


def topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


T = {
    "JobFunded": topic("JobFunded(bytes32,address,uint256,bytes32,uint64)"),
    "PaymentCredited": topic("PaymentCredited(bytes32,address,uint256)"),
    "JobSettled": topic("JobSettled(bytes32,bytes32,uint256,uint256,uint256)"),
    "EscrowWithdrawn": topic("Withdrawn(address,uint256)"),
    "JobRefunded": topic("JobRefunded(bytes32,address,uint256)"),
    "Staked": topic("Staked(address,uint256,uint256)"),
    "Slashed": topic("Slashed(address,bytes32,bytes32,uint256,uint256,uint256,uint256)"),
    "Transfer": topic("Transfer(address,address,uint256)"),
}


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30)
    r.raise_for_status()
    body = r.json()
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]


def _words(data: str) -> list[int]:
    raw = bytes.fromhex(data[2:])
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


def _logs(url: str, address: str, from_block: int) -> list[dict[str, Any]]:
    return list(_rpc(url, "eth_getLogs", [{"address": address, "fromBlock": hex(from_block), "toBlock": "latest"}]))


def _balance(url: str, token: str, who: str) -> int:
    data = "0x70a08231" + who.lower()[2:].rjust(64, "0")  # balanceOf(address)
    return int(_rpc(url, "eth_call", [{"to": token, "data": data}, "latest"]), 16)


def reconcile(url: str, escrow: str, vault: str, token: str, from_block: int = 0) -> list[str]:
    problems: list[str] = []
    funded: dict[str, int] = {}
    credited: Counter[str] = Counter()
    settled: Counter[str] = Counter()
    refunded_jobs: Counter[str] = Counter()
    escrow_in = escrow_out = 0
    for log in _logs(url, escrow, from_block):
        t0, words = log["topics"][0], _words(log["data"])
        job = log["topics"][1] if len(log["topics"]) > 1 else ""
        if t0 == T["JobFunded"]:
            funded[job] = words[0]
            escrow_in += words[0]
        elif t0 == T["PaymentCredited"]:
            credited[job] += words[0]
        elif t0 == T["JobSettled"]:
            settled[job] += 1
            paid, fee, refunded = words[1], words[2], words[3]
            if paid + fee + refunded != funded.get(job, -1):
                problems.append(f"job {job}: paid {paid} + fee {fee} + refunded {refunded} != funded {funded.get(job)}")
            if credited[job] != paid:
                problems.append(f"job {job}: credited {credited[job]} != paid {paid}")
        elif t0 == T["JobRefunded"]:
            refunded_jobs[job] += 1
            escrow_out += words[0]
        elif t0 == T["EscrowWithdrawn"]:
            escrow_out += words[0]
    for job, n in settled.items():
        if n > 1 or refunded_jobs[job]:
            problems.append(f"job {job}: settled {n} times, refunded {refunded_jobs[job]} times")
    for job, n in refunded_jobs.items():
        if n > 1:
            problems.append(f"job {job}: refunded {n} times")
    vault_in = vault_out = 0
    slashes: Counter[tuple[str, str]] = Counter()
    for log in _logs(url, vault, from_block):
        t0, words = log["topics"][0], _words(log["data"])
        if t0 == T["Staked"]:
            vault_in += words[0]
        elif t0 == T["EscrowWithdrawn"]:  # same signature in the vault: Withdrawn(address,uint256)
            vault_out += words[0]
        elif t0 == T["Slashed"]:
            slashes[(log["topics"][1], log["topics"][2])] += 1
            vault_out += words[1]
    for (worker, job), n in slashes.items():
        if n > 1:
            problems.append(f"worker {worker} slashed {n} times for job {job}")
    # Donations: token transfers to a contract that are not its own pulls (funding, staking use transferFrom, which
    # also emits Transfer - so count every Transfer in and compare with what the contracts' events explain).
    transfers_in = {escrow.lower(): 0, vault.lower(): 0}
    for log in _logs(url, token, from_block):
        if log["topics"][0] == T["Transfer"] and len(log["topics"]) == 3:
            to = "0x" + log["topics"][2][-40:]
            if to.lower() in transfers_in:
                transfers_in[to.lower()] += _words(log["data"])[0]
    escrow_donations = transfers_in[escrow.lower()] - escrow_in
    vault_donations = transfers_in[vault.lower()] - vault_in
    if escrow_donations < 0 or vault_donations < 0:
        problems.append(
            f"token transfers in explain less than the contracts' events ({escrow_donations}, {vault_donations})"
        )
    want_escrow = escrow_in - escrow_out + escrow_donations
    have_escrow = _balance(url, token, escrow)
    if have_escrow != want_escrow:
        problems.append(f"escrow balance {have_escrow} != events {want_escrow}")
    want_vault = vault_in - vault_out + vault_donations
    have_vault = _balance(url, token, vault)
    if have_vault != want_vault:
        problems.append(f"vault balance {have_vault} != events {want_vault}")
    return problems


def double_payments(url: str, escrow: str, vault: str, from_block: int = 0) -> int:
    """How many settlements, refunds or slashes happened more than once (0 expected)."""
    settles: Counter[str] = Counter()
    for log in _logs(url, escrow, from_block):
        if log["topics"][0] in (T["JobSettled"], T["JobRefunded"]):
            settles[log["topics"][1]] += 1
    slashes: Counter[tuple[str, str]] = Counter()
    for log in _logs(url, vault, from_block):
        if log["topics"][0] == T["Slashed"]:
            slashes[(log["topics"][1], log["topics"][2])] += 1
    return sum(n - 1 for n in settles.values() if n > 1) + sum(n - 1 for n in slashes.values() if n > 1)


if __name__ == "__main__":
    rpc, escrow_addr, vault_addr, token_addr = sys.argv[1:5]
    start = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    found = reconcile(rpc, escrow_addr, vault_addr, token_addr, start)
    for p in found:
        print("reconcile FAILED:", p)
    print("reconcile ok" if not found else f"{len(found)} problem(s)")
    sys.exit(1 if found else 0)
