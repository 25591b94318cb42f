"""The coordinator's model catalog reads a model directory only through the manifest's sha256 pins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from globai.models.errors import ShardIntegrityError
from globai.models.tiny import build_tiny_llama
from market.coordinator.catalog import ModelCatalog


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_llama(root / "tiny", hidden=64, layers=2, seed=0)
    return root


def test_catalog_tokenizer_is_the_pinned_one(models: Path) -> None:
    catalog = ModelCatalog(models)
    (served,) = catalog.all()
    tokenizer = catalog.tokenizer(served.manifest.name)
    assert tokenizer is not None and tokenizer.decode(tokenizer.encode("hello world").ids).strip() == "hello world"


def test_catalog_refuses_a_tokenizer_that_does_not_match_the_manifest(models: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models" / "tiny"
    shutil.copytree(models / "tiny", copy, ignore=shutil.ignore_patterns("hf"))
    catalog = ModelCatalog(tmp_path / "models")
    (served,) = catalog.all()
    entry = next(e for e in served.manifest.tokenizer if e.path.endswith("tokenizer.json"))
    with open(copy / entry.path, "a") as fh:
        fh.write("\n")  # still valid JSON, but not the bytes the manifest pins
    with pytest.raises(ShardIntegrityError):
        catalog.tokenizer(served.manifest.name)
