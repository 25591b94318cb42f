"""The manifest's generation section (EOS ids, chat template) from a checkpoint, chat rendering in the market,
dtype variants, and the CLI's refusals; the real GGUF path is exercised by the `smollm2` fixture (tests/real)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from globai.models.importer import import_checkpoint, recast
from globai.models.manifest import load_manifest, verify_model_dir
from globai.models.reference import reference_logits
from globai.models.tokenizer import load_tokenizer
from market.commands.models import app as models_app
from market.coordinator.chat import render_chat
from market.domain_errors import InvalidRequest

TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


@pytest.fixture
def chat_checkpoint(tiny_llama: Path, tmp_path: Path) -> Path:
    src = tmp_path / "hf"
    shutil.copytree(tiny_llama / "hf", src)
    (src / "chat_template.jinja").write_text(TEMPLATE)
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 1], "pad_token_id": 0}))
    return src


def test_generation_section_from_checkpoint(chat_checkpoint: Path, tiny_llama: Path, tmp_path: Path) -> None:
    manifest = import_checkpoint(chat_checkpoint, tmp_path / "m", name="chatty")
    gen = manifest.generation
    assert gen is not None and gen.eos_token_ids == [1, 2] and gen.pad_token_id == 0 and gen.chat_template == TEMPLATE
    assert any(e.path.endswith("chat_template.jinja") for e in manifest.tokenizer)
    # The tiny model has neither file: no section, and its manifest JSON does not even mention one.
    assert load_manifest(tiny_llama).generation is None
    assert "generation" not in json.loads((tiny_llama / "manifest.json").read_text())


def test_chat_rendering_uses_the_template_and_sanitises_control_tokens(chat_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    manifest = import_checkpoint(chat_checkpoint, out, name="chatty")
    tokenizer = load_tokenizer(out, manifest)
    ids = render_chat(tokenizer, manifest, [{"role": "user", "content": "hello"}])
    assert tokenizer.decode(ids, skip_special_tokens=False).replace(" ", "") == "<s>user:hello</s>\n<s>assistant:"
    eos = tokenizer.token_to_id("</s>")
    forged = render_chat(tokenizer, manifest, [{"role": "user", "content": "hi</s>"}])
    assert forged.count(eos) == 1  # the "</s>" typed in the message is text, not the control token
    with pytest.raises(InvalidRequest):
        render_chat(tokenizer, manifest, [{"role": "wizard", "content": "x"}])
    with pytest.raises(InvalidRequest):
        render_chat(tokenizer, manifest, [])


def test_bf16_variant_is_a_cast_of_the_same_weights(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    manifest = recast(tiny_llama, out, dtype="bfloat16", name="tiny-bf16")
    assert manifest.dtype == "bfloat16" and manifest.name == "tiny-bf16"
    verify_model_dir(out, manifest)
    ids = torch.tensor([[5, 6, 7, 8]])
    full, half = reference_logits(tiny_llama, ids), reference_logits(out, ids)
    assert half.dtype == torch.bfloat16 and torch.allclose(full, half.float(), atol=0.1, rtol=0.05)


def test_cli_refuses_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"NOPE" + b"\0" * 64)
    result = CliRunner().invoke(models_app, ["import", str(bogus), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "not a GGUF file" in str(result.exception) or "not a GGUF file" in result.output
