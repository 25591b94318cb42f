"""Import a GGUF file (llama.cpp's format) as a plain sharded checkpoint.

transformers reads GGUF with `gguf_file=` and dequantises every tensor (to float32), but refuses to
`save_pretrained` a model tagged with a GGUF quantisation config. So the weights are moved into a plain
`LlamaForCausalLM` built from the same config (without the quantisation tag), saved as safetensors together
with the tokenizer (its chat template included) and the generation config, and that directory goes through
the ordinary importer (`import_checkpoint`). The plain checkpoint stores a tied embedding once
(`save_pretrained` de-duplicates it), and so does the sharded model (the manifest's `tied`, docs/models.md).

Needs the `gguf` and `accelerate` packages. Nothing here runs code from the file: GGUF is a tensor container
with metadata, read by the `gguf` library; no pickle, no remote code.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from globai.models.errors import ManifestError, UnsupportedModelError
from globai.models.importer import Progress, import_checkpoint
from globai.models.manifest import Manifest

log = logging.getLogger(__name__)

# Families whose GGUF files transformers can dequantise and that the project serves (the family registry
# decides the rest once the model is a plain checkpoint).
SUPPORTED_MODEL_TYPES = ("llama",)


def is_gguf(path: Path) -> bool:
    """True for a file that starts with the GGUF magic (the extension alone is not trusted)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"GGUF"


def gguf_to_checkpoint(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise `gguf_file` into a plain Hugging Face checkpoint directory `out_dir` (safetensors, float32)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_file = Path(gguf_file).resolve()
    if not is_gguf(gguf_file):
        raise ManifestError(f"{gguf_file} is not a GGUF file")
    folder, file_name = str(gguf_file.parent), gguf_file.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    except ImportError as exc:
        raise UnsupportedModelError(f"reading GGUF needs the gguf and accelerate packages: {exc}") from None
    except (ValueError, KeyError, OSError) as exc:
        raise UnsupportedModelError(f"transformers cannot read {gguf_file.name}: {exc}") from None
    model_type = loaded.config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(f"GGUF model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")

    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict["architectures"] = [type(loaded).__name__]
    config_dict["dtype"] = "float32"
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the same tensor as the embedding: stored once
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise UnsupportedModelError(
            f"GGUF weights do not fit {type(plain).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    plain.tie_weights()
    del loaded, state

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    generation = GenerationConfig(
        bos_token_id=config_dict.get("bos_token_id"),
        eos_token_id=config_dict.get("eos_token_id"),
        pad_token_id=config_dict.get("pad_token_id"),
    )
    if tokenizer.eos_token_id is not None and generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    generation.save_pretrained(str(out_dir))
    for pickled in [*out_dir.glob("*.bin"), *out_dir.glob("*.pt")]:
        pickled.unlink()  # never produced by safe_serialization; refuse to leave any around
    return out_dir


def import_gguf(
    gguf_file: Path,
    out: Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    dtype: str | None = "float32",
    progress: Progress | None = None,
) -> Manifest:
    """GGUF file -> dequantised plain checkpoint (a temporary directory next to `out`) -> sharded model in `out`."""
    gguf_file, out = Path(gguf_file), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out.parent))
    try:
        log.info("dequantising %s", gguf_file)
        checkpoint = gguf_to_checkpoint(gguf_file, work / "hf")
        return import_checkpoint(
            checkpoint, out, name=name or gguf_file.stem, overwrite=overwrite, dtype=dtype, progress=progress
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
