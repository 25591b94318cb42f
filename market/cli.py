"""The `globai` command: one Typer app with a sub-command per component.

Each sub-command lives in its own module (`market.commands.<name>` or `worker.cli`) exposing `app`;
errors are caught here, at the command boundary, and printed as one line.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from market.errors import GlobaiError

app = typer.Typer(
    help="GlobAI: paid, verified LLM inference and training on idle machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """GlobAI: paid, verified LLM inference and training on idle machines."""


@app.command()
def version() -> None:
    """Print the installed GlobAI version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("globai"))

# (sub-command, module exposing a Typer `app`)
SUBCOMMANDS: list[tuple[str, str]] = [
    ("devnet", "market.commands.devnet"),
    ("contracts", "market.commands.contracts"),
    ("market", "market.commands.market"),
    ("job", "market.commands.job"),
    ("audit", "market.commands.audit"),
    ("models", "market.commands.models"),
    ("verifier", "market.commands.verifier"),
    ("demo", "market.commands.demo"),
    ("worker", "worker.cli"),
    ("inference", "market.commands.inference"),
]


def _register() -> None:
    for name, module_name in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # component not built yet; anything else missing is a real error
                continue
            raise
        app.add_typer(module.app, name=name)


_register()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except GlobaiError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
