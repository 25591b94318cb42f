"""Content-addressed blob store for recorded stage inputs (what a verifier replays on a replica).

A blob is stored under its sha256 (`ab/cdef...`), written atomically, so the same input recorded twice is kept
once and a reader always gets complete bytes. Retention is decided by the records that reference blobs
(`market.db.inference.StageRecord.retain_until`): `sweep` deletes blobs no live record references.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from globai.errors import GlobaiError


class BlobNotFound(GlobaiError):
    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is not in the store")
        self.digest = digest


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return digest

    def get(self, digest: str) -> bytes:
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        if hashlib.sha256(data).hexdigest() != digest:  # disk corruption: never hand out wrong evidence
            raise BlobNotFound(digest)
        return data

    def has(self, digest: str) -> bool:
        return self._path(digest).exists()

    def delete(self, digest: str) -> bool:
        try:
            self._path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def digests(self) -> Iterator[str]:
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if not f.name.startswith("."):
                        yield sub.name + f.name

    def sweep(self, keep: Iterable[str]) -> int:
        """Delete every blob not in `keep` (the digests live records still reference); returns how many."""
        live = set(keep)
        return sum(self.delete(d) for d in list(self.digests()) if d not in live)
