"""The byte-level tokenizer of training jobs, shared by the market (uploaded data) and workers (their own local
data in federated mode): ids 0-255 are the bytes themselves, then BOS, EOS and PAD; documents become
``BOS doc EOS``; windows of ``seq_len + 1`` tokens (inputs + next-token targets)."""

from __future__ import annotations

import json

import torch

from globai.errors import GlobaiError

BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
BYTE_VOCAB_SIZE = 259


class DatasetError(GlobaiError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"bad training dataset: {reason}")
        self.reason = reason


def documents(corpus: bytes, fmt: str = "text", field: str = "text") -> list[bytes]:
    """Split a file into documents: the whole text (``text``), or one JSONL line's ``field`` each (``jsonl``)."""
    if fmt == "text":
        return [corpus]
    docs = []
    for lineno, line in enumerate(corpus.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line {lineno} is not JSON ({exc.msg})") from exc
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DatasetError(f"line {lineno} has no string field {field!r}")
        docs.append(text.encode("utf-8"))
    return docs


def tokenize_documents(docs: list[bytes]) -> torch.Tensor:
    """Byte-level token stream: ``BOS doc EOS`` for each document, concatenated (int64)."""
    parts = []
    for doc in docs:
        body = torch.frombuffer(bytearray(doc), dtype=torch.uint8).to(torch.int64)
        parts += [torch.tensor([BOS_ID]), body, torch.tensor([EOS_ID])]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def make_windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len + 1`` tokens (inputs + next-token targets); drops the tail."""
    n = (tokens.numel() - 1) // seq_len
    if n < 1:
        return torch.zeros(0, seq_len + 1, dtype=torch.int64)
    # Windows share their boundary token: window j covers tokens[j*T : j*T + T + 1].
    return tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


def file_windows(corpus: bytes, seq_len: int, fmt: str = "text", field: str = "text") -> torch.Tensor:
    """A file's bytes straight to ``[N, seq_len + 1]`` windows."""
    return make_windows(tokenize_documents(documents(corpus, fmt, field)), seq_len)
