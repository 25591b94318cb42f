"""The models the market serves: every `<models_dir>/<name>/manifest.json`, with its tokenizer for text I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from globai.models.errors import ManifestError
from globai.models.manifest import Manifest, load_manifest
from globai.models.tokenizer import load_tokenizer, tokenizer_entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    directory: Path
    manifest: Manifest
    digest: str


class ModelCatalog:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._models: dict[str, ServedModel] = {}
        self._tokenizers: dict[str, Tokenizer] = {}

    def refresh(self) -> None:
        found: dict[str, ServedModel] = {}
        if self.root.is_dir():
            for manifest_file in sorted(self.root.glob("*/manifest.json")):
                try:
                    manifest = load_manifest(manifest_file.parent)
                except ManifestError as exc:
                    log.warning("skipping %s: %s", manifest_file.parent, exc)
                    continue
                found.setdefault(manifest.name, ServedModel(manifest_file.parent, manifest, manifest.digest()))
        self._models = found

    def all(self) -> list[ServedModel]:
        self.refresh()
        return list(self._models.values())

    def get(self, name: str) -> ServedModel | None:
        if name not in self._models:
            self.refresh()
        return self._models.get(name)

    def tokenizer(self, name: str) -> Tokenizer | None:
        if name in self._tokenizers:
            return self._tokenizers[name]
        model = self.get(name)
        if model is None:
            return None
        if tokenizer_entry(model.manifest) is None:
            return None
        # Loaded only after its sha256 matches the manifest (ShardIntegrityError otherwise, never a silent swap).
        tok = load_tokenizer(model.directory, model.manifest)
        self._tokenizers[name] = tok
        return tok
