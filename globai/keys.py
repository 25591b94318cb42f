"""Private keys given on the command line: --key, --key-file or an environment variable, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from globai.errors import ConfigError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def load_account(key: str | None, key_file: Path | None, *, who: str, env: str) -> LocalAccount:
    """The account for `key` (0x-hex) or the key in `key_file`; `who`/`env` name it in the error messages."""
    source = "--key"
    if key_file is not None:
        source = f"key file {key_file}"
        try:
            key = key_file.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"{source} does not exist (write the {who}'s 0x-hex private key into it)") from None
        except IsADirectoryError:
            raise ConfigError(f"{source} is a directory, not a file holding a key") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {source}: {exc.__class__.__name__}") from None
    if not key:
        raise ConfigError(f"no {who} key: pass --key-file FILE (or --key 0x..., or set {env})")
    key = key.strip()
    if not KEY_RE.match(key):
        raise ConfigError(f"{source} is not a private key: expected 0x followed by 64 hex digits")
    from eth_account import Account

    try:
        return Account.from_key(key)
    except (ValueError, TypeError):  # e.g. zero or above the curve order
        raise ConfigError(f"{source} is not a valid secp256k1 private key") from None
