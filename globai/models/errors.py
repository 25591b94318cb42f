"""Errors about model artifacts (manifests and shards). Typed fields so callers can act on them."""

from __future__ import annotations

from globai.errors import GlobaiError


class ManifestError(GlobaiError):
    """A manifest is missing, malformed, or does not describe a model we can run."""


class UnsupportedModelError(ManifestError):
    def __init__(self, what: str) -> None:
        super().__init__(f"unsupported model: {what}")
        self.what = what


class ShardIntegrityError(ManifestError):
    """A shard (or tokenizer) file does not match the sha256/size the manifest pins: never load it."""

    def __init__(self, path: str, expected_sha256: str, actual_sha256: str | None, reason: str) -> None:
        super().__init__(f"shard {path} failed verification: {reason}")
        self.path = path
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        self.reason = reason
