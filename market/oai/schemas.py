"""Request bodies of /openai/v1 (pydantic, extra fields refused), with OpenAI's defaults and limits.

Parameters GlobAI does not implement are refused with a 400 that names them, never silently ignored; a few are
accepted at their neutral value only (e.g. `frequency_penalty: 0`, `response_format: {"type": "text"}`).
`echo` is implemented for /completions (the prompt in front of the text; with `logprobs`, prompt scoring) and
accepted only at its neutral value for /chat/completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from market.oai.errors import OpenAIError, validation_message

MAX_STOP = 4

# name -> neutral values accepted (anything else is refused by name)
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "store": (None, False),
    "service_tier": (None, "auto", "default"),
    "metadata": (None, {}),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str = Field(max_length=200_000)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(max_length=200_000)
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: Any) -> Any:
        if value == "":
            raise ValueError("stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatIn(Common):
    messages: list[Message] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _logprobs(self) -> ChatIn:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionIn(Common):
    prompt: str | Annotated[list[Annotated[str, Field(max_length=200_000)]], Field(min_length=1, max_length=128)]
    # OpenAI's default for /completions; 0 only with `echo` (score the prompt, generate nothing)
    max_tokens: int | None = Field(default=16, ge=0, le=1_000_000)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False  # the prompt in front of each choice's text (and, with logprobs, the prompt's logprobs)

    @model_validator(mode="after")
    def _zero_tokens_need_echo(self) -> CompletionIn:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens must be at least 1 (0 is allowed only with echo: true)")
        return self

    def scores_prompt(self) -> bool:
        """echo with logprobs: every prompt token's logprob (the prefill returns every row's logits)."""
        return self.echo and self.logprobs is not None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def token_limit(self) -> int | None:
        return self.max_tokens

    def logprob_count(self) -> int | None:
        return self.logprobs


def parse(model: type[Common], body: Any) -> Any:
    """Validate a request body; 400 in OpenAI's shape naming the parameter at fault."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for name, neutral in UNSUPPORTED.items():
        if name in body and name not in model.model_fields:
            if body[name] in neutral:
                body = {k: v for k, v in body.items() if k != name}
            else:
                raise OpenAIError(
                    400,
                    f"Unsupported parameter: '{name}' is not supported by GlobAI",
                    param=name,
                    code="unsupported_parameter",
                )
    if isinstance(body.get("prompt"), list) and body["prompt"] and not isinstance(body["prompt"][0], str):
        raise OpenAIError(
            400, "token-id prompts are not supported; send text", param="prompt", code="unsupported_parameter"
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise OpenAIError(400, message, param=param) from None
