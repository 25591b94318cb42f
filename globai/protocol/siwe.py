"""EIP-4361 ("Sign-In with Ethereum") messages: build, sign, parse.

Shared by the market (which parses and checks) and by the worker and CLI (which build and sign), so this module
must not import fastapi or anything from `market.api`. Signatures are EIP-191 personal messages, as wallets make.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import is_hex_address, to_checksum_address

_HEADER = " wants you to sign in with your Ethereum account:"
_NONCE_RE = re.compile(r"^[A-Za-z0-9]{8,64}$")


class SiweFormatError(ValueError):
    """The text is not a well-formed sign-in message."""


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str  # EIP-55 checksummed
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime
    statement: str = "Sign in to the GlobAI market."
    version: str = "1"

    def to_text(self) -> str:
        lines = [
            f"{self.domain}{_HEADER}",
            self.address,
            "",
            self.statement,
            "",
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {_iso(self.issued_at)}",
            f"Expiration Time: {_iso(self.expiration_time)}",
        ]
        return "\n".join(lines)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SiweFormatError(f"bad timestamp {value!r}") from exc
    if ts.tzinfo is None:
        raise SiweFormatError("timestamps must carry a timezone")
    return ts.astimezone(UTC)


def build_message(
    *,
    domain: str,
    address: str,
    uri: str,
    chain_id: int,
    nonce: str,
    issued_at: datetime,
    expiration_time: datetime,
    statement: str = "Sign in to the GlobAI market.",
) -> SiweMessage:
    if not is_hex_address(address):
        raise SiweFormatError(f"not an address: {address!r}")
    if not _NONCE_RE.match(nonce):
        raise SiweFormatError("nonce must be 8-64 alphanumeric characters")
    if "\n" in statement or "\n" in domain or "\n" in uri:
        raise SiweFormatError("fields must be single-line")
    return SiweMessage(
        domain=domain,
        address=to_checksum_address(address),
        uri=uri,
        chain_id=chain_id,
        nonce=nonce,
        issued_at=issued_at.astimezone(UTC).replace(microsecond=0),
        expiration_time=expiration_time.astimezone(UTC).replace(microsecond=0),
        statement=statement,
    )


def parse_message(text: str) -> SiweMessage:
    """Parse the exact layout `SiweMessage.to_text` produces; anything else is rejected (no lenient parsing)."""
    lines = text.split("\n")
    if len(lines) != 11 or not lines[0].endswith(_HEADER) or lines[2] != "" or lines[4] != "":
        raise SiweFormatError("not a sign-in message")
    domain = lines[0][: -len(_HEADER)]
    fields: dict[str, str] = {}
    for line, key in zip(
        lines[5:],
        ("URI", "Version", "Chain ID", "Nonce", "Issued At", "Expiration Time"),
        strict=True,
    ):
        prefix = f"{key}: "
        if not line.startswith(prefix):
            raise SiweFormatError(f"expected {key!r}")
        fields[key] = line[len(prefix) :]
    if fields["Version"] != "1":
        raise SiweFormatError("unsupported version")
    try:
        chain_id = int(fields["Chain ID"])
    except ValueError as exc:
        raise SiweFormatError("bad chain id") from exc
    message = build_message(
        domain=domain,
        address=lines[1],
        uri=fields["URI"],
        chain_id=chain_id,
        nonce=fields["Nonce"],
        issued_at=_parse_ts(fields["Issued At"]),
        expiration_time=_parse_ts(fields["Expiration Time"]),
        statement=lines[3],
    )
    if message.address != lines[1]:
        raise SiweFormatError("address must be EIP-55 checksummed")
    return message


def sign_message(message: SiweMessage, private_key: str | bytes) -> str:
    """Sign the message text as an EIP-191 personal message; returns the 0x-hex signature."""
    signed = Account.sign_message(encode_defunct(text=message.to_text()), private_key=private_key)
    return "0x" + bytes(signed.signature).hex()


def recover_signer(text: str, signature: str) -> str:
    """The checksummed address that signed `text`; raises ValueError on a malformed signature."""
    return to_checksum_address(Account.recover_message(encode_defunct(text=text), signature=signature))
