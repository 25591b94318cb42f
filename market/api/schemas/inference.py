"""Pipeline inference: a requester's generation request and the run it starts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from market.api.schemas.common import Input


class ChatMessage(Input):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=20_000)


class InferenceIn(Input):
    model: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@+-]+$")
    prompts: list[Annotated[str, Field(min_length=1, max_length=20_000)]] | None = Field(default=None, max_length=8)
    prompt_ids: list[list[Annotated[int, Field(ge=0)]]] | None = Field(default=None, max_length=8)
    messages: list[Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=8, description="one conversation per sequence, rendered with the model's chat template"
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=4, description="stop strings (not included in the text)"
    )
    ignore_eos: bool = Field(default=False, description="generate max_new_tokens even past end-of-sequence")
    max_new_tokens: int = Field(default=32, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0, le=10)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0, lt=2**63)
    stream: bool = Field(default=False, description="answer with the event stream instead of the run id")

    @model_validator(mode="after")
    def _one_prompt_kind(self) -> InferenceIn:
        if sum(x is not None for x in (self.prompts, self.prompt_ids, self.messages)) != 1:
            raise ValueError("give exactly one of prompts (text), prompt_ids (token ids) and messages (chat)")
        return self


class InferenceOut(BaseModel):
    id: str
    model: str
    status: str
    route: list[dict[str, Any]]
    tokens: list[list[int]] | None = None
    text: list[str] | None = None
    finish_reason: list[str | None] | None = None
    failovers: int = 0
    error: str | None = None
    records: int | None = None
    commitments: int | None = None
    stream_url: str
