"""What the worker's commands (`globai worker run|status|stake|train|...`) share: options, the key, byte sizes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from globai.errors import ConfigError
from globai.keys import load_account

if TYPE_CHECKING:  # eth-account loads only when a command runs (fast --help)
    from eth_account.signers.local import LocalAccount

MarketOpt = Annotated[
    str,
    typer.Option(
        "--market",
        help="Market base URL (worker run: several market processes' URLs, comma-separated, are tried in turn).",
        envvar="GLOBAI_MARKET_URL",
    ),
]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Worker private key (0x-hex).", envvar="GLOBAI_WORKER_KEY")]
KeyFileOpt = Annotated[Path | None, typer.Option("--key-file", help="File holding the private key.")]


def worker_account(key: str | None, key_file: Path | None) -> LocalAccount:
    return load_account(key, key_file, who="worker", env="GLOBAI_WORKER_KEY")


def parse_bytes(text: str) -> int:
    """`4G`, `512M`, `1.5g`, `4096` -> bytes (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, KeyError):
        raise ConfigError(f"--max-memory: cannot read {text!r} (e.g. 4G, 512M)") from None
