"""The `globai` command: one Typer app with a sub-command per component.

Each sub-command lives in its own module (`market.commands.<name>` or `worker.cli`) exposing `app`, imported only
when that sub-command runs (`globai --help` imports none of them: torch, web3 and FastAPI stay unloaded).
Errors are caught in one place, `main()`, the command boundary every sub-command goes through: a one-line message
and exit code 1 (2 for a usage error); the traceback only with `globai -v ...` (or GLOBAI_DEBUG=1).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer
import typer.core
from typer import _click as click  # Typer's own (vendored) click: its exceptions are the ones raised
from typer._click import exceptions as click_errors

# (sub-command, module exposing a Typer `app`, one-line help shown by `globai --help` without importing it)
SUBCOMMANDS: list[tuple[str, ...]] = [
    ("dev", "market.commands.dev", "The whole local stack (devnet, Redis, market, Celery) from one state file."),
    ("devnet", "market.commands.devnet", "A local Anvil chain with persisted state and the contracts deployed."),
    ("contracts", "market.commands.contracts", "Compile the Solidity contracts."),
    ("market", "market.commands.market", "The market API server, its database and its background jobs."),
    ("job", "market.commands.job", "Post, fund, follow, cancel and refund jobs as a requester."),
    ("audit", "market.commands.audit", "Check jobs and balances from the chain alone."),
    ("models", "market.commands.models", "Model manifests and per-layer shards."),
    ("verifier", "market.commands.verifier", "Calibrate verification tolerances."),
    ("demo", "market.commands.demo", "End-to-end demos on embedded defaults."),
    ("worker", "worker.cli", "Stake, serve layers or training tasks, withdraw earnings."),
    ("inference", "market.commands.inference", "Stream a prompt through the market's workers."),
    ("keys", "market.commands.keys", "API keys for the OpenAI-compatible API (/openai/v1)."),
    ("credit", "market.commands.credit", "Prepaid GLB credit (escrowed on chain) that API keys draw from."),
]


class LazyGroup(typer.core.TyperGroup):
    """Imports a sub-command's module only when it runs; `--help` lists them from SUBCOMMANDS alone."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(s[0] for s in SUBCOMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        own = super().get_command(ctx, cmd_name)
        if own is not None:
            return own
        entry = next((s for s in SUBCOMMANDS if s[0] == cmd_name), None)
        if entry is None:
            return None
        if self._listing:
            return typer.core.TyperCommand(name=cmd_name, help=entry[2] if len(entry) > 2 else "")
        try:
            module = importlib.import_module(entry[1])
        except ModuleNotFoundError as exc:
            if exc.name == entry[1]:  # component not built yet; anything else missing is a real error
                return None
            raise
        command = typer.main.get_command(module.app)
        command.name = cmd_name
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=LazyGroup,
    help="GlobAI: paid, verified LLM inference and training on idle machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show tracebacks and debug logs on errors."),
    log_format: str = typer.Option(
        None,
        "--log-format",
        envvar="GLOBAI_LOG_FORMAT",
        help="text, or json: one JSON object per line with request/run/job ids (child processes inherit it).",
    ),
) -> None:
    """GlobAI: paid, verified LLM inference and training on idle machines."""
    if log_format:
        from globai.logs import configure

        try:
            configure(log_format)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    if verbose:
        os.environ["GLOBAI_DEBUG"] = "1"
        logging.getLogger().setLevel(logging.INFO)


@app.command()
def version() -> None:
    """Print the installed GlobAI version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("globai"))


def describe_error(exc: BaseException) -> str:
    """One line saying what was wrong (and, where we know, what to do) for an exception that reached the CLI."""
    from market.cli_errors import describe

    return describe(exc)


# Sub-commands that start daemons or move money: they say which market and chain they use before anything else.
# (`devnet` and `audit` print the RPC they read in their own output; the rest talk to neither.)
ANNOUNCE = {"market", "worker", "job", "inference"}


def announce_endpoints(args: list[str]) -> None:
    """Fill endpoints from the dev stack's state file (where GLOBAI_* names none) and say which are used."""
    words = [a for a in args if not a.startswith("-")]
    # `dev` manages the file itself; `demo` runs a whole market of its own (it must not share the stack's Redis).
    if not words or words[0] in ("dev", "demo") or "--help" in args:
        return
    from globai.dev.stack import apply_env, state_path

    state = apply_env()
    if words[0] not in ANNOUNCE:
        return
    source = f"dev stack {state_path()}" if state is not None else "GLOBAI_* / defaults"

    def given(option: str, env: str, default: str) -> str:
        for i, a in enumerate(args):
            if a == option and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(option + "="):
                return a.split("=", 1)[1]
        return os.environ.get(env, default)

    market = given("--market", "GLOBAI_MARKET_URL", "http://127.0.0.1:8000")
    rpc = given("--rpc", "GLOBAI_RPC_URL", "http://127.0.0.1:8545")
    typer.echo(f"using market {market}, chain {rpc} ({source})", err=True)


def main(argv: list[str] | None = None) -> None:
    """The command boundary: run the command; any error becomes one line on stderr and exit code 1 or 2."""
    from globai.logs import configure

    try:
        configure()  # GLOBAI_LOG_FORMAT: text (default) or json, one JSON object per line
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    args = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("GLOBAI_DEBUG") == "1"
    try:
        announce_endpoints(args)
        code = app(args=args, prog_name="globai", standalone_mode=False)
        if isinstance(code, int) and code:  # `raise typer.Exit(n)` comes back as a return value here
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "globai"
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click_errors.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code or 1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the boundary: everything becomes one line
        if debug or os.environ.get("GLOBAI_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        typer.echo(f"error: {describe_error(exc)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
