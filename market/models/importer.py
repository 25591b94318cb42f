"""Split a local Hugging Face checkpoint (safetensors only) into per-layer shards plus a manifest.

Reads one shard's tensors at a time (safetensors is memory-mapped), so importing a model needs about one
layer of memory, not the whole model. Pickle formats (`pytorch_model.bin`, `.pt`) are refused, never loaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from market.models.errors import ManifestError, UnsupportedModelError
from market.models.layout import FamilyLayout, layout_for_model_type
from market.models.manifest import (
    ALLOWED_DTYPES,
    EMBED,
    HEAD,
    MANIFEST_FILE,
    Manifest,
    Pooling,
    ShardEntry,
    file_entry,
    layer_shard_name,
    save_manifest,
)

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
SHARD_DIR = "shards"
TOKENIZER_DIR = "tokenizer"


def shard_file_name(name: str) -> str:
    # zero-padded so a directory listing sorts in layer order
    if name.startswith("layer."):
        return f"{SHARD_DIR}/layer.{int(name.split('.', 1)[1]):04d}.safetensors"
    return f"{SHARD_DIR}/{name}.safetensors"


def _weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [src / name for name in sorted(set(weight_map.values()))]
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    if any(src.glob("*.bin")) or any(src.glob("*.pt")) or any(src.glob("*.pth")):
        raise UnsupportedModelError(f"{src} holds only pickle weights; convert to safetensors (pickle is never loaded)")
    raise ManifestError(f"no safetensors weights in {src}")


def _pooling(src: Path) -> Pooling:
    """sentence-transformers layout: 1_Pooling/config.json and a Normalize module in modules.json."""
    mode: Literal["mean", "cls"] = "mean"
    pooling_cfg = src / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif not cfg.get("pooling_mode_mean_tokens", True):
            raise UnsupportedModelError(f"pooling {cfg} (only mean and cls pooling are served)")
    normalize = False
    modules = src / "modules.json"
    if modules.is_file():
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in json.loads(modules.read_text()))
    return Pooling(mode=mode, normalize=normalize)


def _plan(files: list[Path], layout: FamilyLayout) -> dict[str, list[tuple[Path, str, str]]]:
    """shard name -> [(file, checkpoint key, canonical key)]."""
    plan: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                canonical = layout.canonical(key)
                shard = layout.shard_of(canonical)
                if shard is None:
                    log.info("not served, skipped: %s", key)
                    continue
                plan[shard].append((path, key, canonical))
    return plan


def _write_shard(
    out: Path, name: str, items: list[tuple[Path, str, str]], extra: dict[str, torch.Tensor]
) -> ShardEntry:
    tensors: dict[str, torch.Tensor] = {}
    for path, key, canonical in items:
        with safe_open(str(path), framework="pt") as fh:
            tensors[canonical] = fh.get_tensor(key).contiguous()
    tensors.update(extra)
    relative = shard_file_name(name)
    # One metadata key only: safetensors writes its metadata map in random order (breaks reproducible hashes).
    save_file(tensors, str(out / relative), metadata={"format": "pt"})
    entry = file_entry(out, relative)
    return ShardEntry(name=name, tensors=sorted(tensors), **entry.model_dump())


def _model_dtype(items: list[tuple[Path, str, str]]) -> str:
    dtypes: set[str] = set()
    for path, key, _ in items:
        with safe_open(str(path), framework="pt") as fh:
            dtypes.add(str(fh.get_slice(key).get_dtype()))
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    floating = {names.get(d, d) for d in dtypes}
    if len(floating) != 1 or next(iter(floating)) not in ALLOWED_DTYPES:
        raise UnsupportedModelError(f"weights must share one dtype of {ALLOWED_DTYPES}, found {sorted(dtypes)}")
    return next(iter(floating))


def import_checkpoint(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False) -> Manifest:
    """Split the HF checkpoint directory `src` into `out` (shards/, tokenizer/, manifest.json)."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if src == out:
        raise ManifestError("the output directory must differ from the checkpoint directory")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise ManifestError(f"{out} already holds a model (pass overwrite to replace it)")
    try:
        config: dict[str, Any] = json.loads((src / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read {src / 'config.json'}: {exc}") from None
    layout = layout_for_model_type(str(config.get("model_type")))
    missing = [k for k in ("num_hidden_layers", "hidden_size", "vocab_size") if not isinstance(config.get(k), int)]
    if missing:
        raise ManifestError(f"{src / 'config.json'} lacks integer {', '.join(missing)}")
    num_layers = int(config["num_hidden_layers"])
    plan = _plan(_weight_files(src), layout)
    expected = {EMBED, HEAD, *(layer_shard_name(i) for i in range(num_layers))}
    if set(plan) - {HEAD} != expected - {HEAD} or set(plan) - expected:
        raise ManifestError(f"checkpoint shards {sorted(plan)} do not cover {num_layers} layers plus embeddings")
    dtype = _model_dtype([item for items in plan.values() for item in items])

    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    head_extra: dict[str, torch.Tensor] = {}
    if layout.family == "llama" and not any(c == "lm_head.weight" for _, _, c in plan.get(HEAD, [])):
        # Tied embeddings: the last stage must be self-contained, so it gets its own copy of the matrix.
        embed_path, embed_key, _ = next(i for i in plan[EMBED] if i[2] == "model.embed_tokens.weight")
        with safe_open(str(embed_path), framework="pt") as fh:
            head_extra["lm_head.weight"] = fh.get_tensor(embed_key).contiguous()
    shards = [_write_shard(out, n, plan.get(n, []), head_extra if n == HEAD else {}) for n in sorted(expected)]

    tokenizer = []
    for file_name in TOKENIZER_FILES:
        if (src / file_name).is_file():
            shutil.copyfile(src / file_name, out / TOKENIZER_DIR / file_name)
            tokenizer.append(file_entry(out, f"{TOKENIZER_DIR}/{file_name}"))
    if not tokenizer:
        raise ManifestError(f"no tokenizer files in {src}")

    manifest = Manifest(
        name=name or src.name,
        family=layout.family,  # type: ignore[arg-type]
        task=layout.task,  # type: ignore[arg-type]
        architecture=layout.architecture,
        config=config,
        dtype=dtype,  # type: ignore[arg-type]
        num_layers=num_layers,
        hidden_size=int(config["hidden_size"]),
        vocab_size=int(config["vocab_size"]),
        tokenizer=tokenizer,
        pooling=_pooling(src) if layout.task == "embedding" else None,
        shards=sorted(shards, key=lambda s: (s.name != EMBED, s.name == HEAD, _layer_index(s.name))),
    )
    save_manifest(manifest, out)
    log.info("imported %s: %d layers, %d shards into %s", manifest.name, num_layers, len(shards), out)
    return manifest


def _layer_index(name: str) -> int:
    return int(name.split(".", 1)[1]) if name.startswith("layer.") else -1
