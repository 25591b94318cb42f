"""The model manifest: what a model is and which files (with sha256) hold each of its shards.

A manifest directory looks like::

    manifest.json
    tokenizer/tokenizer.json ...          tokenizer files, pinned by sha256
    shards/embed.safetensors              embeddings (stage 0)
    shards/layer.0000.safetensors ...     one decoder/encoder layer each
    shards/head.safetensors               final norm + LM head (decoders) or pooler (encoders)

A head tied to the embeddings (`tied`: head key -> embedding key) is stored once, in the embed shard: the head
shard leaves it out and the last stage loads the embed shard too (`stage_shards`).

Shard tensors keep the key names of the unsharded Hugging Face model class
(`model.layers.3.mlp.up_proj.weight`), so the full model is the union of all shards and a stage maps keys
onto its own modules by stripping prefixes.
Pure data + hashing: no torch, no transformers, so the market can read manifests cheaply.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from globai.models.errors import ManifestError, ShardIntegrityError
from globai.models.families._names import family_names

MANIFEST_FORMAT: Final = "globai-manifest/1"
MANIFEST_FILE = "manifest.json"
EMBED = "embed"
HEAD = "head"
ALLOWED_DTYPES = ("float32", "bfloat16", "float16")
_HASH_CHUNK = 1 << 20


def layer_shard_name(index: int) -> str:
    return f"layer.{index}"


class FileEntry(BaseModel):
    """A file of the manifest directory, pinned by size and sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative_inside(cls, value: str) -> str:
        # Manifests travel from the market to workers: a path must never escape the model directory.
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts or "\\" in value or not p.parts:
            raise ValueError(f"path {value!r} must be relative and stay inside the model directory")
        return value


class ShardEntry(FileEntry):
    name: str = Field(pattern=r"^(embed|head|layer\.[0-9]+)$")
    tensors: list[str]


class Pooling(BaseModel):
    """How an encoder's last stage turns token states into one embedding (sentence-transformers semantics)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["mean", "cls"] = "mean"
    normalize: bool = False


class Generation(BaseModel):
    """How generation ends and how chat prompts are built (from the checkpoint's generation config and tokenizer).

    The market renders a request's `messages` with `chat_template` (a sandboxed Jinja template, never remote
    code) and stops a sequence at any of `eos_token_ids` unless the request says otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    eos_token_ids: list[int] = Field(default_factory=list)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    chat_template: str | None = Field(default=None, max_length=100_000)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["globai-manifest/1"] = MANIFEST_FORMAT
    name: str = Field(min_length=1, max_length=200)
    family: str  # a module of `globai.models.families` (checked against the registry, which imports nothing)
    task: Literal["causal-lm", "embedding"]
    architecture: str
    config: dict[str, Any]
    dtype: Literal["float32", "bfloat16", "float16"]
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    tokenizer: list[FileEntry]
    pooling: Pooling | None = None
    generation: Generation | None = None  # causal LMs imported from a real checkpoint; None: no EOS, no chat
    # Weight-only quantised linear layers (`globai.models.quant`): "int8" or "int4"; None: plain `dtype` weights.
    # `dtype` stays the compute dtype (activations, embeddings, norms, scales).
    weight_format: Literal["int8", "int4"] | None = None
    # Head keys whose tensor is an embedding's (head key -> embedding key): stored once, in the embed shard; the
    # last stage loads that tensor from the embed shard. Empty: the head shard holds all of its tensors.
    tied: dict[str, str] = Field(default_factory=dict)
    shards: list[ShardEntry]

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in family_names():
            raise ValueError(f"unknown model family {value!r} (known: {', '.join(family_names())})")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Manifest:
        names = [s.name for s in self.shards]
        expected = [EMBED, *(layer_shard_name(i) for i in range(self.num_layers)), HEAD]
        if sorted(names) != sorted(expected) or len(set(names)) != len(names):
            raise ValueError(f"shards must be exactly {EMBED}, layer.0..layer.{self.num_layers - 1}, {HEAD}")
        if (self.task == "embedding") != (self.pooling is not None):
            raise ValueError("pooling is required for embedding models and only for them")
        head, embed = (next(s for s in self.shards if s.name == n) for n in (HEAD, EMBED))
        for head_key, embed_key in self.tied.items():
            if head_key in head.tensors or embed_key not in embed.tensors:
                raise ValueError(f"tied {head_key} -> {embed_key}: the embed shard holds it, the head shard must not")
        return self

    @property
    def precision(self) -> str:
        """The numeric format a stage computes in: the dtype, plus the weight format if quantised
        ("float32", "bfloat16+int4"); verification tolerances are calibrated per precision."""
        return self.dtype if self.weight_format is None else f"{self.dtype}+{self.weight_format}"

    def shard(self, name: str) -> ShardEntry:
        for entry in self.shards:
            if entry.name == name:
                return entry
        raise ManifestError(f"model {self.name} has no shard {name!r}")

    def stage_shards(self, start: int, end: int) -> list[ShardEntry]:
        """The shards a stage serving layers [start, end) needs: embed on stage 0, head on the last stage (and
        the embed shard there too when the head is tied to it)."""
        check_layer_range(self, start, end)
        names = [layer_shard_name(i) for i in range(start, end)]
        if start == 0 or (end == self.num_layers and self.tied):
            names.insert(0, EMBED)
        if end == self.num_layers:
            names.append(HEAD)
        return [self.shard(n) for n in names]

    def digest(self) -> str:
        """sha256 of the canonical JSON: the model's identity on the market (pins every shard hash)."""
        return hashlib.sha256(canonical_json(self).encode()).hexdigest()


def check_layer_range(manifest: Manifest, start: int, end: int) -> None:
    if not 0 <= start < end <= manifest.num_layers:
        raise ManifestError(f"layer range [{start}, {end}) is not inside [0, {manifest.num_layers})")


def canonical_json(manifest: Manifest) -> str:
    # Optional sections left unset are omitted, so a manifest without them keeps the digest it always had.
    return json.dumps(_dump(manifest), sort_keys=True, separators=(",", ":"))


def _dump(manifest: Manifest) -> dict[str, Any]:
    data = manifest.model_dump(mode="json")
    for optional in ("generation", "weight_format", "tied"):
        if not data.get(optional):
            data.pop(optional, None)
    return data


def load_manifest(model_dir: Path) -> Manifest:
    """Read and validate `model_dir/manifest.json` (does not hash the shards; see `verify_file`)."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"invalid manifest {path}: {where}: {first['msg']}") from None


def save_manifest(manifest: Manifest, model_dir: Path) -> Path:
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(_dump(manifest), indent=1, sort_keys=True) + "\n")
    return path


def parameter_count(model_dir: Path, manifest: Manifest) -> int:
    """Elements of every tensor the shard files store (read from their safetensors headers, sha256 not checked):
    the model's parameters, each tied tensor once (for `weight_format` models: packed weights and scales)."""
    total = 0
    for shard in manifest.shards:
        with open(Path(model_dir) / shard.path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size > shard.size:
                raise ManifestError(f"{shard.path}: not a safetensors file")
            header = json.loads(fh.read(size))
        for key, info in header.items():
            if key != "__metadata__":
                total += math.prod(info["shape"])
    return total


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(model_dir: Path, relative: str) -> FileEntry:
    path = Path(model_dir) / relative
    return FileEntry(path=relative, sha256=sha256_file(path), size=path.stat().st_size)


def read_verified(model_dir: Path, entry: FileEntry) -> bytes:
    """Read a pinned file and check size and sha256 on the very bytes that will be used (no re-read race)."""
    path = Path(model_dir) / entry.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ShardIntegrityError(entry.path, entry.sha256, None, f"cannot read: {exc.strerror or exc}") from None
    if len(data) != entry.size:
        raise ShardIntegrityError(entry.path, entry.sha256, None, f"size {len(data)}, manifest says {entry.size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise ShardIntegrityError(entry.path, entry.sha256, actual, f"sha256 {actual} != manifest {entry.sha256}")
    return data


def verify_file(model_dir: Path, entry: FileEntry) -> None:
    """Stream-hash a pinned file (for big shards checked after download, before anyone loads them)."""
    path = Path(model_dir) / entry.path
    if not path.is_file():
        raise ShardIntegrityError(entry.path, entry.sha256, None, "missing")
    if path.stat().st_size != entry.size:
        raise ShardIntegrityError(entry.path, entry.sha256, None, "size differs from the manifest")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ShardIntegrityError(entry.path, entry.sha256, actual, f"sha256 {actual} != manifest {entry.sha256}")


def verify_model_dir(model_dir: Path, manifest: Manifest, *, shards: list[ShardEntry] | None = None) -> None:
    """Verify the tokenizer files and `shards` (default: all shards) of a model directory."""
    for entry in [*manifest.tokenizer, *(manifest.shards if shards is None else shards)]:
        verify_file(model_dir, entry)
