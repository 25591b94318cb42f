"""Manifests and shards: determinism, integrity (sha256 tamper), partial loading, import refusals, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from globai.models.errors import ManifestError, ShardIntegrityError, UnsupportedModelError
from globai.models.hf import load_full_model
from globai.models.importer import import_checkpoint
from globai.models.manifest import MANIFEST_FILE, Manifest, load_manifest, parameter_count, verify_model_dir
from globai.models.reference import generate_reference, run_pipeline_local
from globai.models.tiny import build_tiny_llama
from globai.models.tokenizer import load_tokenizer
from market.commands.models import app as models_app
from worker.runtime.placement import KV_HEADROOM, layers_that_fit
from worker.stage import Stage


def test_manifest_describes_every_shard(tiny_llama: Path) -> None:
    m = load_manifest(tiny_llama)
    assert (m.family, m.task, m.num_layers, m.hidden_size, m.dtype) == ("llama", "causal-lm", 4, 128, "float32")
    assert [s.name for s in m.shards] == ["embed", "layer.0", "layer.1", "layer.2", "layer.3", "head"]
    assert [s.name for s in m.stage_shards(0, 2)] == ["embed", "layer.0", "layer.1"]
    assert [s.name for s in m.stage_shards(2, 4)] == ["layer.2", "layer.3", "head"]
    assert m.shard("layer.2").tensors[0].startswith("model.layers.2.")
    assert set(m.shard("head").tensors) == {"model.norm.weight", "lm_head.weight"}
    verify_model_dir(tiny_llama, m)
    with pytest.raises(ManifestError):
        m.stage_shards(3, 5)


def test_tiny_build_is_deterministic(tmp_path: Path) -> None:
    a = build_tiny_llama(tmp_path / "a", hidden=64, layers=2, seed=7)
    b = build_tiny_llama(tmp_path / "b", hidden=64, layers=2, seed=7)
    c = build_tiny_llama(tmp_path / "c", hidden=64, layers=2, seed=8)
    assert a.digest() == b.digest() != c.digest()
    assert a.tokenizer == c.tokenizer  # the tokenizer does not depend on the weight seed


def test_tokenizer_is_real_and_round_trips(tiny_llama: Path) -> None:
    tok = load_tokenizer(tiny_llama)
    text = "The coordinator replays the recorded inputs. Ünïcödé too!"
    enc = tok.encode(text)
    assert enc.ids[0] == tok.token_to_id("<s>") and len(enc.ids) < len(text.encode())  # merges were learned
    assert tok.decode(enc.ids) == text


def test_tampered_shard_is_refused_with_a_clear_error(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    shard = model / load_manifest(model).shard("layer.1").path
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, one weight byte changed
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError) as info:
        Stage(model, 0, 2)
    assert info.value.path == "shards/layer.0001.safetensors" and "sha256" in str(info.value)
    Stage(model, 2, 4)  # a stage that does not serve layer 1 never reads it
    with pytest.raises(ShardIntegrityError):
        verify_model_dir(model, load_manifest(model))


def test_manifest_hash_edit_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    raw = json.loads((model / MANIFEST_FILE).read_text())
    raw["shards"][0]["sha256"] = "0" * 64
    (model / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ShardIntegrityError):
        Stage(model, 0, 1)


def test_stage_loads_only_its_shards(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    m = load_manifest(model)
    for name in ("embed", "layer.0", "layer.1", "head"):
        (model / m.shard(name).path).unlink()  # a worker serving layers 2-3 only downloaded those
    stage = Stage(model, 2, 3)
    assert stage.modules.embed is None and stage.modules.head is None and len(stage.modules.layers) == 1
    out = stage.forward(None, torch.randn(1, 3, 128))
    assert out.shape == (1, 3, 128)


@pytest.mark.parametrize("bad_path", ["../escape.safetensors", "/etc/passwd", "a/../../b"])
def test_manifest_paths_cannot_escape(tiny_llama: Path, tmp_path: Path, bad_path: str) -> None:
    raw = json.loads((tiny_llama / MANIFEST_FILE).read_text())
    raw["shards"][1]["path"] = bad_path
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="path"):
        load_manifest(tmp_path)


def test_import_refuses_pickle_checkpoints(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    config = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, "vocab_size": 8}
    (src / "config.json").write_text(json.dumps(config))
    (src / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UnsupportedModelError, match="pickle"):
        import_checkpoint(src, tmp_path / "out")
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        import_checkpoint(src, tmp_path / "out")


def test_reimport_of_the_hf_dir_gives_the_same_digest(tiny_llama: Path, tmp_path: Path) -> None:
    again = import_checkpoint(tiny_llama / "hf", tmp_path / "again", name=load_manifest(tiny_llama).name)
    assert again.digest() == load_manifest(tiny_llama).digest()


def test_cli_build_show_verify(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(models_app, ["build-tiny", "--hidden", "64", "--layers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny-llama-h64-l2-s0" in result.output
    assert runner.invoke(models_app, ["verify", str(out)]).exit_code == 0
    shown = runner.invoke(models_app, ["show", str(out)])
    assert "layer.1" in shown.output and "digest" in shown.output
    again = runner.invoke(models_app, ["build-tiny", "--hidden", "64", "--layers", "2", "--out", str(out)])
    assert isinstance(again.exception, ManifestError)  # main() prints GlobaiErrors as one line


def test_tied_embedding_is_stored_once(tiny_llama: Path, tmp_path: Path) -> None:
    src = tmp_path / "tied"
    src.mkdir()
    config = json.loads((tiny_llama / "hf" / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (src / "config.json").write_text(json.dumps(config))
    shutil.copy(tiny_llama / "hf" / "tokenizer.json", src / "tokenizer.json")
    state = load_file(str(tiny_llama / "hf" / "model.safetensors"))
    del state["lm_head.weight"]  # what a tied checkpoint stores
    save_file(state, str(src / "model.safetensors"))
    out = tmp_path / "out"
    m = import_checkpoint(src, out)
    assert m.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in m.shard("head").tensors
    assert "lm_head.weight" not in load_file(str(out / m.shard("head").path))
    # The parameter count is the model's unique parameters: the tied matrix counted once.
    _, model = load_full_model(out)
    assert parameter_count(out, m) == sum(p.numel() for p in model.parameters())
    assert (
        parameter_count(out, m)
        == parameter_count(tiny_llama, load_manifest(tiny_llama)) - state["model.embed_tokens.weight"].numel()
    )
    # A last stage without layer 0 downloads the embed shard for its head; a single stage loads the matrix once.
    assert [s.name for s in m.stage_shards(2, 4)] == ["embed", "layer.2", "layer.3", "head"]
    assert [s.name for s in m.stage_shards(0, 2)] == ["embed", "layer.0", "layer.1"]
    need = sum(s.size for s in m.stage_shards(3, 4)) / (1 - KV_HEADROOM)  # placement counts that shard too
    assert layers_that_fit(m, int(need) + 4, 3) == 1 and layers_that_fit(m, int(need) - 4, 3) == 0
    whole = Stage(out, 0, 4)
    assert whole.modules.head is not None and whole.modules.embed is not None
    assert whole.modules.head.lm_head.weight.data_ptr() == whole.modules.embed.weight.data_ptr()
    last = Stage(out, 2, 4)
    assert last.modules.embed is None
    prompt = torch.tensor([[5, 6, 7, 8]])
    expected = generate_reference(out, prompt, 6)
    assert run_pipeline_local([Stage(out, 0, 2), last], prompt, 6).tolist() == expected.tolist()
    assert run_pipeline_local([whole], prompt, 6).tolist() == expected.tolist()
    # A manifest that claims a tie the shards contradict is refused.
    with pytest.raises(ValidationError, match="tied"):
        Manifest.model_validate({**m.model_dump(), "tied": {"lm_head.weight": "model.nope.weight"}})


def test_tampered_tokenizer_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    path = model / "tokenizer" / "tokenizer.json"
    path.write_text(path.read_text().replace('"<pad>"', '"<PAD>"', 1))
    with pytest.raises(ShardIntegrityError):
        load_tokenizer(model)
