"""`globai job train post|watch|download|rollback`: a requester's DiLoCo training job from a text or JSONL file.

`post` uploads the dataset, posts the job (a tiny Llama by default, or `--spec FILE` with any
`market.training.spec.TrainingJobSpec` fields), and with `--fund` funds it on chain with a permit (as
`globai job fund`). `watch` prints the held-out loss per round as a table and a text plot until the job is done.
`download` fetches the final checkpoint as a Hugging Face directory (`LlamaForCausalLM.from_pretrained(dir)`).
`rollback` restarts the open round from an earlier checkpoint version.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from market.commands.requester import KeyOpt, MarketOpt, fund_job
from market.commands.requester import echo_json as _echo
from market.commands.requester import requester_client as _client
from market.training.export import SEALED_WEIGHTS, open_model

app = typer.Typer(help="Train a model on your text with DiLoCo on the market's workers.", no_args_is_help=True)

SPARK = " ▁▂▃▄▅▆▇█"
KEYS_DIR = Path("var/requester/training-keys")


def build_spec(data: Path, spec_file: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The job spec: a tiny byte-level Llama by default; `spec_file` fields, then command-line options, win."""
    from market.training.model import tiny_llama_config
    from market.training.spec import TrainingJobSpec

    spec: dict[str, Any] = {"model": {"kind": "config", "config": tiny_llama_config(), "init_seed": 0}}
    if spec_file is not None:
        spec.update(json.loads(spec_file.read_text()))
    fmt = "jsonl" if data.suffix.lower() in (".jsonl", ".ndjson") else "text"
    spec.setdefault("dataset", {})
    spec["dataset"] = {"format": fmt, **spec["dataset"]}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return TrainingJobSpec.model_validate(spec).model_dump(mode="json")


@app.command()
def post(
    data: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Training text (.txt) or JSONL.")],
    price: Annotated[str, typer.Option("--price", help="GLB per inner step of one task, e.g. 0.0001.")],
    wei: Annotated[bool, typer.Option("--wei", help="--price is in wei, not GLB.")] = False,
    spec_file: Annotated[
        Path | None, typer.Option("--spec", exists=True, dir_okay=False, help="JSON TrainingJobSpec fields.")
    ] = None,
    rounds: int = typer.Option(None, "--rounds", help="R (default 10)."),
    workers: int = typer.Option(None, "--workers", help="W tasks per round (default 4)."),
    inner_steps: int = typer.Option(None, "--inner-steps", help="H AdamW steps per task (default 50)."),
    min_updates: int = typer.Option(None, "--min-updates", help="Updates that close a round at its deadline."),
    round_timeout: float = typer.Option(None, "--round-timeout", help="Seconds before a round closes anyway."),
    compression: str = typer.Option(None, "--compression", help="none | int8 | topk:<frac> (default int8)."),
    seed: int = typer.Option(None, "--seed"),
    verify_rate: float = typer.Option(0.1, "--verify-rate", help="Fraction of tasks replayed by another operator."),
    hours: float = typer.Option(24.0, "--hours", help="Deadline, hours from now."),
    fund_it: bool = typer.Option(False, "--fund", help="Fund it on chain now (permit) and confirm with the market."),
    encrypt: bool = typer.Option(
        True,
        "--encrypt/--no-encrypt",
        help="Encrypt the checkpoints at rest with a fresh key kept in --keys-dir (downloads decrypt with it).",
    ),
    keys_dir: Annotated[Path, typer.Option("--keys-dir", help="Where the jobs' checkpoint keys are kept.")] = KEYS_DIR,
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Upload the dataset and post a training job; prints the job (and funds it with --fund)."""
    overrides = {
        "rounds": rounds,
        "workers_per_round": workers,
        "inner_steps": inner_steps,
        "min_updates": min_updates,
        "round_timeout_s": round_timeout,
        "compression": compression,
        "seed": seed,
    }
    from globai.amounts import fmt_glb, parse_glb

    price_wei = parse_glb(price, what="--price", wei=wei)
    spec = build_spec(data, spec_file, overrides)
    settings, client = _client(market, key_file)
    ds = client.raw(
        "POST", "/v1/training/datasets", content=data.read_bytes(), headers={"Content-Type": "application/octet-stream"}
    ).json()
    units = spec["rounds"] * spec["workers_per_round"] * spec["inner_steps"]
    from market.training.jobs import replay_budget

    budget = replay_budget(price_wei, units, verify_rate)
    body = {
        "spec": spec,
        "dataset_sha256": ds["sha256"],
        "budget": str(budget),
        "price_per_unit": str(price_wei),
        "verify_rate": verify_rate,
        "deadline": (datetime.now(UTC) + timedelta(hours=hours)).isoformat(),
    }
    checkpoint_key = secrets.token_bytes(32) if encrypt else None
    if checkpoint_key is not None:
        body["checkpoint_key"] = checkpoint_key.hex()
    created = client.request("POST", "/v1/training/jobs", json=body)
    job_id = created["job"]["id"]
    if checkpoint_key is not None:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = keys_dir / f"{job_id}.key"
        path.write_text(checkpoint_key.hex())
        path.chmod(0o600)
        typer.echo(f"checkpoint key (keep it: the downloaded weights decrypt only with it): {path}", err=True)
    typer.echo(
        f"job {job_id}: {spec['rounds']} rounds x {spec['workers_per_round']} tasks x "
        f"{spec['inner_steps']} steps on {ds['bytes']} bytes, budget {fmt_glb(budget)}",
        err=True,
    )
    if fund_it:
        _echo(fund_job(settings, client, job_id))
    else:
        _echo(created)
        typer.echo(f"fund it with: globai job fund {job_id}", err=True)


def _plot(values: list[float], width: int = 60) -> str:
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[1 + round((v - lo) / span * (len(SPARK) - 2))] for v in values[-width:])


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@app.command()
def watch(
    job_id: str = typer.Argument(...),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between polls."),
    once: bool = typer.Option(False, "--once", help="Print the current state and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the progress JSON instead of the table."),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Loss per round (held-out loss of each checkpoint, mean worker loss), until the job is done."""
    _, client = _client(market, key_file)
    shown = -1
    while True:
        p = client.request("GET", f"/v1/training/jobs/{job_id}")
        applied = [r for r in p["per_round"] if r["status"] == "applied"]
        if as_json:
            if once or p["status"] != "running":
                _echo(p)
        elif len(applied) != shown:
            if shown < 0:
                typer.echo(
                    f"job {job_id}  R={p['rounds']} W={p['workers_per_round']}  "
                    f"initial held-out loss {_fmt(p['eval_loss'][0])}"
                )
                typer.echo("round  close            updates  excluded  held-out loss  worker loss")
            for r in applied[max(shown, 0) :]:
                typer.echo(
                    f"{r['round']:>5}  {r['close_state'] or '-':<15}  {r['updates']:>7}  {r['excluded']:>8}  "
                    f"{_fmt(r['eval_loss']):>13}  {_fmt(r['worker_loss']):>11}"
                )
            shown = len(applied)
        if once or p["status"] != "running":
            break
        time.sleep(interval)
    losses = [v for v in p["eval_loss"] if v is not None]
    if not as_json and len(losses) > 1:
        typer.echo(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}  {_plot(losses)}")
    privacy = p.get("privacy")
    if not as_json and privacy:
        eps = "∞ (no noise)" if privacy["epsilon"] is None else f"{privacy['epsilon']:.3g}"
        typer.echo(
            f"federated, secure aggregation (t={privacy['threshold']}), clip {privacy['clip_norm']:g}, "
            f"σ {privacy['noise_multiplier']:g}: ε = {eps} at δ = {privacy['delta']:g} "
            f"after {privacy['rounds_accounted']} round(s), per worker"
        )
    typer.echo(f"status {p['status']} (job {p['job_status']}), round {p['round']}/{p['rounds']}", err=True)


@app.command()
def download(
    job_id: Annotated[str, typer.Argument()],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the Hugging Face model into.")],
    version: int = typer.Option(None, "--version", help="Checkpoint version (default: the latest)."),
    keys_dir: Annotated[
        Path, typer.Option("--keys-dir", help="Where `post` kept the job's checkpoint key.")
    ] = KEYS_DIR,
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Download a checkpoint as a Hugging Face directory (config.json, model.safetensors, tokenizer); sealed
    weights are decrypted here with the job's key."""
    _, client = _client(market, key_file)
    params = {} if version is None else {"version": version}
    tar = client.raw("GET", f"/v1/training/jobs/{job_id}/model", params=params, timeout=600).content
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(out, filter="data")  # the data filter refuses absolute paths, links out and devices
    if (out / SEALED_WEIGHTS).exists():
        from globai.errors import ConfigError
        from globai.protocol.aead import AeadError

        key_path = keys_dir / f"{job_id}.key"
        try:
            open_model(out, bytes.fromhex(key_path.read_text().strip()), job_id)
        except (OSError, ValueError, AeadError) as exc:
            raise ConfigError(f"cannot decrypt the weights with {key_path}: {exc}") from None
    typer.echo(f"wrote {out} ({len(tar)} bytes); load it with LlamaForCausalLM.from_pretrained({str(out)!r})")


@app.command()
def rollback(
    job_id: Annotated[str, typer.Argument()],
    version: Annotated[int, typer.Argument(min=0, help="Checkpoint version the next round continues from.")],
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Roll a running job back to checkpoint VERSION: the open round restarts from it (later versions are kept)."""
    _, client = _client(market, key_file)
    r = client.request("POST", f"/v1/training/jobs/{job_id}/rollback", json={"version": version})
    typer.echo(f"job {job_id}: round {r['round']} now trains from version {r['version']} ({r['base_manifest'][:12]}…)")
