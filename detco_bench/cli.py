"""The `detco-bench` command line."""

from __future__ import annotations

import importlib
import sys
import warnings

import typer
from rich.console import Console
from typer.exceptions import TyperException

from detco_bench.errors import EXIT_BAD_INPUT, cli_errors

app = typer.Typer(
    name="detco-bench",
    help="Benchmark self-supervised detection pretraining (DetCo, MoCo v2): pretrain, convert, "
    "transfer, probe and report.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Generate and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()


@app.command()
@cli_errors
def doctor() -> None:
    """Report torch / torchvision / CUDA, whether detectron2 is importable, and which datasets exist."""
    from detco_bench.doctor import run_doctor

    problems = run_doctor(console)
    raise typer.Exit(1 if problems else 0)


# Modules that each define `register(app, data_app)` and add their commands.
COMMAND_MODULES = ("cli_pretrain", "cli_convert", "cli_transfer", "cli_linear", "cli_report", "cli_run", "cli_data")


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"detco_bench.{name}").register(app, data_app)


_register_commands()


#: Warnings of third-party libraries about their own internals: nothing a user of this CLI can act on.
THIRD_PARTY = (r"(torch|torchvision|pycocotools|cityscapesscripts|tensorboard|matplotlib|submitit|fvcore|"
               r"detectron2)(\.|$)")


def quiet_third_party_warnings() -> None:
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)


def main() -> None:
    """The console script: usage errors (unknown option, bad value, missing argument) are one
    ``error:`` line and exit code 2, like every other bad input."""
    quiet_third_party_warnings()
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:
        message = " ".join((exc.format_message() if hasattr(exc, "format_message") else str(exc)).split())
        if message:  # empty when a bare group printed its help
            print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", EXIT_BAD_INPUT))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
