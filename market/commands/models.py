"""`globai models`: build tiny models, import local checkpoints into per-layer shards, inspect, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Model manifests and per-layer shards.", no_args_is_help=True)

OutOpt = Annotated[Path, typer.Option("--out", help="Directory for manifest.json, shards/ and tokenizer/.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a model already in --out.")]


@app.command("build-tiny")
def build_tiny(
    out: OutOpt = Path("models/tiny-llama"),
    hidden: Annotated[int, typer.Option(help="Hidden size (a multiple of 64, or below 64).")] = 256,
    layers: Annotated[int, typer.Option(help="Number of decoder layers.")] = 8,
    seed: Annotated[int, typer.Option(help="torch.manual_seed for the weights.")] = 0,
    vocab: Annotated[int, typer.Option(help="BPE vocabulary size to train.")] = 512,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    force: ForceOpt = False,
) -> None:
    """Make a deterministic tiny Llama model (local BPE tokenizer, seeded weights) and shard it."""
    from market.models.tiny import build_tiny_llama

    manifest = build_tiny_llama(
        out, hidden=hidden, layers=layers, seed=seed, vocab_size=vocab, dtype=dtype, overwrite=force
    )
    typer.echo(f"{manifest.name}: {manifest.num_layers} layers, digest {manifest.digest()} -> {out}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="Local Hugging Face checkpoint directory (safetensors).")],
    out: OutOpt,
    name: Annotated[str | None, typer.Option(help="Model name (default: the directory name).")] = None,
    force: ForceOpt = False,
) -> None:
    """Split a local checkpoint into per-layer shards with a manifest (pickle weights are refused)."""
    from market.models.importer import import_checkpoint

    manifest = import_checkpoint(path, out, name=name, overwrite=force)
    typer.echo(f"{manifest.name}: {manifest.num_layers} layers, digest {manifest.digest()} -> {out}")


@app.command()
def show(model_dir: Annotated[Path, typer.Argument(help="Directory holding manifest.json.")]) -> None:
    """Print a manifest's summary and shard table."""
    from market.models.manifest import load_manifest

    m = load_manifest(model_dir)
    typer.echo(f"name      {m.name}\nfamily    {m.family} ({m.architecture}, {m.task})\ndtype     {m.dtype}")
    typer.echo(f"layers    {m.num_layers}   hidden {m.hidden_size}   vocab {m.vocab_size}")
    typer.echo(f"digest    {m.digest()}")
    for shard in m.shards:
        typer.echo(f"  {shard.name:<12} {shard.size:>12,d} B  {shard.sha256[:16]}  {shard.path}")


@app.command()
def verify(model_dir: Annotated[Path, typer.Argument(help="Directory holding manifest.json.")]) -> None:
    """Check every shard and tokenizer file against the manifest's sha256 and size."""
    from market.models.manifest import load_manifest, verify_model_dir

    m = load_manifest(model_dir)
    verify_model_dir(model_dir, m)
    typer.echo(f"ok: {len(m.shards)} shards and {len(m.tokenizer)} tokenizer files match {m.name}")
