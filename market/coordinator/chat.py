"""Chat requests: a list of messages rendered into prompt token ids with the model's own chat template.

The template comes from the manifest (`Generation.chat_template`, pinned by the model's digest) and is rendered
by transformers' sandboxed Jinja environment (`apply_chat_template`); no code from the model is ever run.
Control tokens that appear inside message contents (e.g. a user typing `<|im_end|>`) are encoded as plain text
(`sanitize_control_tokens`), so a message cannot forge the conversation's structure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer

from globai.models.manifest import Manifest
from market.domain_errors import InvalidRequest

ROLES = ("system", "user", "assistant")


def _fast_tokenizer(tokenizer: Tokenizer, manifest: Manifest) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    gen = manifest.generation
    if gen is not None:
        eos = gen.eos_token_ids[0] if gen.eos_token_ids else None
        for attr, token_id in (("bos_token", gen.bos_token_id), ("eos_token", eos)):
            if token_id is not None and tokenizer.id_to_token(token_id) is not None:
                setattr(fast, attr, tokenizer.id_to_token(token_id))
    return fast


def render_chat(tokenizer: Tokenizer, manifest: Manifest, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Prompt ids for one conversation, ending with the assistant's turn opened (`add_generation_prompt`)."""
    template = manifest.generation.chat_template if manifest.generation is not None else None
    if not template:
        raise InvalidRequest(f"model {manifest.name} has no chat template: send prompts instead of messages")
    if not messages:
        raise InvalidRequest("messages must not be empty")
    for message in messages:
        if set(message) != {"role", "content"} or message["role"] not in ROLES:
            raise InvalidRequest(f"each message needs exactly a role ({', '.join(ROLES)}) and a content")
        if not isinstance(message["content"], str):
            raise InvalidRequest("message content must be text")
    from jinja2 import TemplateError

    fast = _fast_tokenizer(tokenizer, manifest)
    try:
        ids = fast.apply_chat_template(
            [dict(m) for m in messages],
            chat_template=template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
        )
    except (TemplateError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"the chat template refused these messages: {exc}") from None
    if isinstance(ids, Mapping):  # some transformers versions answer a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]
