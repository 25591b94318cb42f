"""`globai inference run|get`: send prompts through the market's pipeline and stream the text back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from globai.errors import ConfigError

app = typer.Typer(help="Pipeline inference: prompts in, streamed text out.", no_args_is_help=True)

MarketOpt = Annotated[str, typer.Option("--market", envvar="GLOBAI_MARKET_URL", help="Market base URL.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="GLOBAI_PRIVATE_KEY", help="Requester key (0x-hex).")]
KeyFileOpt = Annotated[Path | None, typer.Option("--key-file", help="File holding the requester's key.")]


def _account(key: str | None, key_file: Path | None):  # type: ignore[no-untyped-def]
    from globai.keys import load_account

    return load_account(key, key_file, who="requester", env="GLOBAI_PRIVATE_KEY")


@app.command()
def run(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts (generated together as one batch).")],
    market: MarketOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the market's first).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, max=512)] = 32,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    chat: Annotated[
        bool, typer.Option("--chat", help="Send each prompt as a user message through the model's chat template.")
    ] = False,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable, at most 4).")] = None,
) -> None:
    """Generate and print text as it arrives (greedy by default; temperature/top-p sampling is seeded).

    Generation ends at the model's end-of-sequence token, a --stop string, or after -n tokens."""
    import httpx

    from globai.client import check, sign_in

    account = _account(key, key_file)
    with httpx.Client(base_url=market, timeout=httpx.Timeout(30, read=600)) as http:
        http.headers["Authorization"] = f"Bearer {sign_in(http, account, ['requester'])}"
        if model is None:
            models = check(http.get("/v1/models")).json()["models"]
            if not models:
                raise ConfigError("the market serves no models")
            model = str(models[0]["name"])
        body: dict[str, object] = {
            "model": model,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stream": True,
            "stop": stop or [],
        }
        if chat:
            body["messages"] = [[{"role": "user", "content": p}] for p in prompts]
        else:
            body["prompts"] = prompts
        with http.stream("POST", "/v1/inference", params={"format": "ndjson"}, json=body) as response:
            if response.status_code >= 400:
                response.read()
                check(response)
            single = len(prompts) == 1
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                kind = event["event"]
                if kind == "route":
                    hops = ", ".join(f"[{h['layers'][0]},{h['layers'][1]}) {h['worker'][:10]}" for h in event["route"])
                    typer.echo(f"route: {hops}", err=True)
                elif kind == "token" and single:
                    typer.echo(event.get("text", [""])[0], nl=False)
                elif kind == "failover":
                    typer.echo(f"\n[failover: layers {event['layers']} moved off {event['failed'][:10]}]", err=True)
                elif kind == "done":
                    if single:
                        typer.echo("")
                    else:
                        for i, text in enumerate(event.get("text", [])):
                            typer.echo(f"[{i}] {prompts[i]}{' → ' if chat else ''}{text}")
                elif kind == "error":
                    raise ConfigError(f"generation failed: {event['detail']}")
