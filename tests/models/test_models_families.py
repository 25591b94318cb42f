"""The model-family registry: one module per family, found by name; every decoder family builds a tiny model,
imports as transformers would load it, and its stages reproduce the unsharded model's logits bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from globai.models.errors import ManifestError, UnsupportedModelError
from globai.models.families import family_for_model_type, family_names, get_family
from globai.models.importer import import_checkpoint
from globai.models.manifest import load_manifest, save_manifest
from globai.models.reference import generate_reference, reference_logits, run_pipeline_local
from globai.models.tiny import build_tiny_model
from market.commands.models import app as models_app
from worker.stage import Stage

DECODERS = [name for name in family_names() if get_family(name).task == "causal-lm"]


def test_registry_finds_every_family_module_by_its_name() -> None:
    assert {"llama", "bert", "qwen2", "mistral", "phi3", "gemma", "gpt2"} <= set(family_names())
    seen: set[str] = set()
    for name in family_names():
        family = get_family(name)
        assert family.name == family.layout.family == name
        assert not seen & set(family.model_types), f"{name} claims a model_type another family has"
        seen |= set(family.model_types)
        assert family_for_model_type(family.model_types[0]) is family
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        family_for_model_type("gpt_neox")
    with pytest.raises(UnsupportedModelError, match="falcon"):
        get_family("falcon")


def test_manifest_refuses_a_family_the_registry_lacks(tmp_path: Path) -> None:
    model = tmp_path / "m"
    manifest = build_tiny_model(model, family="gpt2", hidden=64, layers=1)
    save_manifest(manifest.model_copy(update={"family": "falcon"}), model)
    with pytest.raises(ManifestError, match="unknown model family 'falcon'"):
        load_manifest(model)


@pytest.mark.parametrize("family", DECODERS)
def test_tiny_model_of_each_family_stages_exactly(family: str, tmp_path: Path) -> None:
    model = tmp_path / family
    manifest = build_tiny_model(model, family=family, hidden=128, layers=3, seed=3)
    assert (manifest.name, manifest.family, manifest.task) == (f"tiny-{family}-h128-l3-s3", family, "causal-lm")
    fam = get_family(family)
    head = load_file(str(model / manifest.shard("head").path))
    embed = load_file(str(model / manifest.shard("embed").path))
    if manifest.config.get("tie_word_embeddings"):
        # Tied head left out of the checkpoint (as save_pretrained does) and of the head shard: stored once.
        assert manifest.tied == fam.tied
        for head_key, embed_key in fam.tied.items():
            assert head_key not in head and embed_key in embed
    else:
        assert manifest.tied == {}
    # What build-tiny writes is an ordinary checkpoint: transformers loads it with its own classes.
    loaded = AutoModelForCausalLM.from_pretrained(model / "hf", dtype=torch.float32)
    assert type(loaded).__name__ == manifest.architecture
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(5))
    hidden: torch.Tensor = ids
    for stage in (Stage(model, 0, 1), Stage(model, 1, 3)):
        hidden = stage.forward(None, hidden)
    expected = reference_logits(model, ids)
    assert torch.equal(hidden, expected)
    with torch.inference_mode():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    # Greedy tokens of a left-padded batch, 2 and 3 stages (in-process), equal `generate`.
    prompt = torch.randint(3, 500, (3, 10), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0
    mask[2, :5] = 0
    prompt = prompt.masked_fill(mask == 0, int(manifest.config["pad_token_id"]))
    tokens = generate_reference(model, prompt, 10, attention_mask=mask)
    assert len(set(tokens.flatten().tolist())) >= 10, tokens  # a model that repeats itself proves little
    for bounds in ([0, 1, 3], [0, 1, 2, 3]):
        stages = [Stage(model, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        assert run_pipeline_local(stages, prompt, 10, attention_mask=mask).tolist() == tokens.tolist()


def test_gpt2_checkpoint_in_the_original_layout_imports_to_the_same_shards(tmp_path: Path) -> None:
    # OpenAI's GPT-2 release (and GPT2Model.save_pretrained) has no `transformer.` prefix and carries the
    # precomputed causal-mask buffers; the importer renames the keys and drops the buffers.
    built = build_tiny_model(tmp_path / "built", family="gpt2", hidden=64, layers=2)
    src = tmp_path / "original"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "built" / "hf" / name, src / name)
    original = load_file(tmp_path / "built" / "hf" / "model.safetensors")
    state = {k.removeprefix("transformer."): v for k, v in original.items()}
    assert "h.0.attn.c_attn.weight" in state and "wte.weight" in state
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    save_file(state, str(src / "model.safetensors"))
    again = import_checkpoint(src, tmp_path / "again", name=built.name)
    assert again.digest() == built.digest()


def test_cli_builds_a_tiny_model_of_another_family(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        models_app, ["build-tiny", "--family", "qwen2", "--hidden", "64", "--layers", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "tiny-qwen2-h64-l1-s0" in result.output
    assert json.loads((out / "manifest.json").read_text())["architecture"] == "Qwen2ForCausalLM"
    bad = runner.invoke(models_app, ["build-tiny", "--family", "bert", "--out", str(tmp_path / "b")])
    assert isinstance(bad.exception, ManifestError)  # main() prints GlobaiErrors as one line
