"""Split a local Hugging Face checkpoint (safetensors only) into per-layer shards plus a manifest.

Reads one shard's tensors at a time (safetensors is memory-mapped), so importing a model needs about one
layer of memory, not the whole model. Pickle formats (`pytorch_model.bin`, `.pt`) are refused, never loaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from globai.models import quant
from globai.models.errors import ManifestError, UnsupportedModelError
from globai.models.families import family_for_model_type, get_family
from globai.models.families._base import ModelFamily
from globai.models.layout import FamilyLayout
from globai.models.manifest import (
    ALLOWED_DTYPES,
    EMBED,
    HEAD,
    MANIFEST_FILE,
    Generation,
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
    "chat_template.jinja",
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


def _write_shard(out: Path, name: str, items: list[tuple[Path, str, str]], dtype: str) -> ShardEntry:
    tensors: dict[str, torch.Tensor] = {}
    for path, key, canonical in items:
        with safe_open(str(path), framework="pt") as fh:
            tensors[canonical] = fh.get_tensor(key)
    target = getattr(torch, dtype)
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
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


def _generation(src: Path, config: dict[str, Any]) -> Generation | None:
    """EOS/BOS/pad ids and the chat template of a real checkpoint: from `generation_config.json` (else config.json)
    and the tokenizer's `chat_template.jinja` (else `tokenizer_config.json`'s `chat_template`).

    None when the checkpoint has neither a generation config nor a chat template (the built-in tiny models):
    such a model never stops early, which keeps its generations exactly `max_new_tokens` long.
    """
    gen_file, template_file, tok_cfg_file = (
        src / "generation_config.json",
        src / "chat_template.jinja",
        src / "tokenizer_config.json",
    )
    gen: dict[str, Any] = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    template: str | None = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    if template is None and tok_cfg_file.is_file():
        value = json.loads(tok_cfg_file.read_text()).get("chat_template")
        if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}, ...]
            value = next((t.get("template") for t in value if t.get("name") == "default"), None)
        template = value if isinstance(value, str) else None
    if not gen and template is None:
        return None

    def ids(value: Any) -> list[int]:
        items = value if isinstance(value, list) else [value]
        return [int(v) for v in items if isinstance(v, int) and not isinstance(v, bool)]

    def one(key: str) -> int | None:
        found = ids(gen.get(key, config.get(key)))
        return found[0] if found else None

    eos = ids(gen.get("eos_token_id", config.get("eos_token_id")))
    return Generation(
        eos_token_ids=sorted(set(eos)),
        bos_token_id=one("bos_token_id"),
        pad_token_id=one("pad_token_id"),
        chat_template=template,
    )


# Called once per shard written: (shard name, index from 1, total).
Progress = Callable[[str, int, int], None]


def import_checkpoint(
    src: Path,
    out: Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    dtype: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Split the HF checkpoint directory `src` into `out` (shards/, tokenizer/, manifest.json).

    `dtype` casts the floating-point weights (default: keep the checkpoint's own dtype).
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    if src == out:
        raise ManifestError("the output directory must differ from the checkpoint directory")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise ManifestError(f"{out} already holds a model (pass overwrite to replace it)")
    try:
        config: dict[str, Any] = json.loads((src / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read {src / 'config.json'}: {exc}") from None
    family = family_for_model_type(str(config.get("model_type")))
    files = _weight_files(src)  # refuses pickle-only checkpoints before anything else is read
    num_layers, hidden_size, vocab_size = family.dims(config)
    plan = _plan(files, family.layout)
    expected = {EMBED, HEAD, *(layer_shard_name(i) for i in range(num_layers))}
    if set(plan) - {HEAD} != expected - {HEAD} or set(plan) - expected:
        raise ManifestError(f"checkpoint shards {sorted(plan)} do not cover {num_layers} layers plus embeddings")
    if dtype is None:
        dtype = _model_dtype([item for items in plan.values() for item in items])
    elif dtype not in ALLOWED_DTYPES:
        raise ManifestError(f"dtype must be one of {ALLOWED_DTYPES}, not {dtype!r}")

    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    tied: dict[str, str] = {}
    for head_key, embed_key in family.tied.items():
        if any(c == head_key for _, _, c in plan.get(HEAD, [])):
            continue
        # Tied embeddings: stored once, in the embed shard; the manifest says the head uses it.
        if not any(c == embed_key for _, _, c in plan[EMBED]):
            raise ManifestError(f"checkpoint has neither {head_key} nor the embedding {embed_key} it is tied to")
        tied[head_key] = embed_key
    shards = []
    for index, shard_name in enumerate(sorted(expected), start=1):
        shards.append(_write_shard(out, shard_name, plan.get(shard_name, []), dtype))
        if progress is not None:
            progress(shard_name, index, len(expected))

    tokenizer = []
    for file_name in TOKENIZER_FILES:
        if (src / file_name).is_file():
            shutil.copyfile(src / file_name, out / TOKENIZER_DIR / file_name)
            tokenizer.append(file_entry(out, f"{TOKENIZER_DIR}/{file_name}"))
    if not tokenizer:
        raise ManifestError(f"no tokenizer files in {src}")

    manifest = Manifest(
        name=name or src.name,
        family=family.name,
        task=family.task,
        architecture=family.architecture,
        config=config,
        dtype=dtype,  # type: ignore[arg-type]
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        pooling=_pooling(src) if family.task == "embedding" else None,
        generation=_generation(src, config) if family.task == "causal-lm" else None,
        tied=tied,
        shards=sorted(shards, key=lambda s: (s.name != EMBED, s.name == HEAD, _layer_index(s.name))),
    )
    save_manifest(manifest, out)
    log.info("imported %s: %d layers, %d shards into %s", manifest.name, num_layers, len(shards), out)
    return manifest


def _layer_index(name: str) -> int:
    return int(name.split(".", 1)[1]) if name.startswith("layer.") else -1


def recast(
    src_dir: Path,
    out: Path,
    *,
    dtype: str,
    name: str,
    overwrite: bool = False,
    progress: Progress | None = None,
    weight_format: str | None = None,
) -> Manifest:
    """A copy of the sharded model in `src_dir` with its weights cast to `dtype` (e.g. a bfloat16 variant), and
    its linear layers quantised to `weight_format` ("int8", "int4": `globai.models.quant`) if given.

    Shards are read sha256-checked, one at a time; the tokenizer and the generation section are kept.
    """
    from safetensors.torch import load as load_safetensors

    from globai.models.manifest import load_manifest, read_verified

    src_dir, out = Path(src_dir).resolve(), Path(out).resolve()
    if dtype not in ALLOWED_DTYPES:
        raise ManifestError(f"dtype must be one of {ALLOWED_DTYPES}, not {dtype!r}")
    if src_dir == out:
        raise ManifestError("the output directory must differ from the source model")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise ManifestError(f"{out} already holds a model (pass overwrite to replace it)")
    source = load_manifest(src_dir)
    if weight_format is not None:
        try:
            quant.check_format(weight_format)
        except ValueError as exc:
            raise ManifestError(str(exc)) from None
        if source.weight_format is not None:
            raise ManifestError(f"{source.name} is quantised already ({source.weight_format})")
    family = get_family(source.family)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    target = getattr(torch, dtype)
    # A quantised head is a tensor of its own (packed), not the embedding: the tie ends there.
    untie = weight_format is not None and bool(source.tied)
    shards = []
    for index, entry in enumerate(source.shards, start=1):
        if progress is not None:
            progress(entry.name, index - 1, len(source.shards))
        tensors = load_safetensors(read_verified(src_dir, entry))
        if untie and entry.name == HEAD:
            embed = load_safetensors(read_verified(src_dir, source.shard(EMBED)))
            tensors.update({head_key: embed[embed_key] for head_key, embed_key in source.tied.items()})
        cast = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        if weight_format is not None:
            try:
                linears = _linear_keys(family, source.config, entry.name)
                cast = quant.quantise_state(cast, linears, weight_format, target)
            except ValueError as exc:
                raise ManifestError(f"cannot quantise {entry.name}: {exc}") from None
        save_file(cast, str(out / entry.path), metadata={"format": "pt"})
        shards.append(ShardEntry(name=entry.name, tensors=sorted(cast), **file_entry(out, entry.path).model_dump()))
        if progress is not None:
            progress(entry.name, index, len(source.shards))
    tokenizer = []
    for file in source.tokenizer:
        (out / file.path).write_bytes(read_verified(src_dir, file))
        tokenizer.append(file_entry(out, file.path))
    config = {**source.config, "dtype": dtype} if "dtype" in source.config else source.config
    manifest = source.model_copy(
        update={
            "name": name,
            "dtype": dtype,
            "config": config,
            "shards": shards,
            "tokenizer": tokenizer,
            "weight_format": weight_format,
            "tied": {} if untie else source.tied,
        }
    )
    manifest = Manifest.model_validate(manifest.model_dump())
    save_manifest(manifest, out)
    return manifest


def _linear_keys(family: ModelFamily, config: dict[str, Any], shard: str) -> list[str]:
    """Canonical keys of the `nn.Linear` weights in one shard of a family's model (what quantisation replaces)."""
    with torch.device("meta"):
        module, prefixes = family.shard_module(family.hf_config(config), shard, has_tensors=True)
    keys = []
    for local in quant.linear_weight_keys(module):
        canonical, prefix = max(
            ((c, p) for c, p in prefixes.items() if local.startswith(p)), key=lambda item: len(item[1])
        )
        keys.append(canonical + local[len(prefix) :])
    return keys
