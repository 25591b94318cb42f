"""The model's tokenizer, loaded only after its sha256 matches the manifest (the coordinator encodes/decodes text)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from globai.models.errors import ManifestError
from globai.models.manifest import FileEntry, Manifest, load_manifest, read_verified


def tokenizer_entry(manifest: Manifest) -> FileEntry | None:
    """The manifest's pinned `tokenizer.json`, if the model has one."""
    return next((e for e in manifest.tokenizer if Path(e.path).name == "tokenizer.json"), None)


def load_tokenizer(model_dir: Path, manifest: Manifest | None = None) -> Tokenizer:
    """A fast `tokenizers.Tokenizer` from the manifest's pinned `tokenizer.json` (its sha256 checked first)."""
    manifest = manifest if manifest is not None else load_manifest(model_dir)
    entry = tokenizer_entry(manifest)
    if entry is None:
        raise ManifestError(f"model {manifest.name} has no tokenizer.json")
    return Tokenizer.from_str(read_verified(model_dir, entry).decode("utf-8"))
