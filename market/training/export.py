"""Export a job checkpoint as a Hugging Face-style directory (config, safetensors weights, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from globai.models.build import build_causal_lm
from globai.protocol.aead import open_sealed, seal
from market.training.checkpoints import CheckpointStore
from market.training.spec import BOS_ID, EOS_ID, PAD_ID

SPECIALS = {BOS_ID: "<bos>", EOS_ID: "<eos>", PAD_ID: "<pad>"}


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's printable stand-ins for bytes: what tokenizers' ByteLevel pre-tokenizer emits.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer whose ids are the job's: byte b → id b, then <bos>, <eos>, <pad> (no merges)."""
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({tok: i for i, tok in SPECIALS.items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIALS[BOS_ID],
        eos_token=SPECIALS[EOS_ID],
        pad_token=SPECIALS[PAD_ID],
    )


def export_hf(store: CheckpointStore, job_id: str, out_dir: str | Path, version: int | None = None) -> Path:
    """Write ``out_dir``, loadable with ``LlamaForCausalLM`` / ``AutoTokenizer.from_pretrained``."""
    ckpt = store.load(job_id, version)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_causal_lm(ckpt.manifest.config, ckpt.params)
    model.save_pretrained(out, safe_serialization=True)
    byte_tokenizer().save_pretrained(out)
    (out / "globai_checkpoint.txt").write_text(
        f"job {job_id}\nversion {ckpt.manifest.version}\nmanifest_sha256 {ckpt.manifest.sha256}\n"
    )
    return out


SEALED_WEIGHTS = "model.safetensors.enc"


def _model_aad(job_id: str) -> bytes:
    return b"globai-model:" + job_id.encode()


def seal_model(out_dir: Path, key: bytes, job_id: str) -> None:
    """Replace an exported directory's weights by `model.safetensors.enc`, sealed with the job's key."""
    plain = out_dir / "model.safetensors"
    (out_dir / SEALED_WEIGHTS).write_bytes(seal(key, plain.read_bytes(), _model_aad(job_id)))
    plain.unlink()


def open_model(out_dir: Path, key: bytes, job_id: str) -> None:
    """The requester's side of `seal_model`: decrypt `model.safetensors.enc` into `model.safetensors`."""
    sealed = out_dir / SEALED_WEIGHTS
    (out_dir / "model.safetensors").write_bytes(open_sealed(key, sealed.read_bytes(), _model_aad(job_id)))
    sealed.unlink()
