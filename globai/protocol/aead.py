"""AES-256-GCM sealing (pycryptodome): ``nonce (12) || ciphertext || tag (16)``, with associated data that binds a
sealed blob to where it belongs. Used for secure-aggregation shares and checkpoints encrypted at rest."""

from __future__ import annotations

import secrets

from Crypto.Cipher import AES

from globai.errors import GlobaiError


class AeadError(GlobaiError):
    """A sealed blob is too short, or was not sealed with this key and associated data."""


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    body, tag = cipher.encrypt_and_digest(plaintext)
    return nonce + body + tag


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < 28:
        raise AeadError("sealed message too short")
    cipher = AES.new(key, AES.MODE_GCM, nonce=sealed[:12])
    cipher.update(aad)
    try:
        return bytes(cipher.decrypt_and_verify(sealed[12:-16], sealed[-16:]))
    except ValueError:
        raise AeadError("sealed message failed authentication (wrong key, or tampered)") from None
