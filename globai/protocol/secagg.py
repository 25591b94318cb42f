"""Secure aggregation of training updates (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning"), the parts both sides need: the worker masks its clipped update, the market
removes the masks from the *sum* only.

Per round, participant u (a task slot) draws two X25519 key pairs, ``c`` (to encrypt the secret shares it sends)
and ``s`` (to agree on pairwise masks), and a self-mask seed ``b``. It Shamir-shares ``s``'s private key and ``b``
among all participants (threshold t) and sends participant v's shares encrypted with AES-GCM under a key agreed
from ``c``. Its masked input is

    y_u = x_u + PRG(b_u) + Σ_{v > u} PRG(s_uv) − Σ_{v < u} PRG(s_uv)          (mod 2^32)

with x_u the fixed-point encoding of its clipped update and s_uv = HKDF(X25519(s_u, s_v)). In Σ_u y_u the pairwise
masks cancel. For a survivor u the market asks the other survivors for their shares of b_u (never of s_u); for a
participant that dropped after sharing, for their shares of s_u (never of b_u), and recomputes the pairwise masks it
left in the survivors' inputs. With fewer than t colluding parties nobody learns an individual x_u.

Arithmetic is on int64 tensors holding values in [0, 2^32); the PRG is AES-256-CTR; Shamir sharing is over the
prime field GF(2^521 − 1) (32-byte secrets in one share). Nothing here is pickled: every message is JSON with hex.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from globai.errors import GlobaiError
from globai.protocol.aead import AeadError, open_sealed, seal
from globai.protocol.signing import recover_signer, sign_digest

RING_BITS = 32
RING = 1 << RING_BITS
MASK = RING - 1
PRIME = (1 << 521) - 1  # a Mersenne prime: Shamir shares of 32-byte secrets


class SecAggError(GlobaiError):
    """A malformed or inconsistent secure-aggregation message (one line)."""


# -- keys and agreement --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # 32-byte X25519 seed
    public: bytes  # 32-byte raw public key

    @staticmethod
    def generate() -> KeyPair:
        return KeyPair.from_private(secrets.token_bytes(32))

    @staticmethod
    def from_private(private: bytes) -> KeyPair:
        key = ECC.construct(curve="Curve25519", seed=private)  # type: ignore[arg-type]  # bytes, as documented
        return KeyPair(private, bytes(key.public_key().export_key(format="raw")))


def agree(private: bytes, public: bytes, context: bytes) -> bytes:
    """32 bytes both ends derive: HKDF-SHA256(X25519(private, public), context)."""
    if len(public) != 32:
        raise SecAggError("an X25519 public key is 32 bytes")
    try:
        peer = ECC.construct(curve="Curve25519", point_x=int.from_bytes(public, "little") & ((1 << 255) - 1))
    except ValueError as exc:
        raise SecAggError(f"bad X25519 public key: {exc}") from None
    mine = ECC.construct(curve="Curve25519", seed=private)  # type: ignore[arg-type]  # bytes, as documented
    derived = key_agreement(static_priv=mine, static_pub=peer, kdf=lambda z: HKDF(bytes(z), 32, context, SHA256))
    return bytes(derived)  # type: ignore[arg-type]  # one key: bytes


# -- the mask generator --------------------------------------------------------------------------------------------


def prg(seed: bytes, n: int) -> torch.Tensor:
    """n values uniform in [0, 2^32) from a 32-byte seed (AES-256-CTR keystream), as int64."""
    stream = AES.new(seed, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(4 * n))
    return torch.from_numpy(np.frombuffer(stream, dtype="<u4").astype(np.int64))


def _pair_seed(s_private: bytes, s_public_other: bytes, context: bytes) -> bytes:
    return agree(s_private, s_public_other, b"GLOBAI-SECAGG-MASK-V1" + context)


def pair_masks_sum(me: int, s_private: bytes, others: Mapping[int, bytes], n: int, context: bytes) -> torch.Tensor:
    """Σ_{v > me} PRG(s_uv) − Σ_{v < me} PRG(s_uv) mod 2^32 over `others` (slot → s public key)."""
    total = torch.zeros(n, dtype=torch.int64)
    for v, public in sorted(others.items()):
        if v == me:
            continue
        mask = prg(_pair_seed(s_private, public, context), n)
        total = (total + mask) if v > me else (total - mask)
    return total & MASK


# -- fixed point ---------------------------------------------------------------------------------------------------


def fixed_point_scale(bound: float, max_parties: int) -> float:
    """The largest power-of-two scale at which a sum of `max_parties` values within ±bound fits the signed ring."""
    return float(2 ** math.floor(math.log2((RING // 2 - 1) / (bound * max_parties))))


def encode(x: torch.Tensor, scale: float, bound: float) -> torch.Tensor:
    """Clamp to ±bound, round(x · scale) into the ring (int64 values in [0, 2^32))."""
    q = torch.round(x.detach().double().clamp(-bound, bound) * scale).to(torch.int64)
    return q & MASK


def decode_sum(total: torch.Tensor, scale: float) -> torch.Tensor:
    """A ring element back to a float64 sum (values ≥ 2^31 are negative)."""
    signed = torch.where(total >= RING // 2, total - RING, total)
    return signed.double() / scale


# -- Shamir secret sharing -----------------------------------------------------------------------------------------


def split(secret: bytes, n: int, t: int) -> list[tuple[int, bytes]]:
    """Shares (x, y) for x = 1..n of a ≤ 64-byte secret; any t of them recover it, fewer reveal nothing."""
    if not 1 <= t <= n:
        raise SecAggError("Shamir threshold must be within 1..n")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        shares.append((x, y.to_bytes(66, "big")))
    return shares


def combine(shares: Sequence[tuple[int, bytes]], size: int = 32) -> bytes:
    """The secret from ≥ t shares (Lagrange interpolation at 0)."""
    points = {int(x): int.from_bytes(y, "big") for x, y in shares}
    if len(points) != len(shares) or not points:
        raise SecAggError("duplicate or missing Shamir shares")
    secret = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * size):
        raise SecAggError("Shamir shares do not combine to a secret (too few, or tampered)")
    return secret.to_bytes(size, "big")


# -- encrypted shares ----------------------------------------------------------------------------------------------


def share_key(c_private: bytes, c_public_other: bytes, context: bytes) -> bytes:
    return agree(c_private, c_public_other, b"GLOBAI-SECAGG-SHARE-V1" + context)


# -- one participant -----------------------------------------------------------------------------------------------


@dataclass
class Participant:
    """One slot's secrets for one round (kept in the worker's memory only)."""

    slot: int
    context: bytes  # binds every key to (chain, job, round): see `round_context`
    c: KeyPair
    s: KeyPair
    b: bytes

    @staticmethod
    def new(slot: int, context: bytes) -> Participant:
        return Participant(slot, context, KeyPair.generate(), KeyPair.generate(), secrets.token_bytes(32))

    def shares_for(self, c_publics: Mapping[int, bytes], t: int) -> dict[int, bytes]:
        """Sealed (s_private share, b share) for every participant in `c_publics` (self included)."""
        slots = sorted(c_publics)
        s_shares = dict(zip(slots, split(self.s.private, len(slots), t), strict=True))
        b_shares = dict(zip(slots, split(self.b, len(slots), t), strict=True))
        out = {}
        for v in slots:
            (xs, ys), (xb, yb) = s_shares[v], b_shares[v]
            plain = xs.to_bytes(2, "big") + ys + xb.to_bytes(2, "big") + yb
            key = share_key(self.c.private, c_publics[v], self.context)
            out[v] = seal(key, plain, self._aad(self.slot, v))
        return out

    def open_share(self, sender: int, sender_c_public: bytes, sealed: bytes) -> tuple[tuple[int, bytes], ...]:
        """(s share, b share) that `sender` sealed for this participant."""
        try:
            plain = self._open(sender, sender_c_public, sealed)
        except AeadError as exc:
            raise SecAggError(str(exc)) from None
        if len(plain) != 2 * (2 + 66):
            raise SecAggError("bad share length")
        return (int.from_bytes(plain[:2], "big"), plain[2:68]), (int.from_bytes(plain[68:70], "big"), plain[70:])

    def _open(self, sender: int, sender_c_public: bytes, sealed: bytes) -> bytes:
        return open_sealed(
            share_key(self.c.private, sender_c_public, self.context), sealed, self._aad(sender, self.slot)
        )

    def _aad(self, sender: int, receiver: int) -> bytes:
        return self.context + sender.to_bytes(4, "big") + receiver.to_bytes(4, "big")

    def mask(self, x: torch.Tensor, s_publics: Mapping[int, bytes]) -> torch.Tensor:
        """y = x + PRG(b) + pairwise masks with every participant that shared (mod 2^32)."""
        n = x.numel()
        return (x + prg(self.b, n) + pair_masks_sum(self.slot, self.s.private, s_publics, n, self.context)) & MASK


def round_context(chain_id: int, chain_job_id: str, round_index: int, base_checkpoint: str) -> bytes:
    return b"|".join(
        [str(chain_id).encode(), chain_job_id.encode(), str(round_index).encode(), base_checkpoint.encode()]
    )


def keys_digest(context: bytes, slot: int, c_public: bytes, s_public: bytes) -> bytes:
    """What a participant signs (EIP-191, its eth key) over its round keys: the market cannot swap them."""
    return keccak(b"GLOBAI-SECAGG-KEYS-V1" + context + slot.to_bytes(4, "big") + c_public + s_public)


def sign_keys(account: LocalAccount, context: bytes, slot: int, c_public: bytes, s_public: bytes) -> str:
    return "0x" + sign_digest(account, keys_digest(context, slot, c_public, s_public)).hex()


def keys_signer(context: bytes, slot: int, c_public: bytes, s_public: bytes, signature: str) -> str:
    try:
        return recover_signer(
            keys_digest(context, slot, c_public, s_public), bytes.fromhex(signature.removeprefix("0x"))
        )
    except Exception as exc:
        raise SecAggError(f"bad key signature: {exc}") from None


def encode_masked(y: torch.Tensor) -> bytes:
    """Wire form of a masked input: one int32 tensor (the ring element's bits) in safetensors."""
    signed = torch.where(y >= RING // 2, y - RING, y).to(torch.int32)
    return bytes(st_save({"masked": signed.contiguous()}))


def decode_masked(payload: bytes, n: int) -> torch.Tensor:
    try:
        tensors = st_load(payload)
    except Exception as exc:
        raise SecAggError(f"masked input is not safetensors: {exc}") from None
    t = tensors.get("masked")
    if set(tensors) != {"masked"} or t is None or t.dtype != torch.int32 or t.dim() != 1 or t.numel() != n:
        raise SecAggError(f"masked input must be one int32 vector of {n} values")
    return t.to(torch.int64) & MASK


def flatten(update: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Parameters in sorted-name order as one float vector (both sides agree on the order)."""
    return torch.cat([update[name].detach().reshape(-1).double() for name in sorted(update)])


def unflatten(vector: torch.Tensor, shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for name in sorted(shapes):
        n = int(torch.Size(shapes[name]).numel())
        out[name] = vector[at : at + n].reshape(tuple(shapes[name])).to(torch.float32)
        at += n
    if at != vector.numel():
        raise SecAggError("vector length does not match the parameter shapes")
    return out


# -- the server's side ---------------------------------------------------------------------------------------------


def unmask_sum(
    masked: Mapping[int, torch.Tensor],
    s_publics: Mapping[int, bytes],
    self_mask_seeds: Mapping[int, bytes],
    dropped_s_private: Mapping[int, bytes],
    context: bytes,
) -> torch.Tensor:
    """Σ x_u over the survivors (the keys of `masked`) as a ring element, given every survivor's reconstructed
    b_u and every dropped participant's reconstructed s private key. Pairwise masks among survivors cancel; a
    dropped u's masks with each survivor v are recomputed and removed."""
    if set(self_mask_seeds) != set(masked):
        raise SecAggError("need the self-mask seed of exactly every survivor")
    n = next(iter(masked.values())).numel()
    total = torch.zeros(n, dtype=torch.int64)
    for u, y in masked.items():
        if y.numel() != n:
            raise SecAggError("masked inputs differ in length")
        total = (total + y - prg(self_mask_seeds[u], n)) & MASK
    for u, s_private in dropped_s_private.items():
        survivors = {v: s_publics[v] for v in masked}
        # Survivor v added +PRG(s_uv) if u > v, else −PRG(s_uv): exactly −(u's own pairwise sum with them).
        total = (total + pair_masks_sum(u, s_private, survivors, n, context)) & MASK
    return total


def threshold(parties: int) -> int:
    """Default Shamir threshold: a strict majority of the round's participants (at least 2 when there are 2+)."""
    return max(min(2, parties), parties // 2 + 1)
