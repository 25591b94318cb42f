"""Layer-range execution: one `Stage` runs layers [start, end) of a model for many pipeline sessions.

Stage 0 takes token ids and embeds them; middle stages map hidden states to hidden states; the last stage
of a decoder returns logits (final norm + LM head), that of an encoder pooled sentence embeddings.
Decoder stages keep a KV cache per session (`worker.models.sessions`); the coordinator drives prefill and
decode and relays each stage's output to the next, as `globai.models.reference.run_pipeline_local` does
in-process.

The layer calls follow TOOLCHAIN.md ("running a range of decoder layers"): always build the causal mask, with
`layer_idx` = this stage's first layer, because each stage has its own DynamicCache (lower layers empty).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from globai.models.families import get_family
from globai.models.manifest import Manifest, check_layer_range, load_manifest
from globai.models.pooling import pool_embeddings
from globai.protocol.tensors import dtype_from_name
from worker.models.batching import layout, merge_caches, merged_mask, split_caches
from worker.models.errors import SessionEvictedError, StageError, StageInputError
from worker.models.modules import StageModules, build_stage_modules
from worker.models.sessions import Session, SessionStore

log = logging.getLogger(__name__)

DEFAULT_SESSION_TTL_S = 600.0
DEFAULT_MAX_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class StageInput:
    """One forward call as the coordinator records it (for failover replay and verification)."""

    inputs: torch.Tensor
    positions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class Step:
    """One session's next tokens, for `Stage.forward_many` (several sessions' steps in one forward)."""

    session_id: str
    inputs: torch.Tensor
    positions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


class Stage:
    """Layers [start, end) of the model in `model_dir`; only this range's shards are read (sha256-checked)."""

    def __init__(
        self,
        model_dir: Path,
        start: int,
        end: int,
        *,
        device: torch.device | str = "cpu",
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        manifest: Manifest | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest if manifest is not None else load_manifest(self.model_dir)
        check_layer_range(self.manifest, start, end)
        self.start, self.end = start, end
        self.device = torch.device(device)
        self.dtype = dtype_from_name(self.manifest.dtype)
        self.family = get_family(self.manifest.family)
        self.modules: StageModules = build_stage_modules(self.model_dir, self.manifest, start, end, device=device)
        config = self.modules.config
        self.sessions = SessionStore(
            ttl_s=session_ttl_s, max_bytes=max_cache_bytes, clock=clock, new_cache=lambda: self.family.new_cache(config)
        )
        self._lock = threading.Lock()  # one forward at a time: sessions and torch modules are not thread-safe

    # --- what this stage is -------------------------------------------------------------------------------
    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.manifest.num_layers

    @property
    def is_decoder(self) -> bool:
        return self.manifest.task == "causal-lm"

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype a request's main tensor must have (for `decode_tensor(expected_dtype=...)`)."""
        return torch.int64 if self.is_first else self.dtype

    def input_shape_ok(self, shape: tuple[int, ...]) -> bool:
        """Shape predicate for `decode_tensor(expected_shape=...)`: [B, T] ids or [B, T, hidden] states."""
        if self.is_first:
            return len(shape) == 2 and shape[0] >= 1 and shape[1] >= 1
        return len(shape) == 3 and shape[0] >= 1 and shape[1] >= 1 and shape[2] == self.manifest.hidden_size

    @property
    def can_merge_sessions(self) -> bool:
        """Whether steps of different sessions can run as one forward here (decoders without sliding windows)."""
        return self.is_decoder and self.family.can_merge_caches(self.modules.config, range(self.start, self.end))

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token of one sequence costs on this stage (for admission and the memory cap)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.family.kv_bytes_per_token(self.modules.config, self.end - self.start, itemsize)

    # --- sessions -----------------------------------------------------------------------------------------
    def open_session(self, session_id: str) -> None:
        with self._lock:
            self.sessions.open(session_id)

    def close_session(self, session_id: str) -> bool:
        with self._lock:
            return self.sessions.close(session_id)

    def expire_idle(self) -> list[str]:
        """Drop sessions idle past the TTL (also done lazily on every request); the daemon may call it on a timer."""
        with self._lock:
            return self.sessions.purge_expired()

    def cache_stats(self) -> dict[str, int]:
        """For status/heartbeat messages: open sessions, KV-cache bytes held, and the cap."""
        with self._lock:
            return {
                "sessions": len(self.sessions),
                "cache_bytes": self.sessions.total_bytes(),
                "max_cache_bytes": self.sessions.max_bytes,
            }

    def session_length(self, session_id: str) -> int:
        """Tokens cached for the session (what the next positions continue from)."""
        with self._lock:
            return self.sessions.get(session_id).seen_tokens

    # --- execution ----------------------------------------------------------------------------------------
    def forward(
        self,
        session_id: str | None,
        inputs: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        last_token_only: bool = False,
    ) -> torch.Tensor:
        """Run this stage on new tokens of a session (or statelessly if `session_id` is None).

        inputs: int64 token ids [B, T] on stage 0, else hidden states [B, T, hidden] in the manifest dtype.
        positions: int64 [B, T] or [1, T]; default continues the session (past + 0..T-1).
        attention_mask: 0/1 [B, T] for the *new* tokens (0 = left padding); the stage keeps the history.
        last_token_only: on the last decoder stage, return logits for the final position only (as `generate`).
        Returns hidden states [B, T, hidden], logits [B, T or 1, vocab], or embeddings [B, hidden] (encoders).
        Encoders keep no cache: each call must carry whole sequences.
        """
        with self._lock:
            if not self.is_decoder:
                return self._encode(inputs, positions, attention_mask)
            if session_id is None:  # one-shot: a throwaway cache (verification of a whole sequence, tests)
                self._check_inputs(inputs, positions, attention_mask, None)
                session = self.sessions.throwaway()
                return self._decode_step(session, inputs, positions, attention_mask, last_token_only)
            session = self.sessions.get(session_id)
            self._check_inputs(inputs, positions, attention_mask, session)
            self.sessions.reserve(session, inputs.shape[0] * inputs.shape[1] * self.kv_bytes_per_token())
            try:
                return self._decode_step(session, inputs, positions, attention_mask, last_token_only)
            except Exception as exc:
                # Some layers may have appended to the cache already: the session can no longer be trusted.
                self.sessions.evict(session_id, "error")
                if isinstance(exc, StageError):
                    raise
                raise StageError(f"forward failed on layers [{self.start}, {self.end}): {exc}") from exc

    def forward_many(self, steps: Sequence[Step], *, last_token_only: bool = False) -> list[torch.Tensor | StageError]:
        """Run the steps of several sessions as one batched forward (continuous batching); per step, in order, its
        output (as `forward` returns it) or the `StageError` that step alone met (the others go on).

        The steps' rows are stacked, each session's cache left-padded to the longest with the padding masked out,
        and each sequence keeps its own positions: a sequence's output does not depend on what it was batched with
        (up to float rounding of the wider matmuls). Steps that can't merge (one session twice, different token
        counts, a stage with sliding-window layers) run one after another.
        """
        merge = (
            len(steps) > 1
            and self.can_merge_sessions
            and len({s.session_id for s in steps}) == len(steps)
            and len({int(s.inputs.shape[1]) for s in steps}) == 1
        )
        if not merge:
            return [self._forward_or_error(s, last_token_only) for s in steps]
        results: list[torch.Tensor | StageError | None] = [None] * len(steps)
        with self._lock:
            admitted: list[tuple[int, Session]] = []
            for i, step in enumerate(steps):
                try:
                    session = self.sessions.get(step.session_id)
                    self._check_inputs(step.inputs, step.positions, step.attention_mask, session)
                    tokens = int(step.inputs.shape[0] * step.inputs.shape[1])
                    self.sessions.reserve(session, tokens * self.kv_bytes_per_token())
                    admitted.append((i, session))
                except StageError as exc:
                    results[i] = exc
            live = []
            for i, session in admitted:  # making room for a later step may have evicted an earlier one
                if session.session_id in self.sessions:
                    live.append((i, session))
                else:
                    results[i] = SessionEvictedError(session.session_id, "memory")
            if live:
                try:
                    outputs = self._decode_merged([steps[i] for i, _ in live], [s for _, s in live], last_token_only)
                except Exception as exc:
                    for i, session in live:
                        self.sessions.evict(session.session_id, "error")
                        results[i] = (
                            exc
                            if isinstance(exc, StageError)
                            else StageError(f"forward failed on layers [{self.start}, {self.end}): {exc}")
                        )
                else:
                    for (i, _), output in zip(live, outputs, strict=True):
                        results[i] = output
        return [r if r is not None else StageError("step not run") for r in results]

    def _forward_or_error(self, step: Step, last_token_only: bool) -> torch.Tensor | StageError:
        try:
            return self.forward(
                step.session_id, step.inputs, step.positions, step.attention_mask, last_token_only=last_token_only
            )
        except StageError as exc:
            return exc

    def replay(self, session_id: str, recorded: Iterable[StageInput]) -> torch.Tensor | None:
        """Rebuild a session's KV cache from its recorded inputs (failover); returns the last output."""
        with self._lock:
            self.sessions.close(session_id)
            self.sessions.open(session_id)
        output = None
        for item in recorded:
            output = self.forward(session_id, item.inputs, item.positions, item.attention_mask)
        return output

    # --- internals ----------------------------------------------------------------------------------------
    def _check_inputs(
        self,
        inputs: torch.Tensor,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        session: Session | None,
    ) -> None:
        if inputs.dtype != self.input_dtype or not self.input_shape_ok(tuple(inputs.shape)):
            want = "int64 [B, T]" if self.is_first else f"{self.dtype} [B, T, {self.manifest.hidden_size}]"
            raise StageInputError(f"inputs are {inputs.dtype} {list(inputs.shape)}, this stage takes {want}")
        batch, tokens = inputs.shape[:2]
        if self.is_first and (int(inputs.min()) < 0 or int(inputs.max()) >= self.manifest.vocab_size):
            raise StageInputError(f"token ids must be in [0, {self.manifest.vocab_size})")
        if positions is not None:
            if positions.dtype != torch.int64 or positions.dim() != 2 or positions.shape[1] != tokens:
                raise StageInputError(f"positions must be int64 [B or 1, {tokens}], got {list(positions.shape)}")
            if positions.shape[0] not in (1, batch) or int(positions.min()) < 0:
                raise StageInputError("positions must be non-negative, one row or one row per sequence")
            limit = int(self.modules.config.max_position_embeddings)
            if int(positions.max()) >= limit:
                raise StageInputError(f"position {int(positions.max())} beyond the model's {limit}")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (batch, tokens) or not bool(
                ((attention_mask == 0) | (attention_mask == 1)).all()
            ):
                raise StageInputError(f"attention_mask must be 0/1 of shape [{batch}, {tokens}]")
        if session is not None and session.batch is not None and session.batch != batch:
            raise StageInputError(f"session has batch {session.batch}, request has {batch}")

    @torch.inference_mode()
    def _decode_step(
        self,
        session: Session,
        inputs: torch.Tensor,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        last_token_only: bool,
    ) -> torch.Tensor:
        inputs = inputs.to(self.device)
        batch, tokens = inputs.shape[:2]
        past = session.seen_tokens
        if positions is None:
            positions = torch.arange(past, past + tokens, device=self.device).unsqueeze(0)
        positions = positions.to(self.device)
        new_mask = torch.ones((batch, tokens), dtype=torch.long, device=self.device)
        if attention_mask is not None:
            new_mask = attention_mask.to(device=self.device, dtype=torch.long)
        full_mask = new_mask if session.mask is None else torch.cat([session.mask, new_mask], dim=1)
        # `generate` drops an all-ones mask; doing the same keeps the attention kernels (and bits) identical.
        mask_arg = None if bool(full_mask.all()) else full_mask
        hidden = self.family.forward(
            self.modules,
            inputs,
            positions=positions,
            attention_mask=mask_arg,
            cache=session.cache,
            first_layer=self.start,
        )
        session.mask = full_mask
        session.steps += 1
        if not self.is_last:
            return hidden
        return self.family.head(self.modules, hidden, last_token_only=last_token_only)

    @torch.inference_mode()
    def _decode_merged(
        self, steps: Sequence[Step], sessions: Sequence[Session], last_token_only: bool
    ) -> list[torch.Tensor]:
        rows, longest = layout(sessions, [int(s.inputs.shape[0]) for s in steps])
        tokens = int(steps[0].inputs.shape[1])
        positions, fresh = [], []
        for step, session, r in zip(steps, sessions, rows, strict=True):
            past = session.seen_tokens
            pos = step.positions if step.positions is not None else torch.arange(past, past + tokens).unsqueeze(0)
            positions.append(pos.to(self.device).expand(r.stop - r.start, tokens))
            ones = torch.ones((r.stop - r.start, tokens), dtype=torch.long, device=self.device)
            new = ones if step.attention_mask is None else step.attention_mask.to(self.device, dtype=torch.long)
            fresh.append(new)
        mask = merged_mask(sessions, rows, longest, fresh)
        layers = range(self.start, self.end)
        empty = self.family.new_cache(self.modules.config)
        assert empty is not None  # decoders have caches (internal invariant: can_merge_sessions checked it)
        cache = merge_caches(sessions, rows, longest, layers, empty)
        hidden = self.family.forward(
            self.modules,
            torch.cat([s.inputs.to(self.device) for s in steps]),
            positions=torch.cat(positions),
            attention_mask=None if bool(mask.all()) else mask,
            cache=cache,
            first_layer=self.start,
        )
        split_caches(cache, sessions, rows, longest, layers)
        for session, new in zip(sessions, fresh, strict=True):
            session.mask = new if session.mask is None else torch.cat([session.mask, new], dim=1)
            session.steps += 1
        if self.is_last:
            hidden = self.family.head(self.modules, hidden, last_token_only=last_token_only)
        return [hidden[r.start : r.stop] for r in rows]

    @torch.inference_mode()
    def _encode(
        self, inputs: torch.Tensor, positions: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        self._check_inputs(inputs, positions, attention_mask, None)
        inputs = inputs.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=self.device, dtype=torch.long)
        if positions is not None:
            positions = positions.to(self.device)
        hidden = self.family.forward(
            self.modules,
            inputs,
            positions=positions,
            attention_mask=attention_mask,
            cache=None,
            first_layer=self.start,
        )
        if not self.is_last:
            return hidden
        assert self.manifest.pooling is not None  # guaranteed by the manifest validator for embedding models
        return pool_embeddings(hidden, attention_mask, self.manifest.pooling)
