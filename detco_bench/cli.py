"""The `detco-bench` command line."""

from __future__ import annotations

import typer
from rich.console import Console

from detco_bench.errors import cli_errors

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


def _register_commands() -> None:
    """Commands that live in their own modules register themselves on `app` / `data_app`."""
    # One line per command module (each defines `register(app, data_app)`).
    from detco_bench import cli_pretrain; cli_pretrain.register(app, data_app)  # noqa: E702
    from detco_bench import cli_convert; cli_convert.register(app, data_app)  # noqa: E702
    from detco_bench import cli_data; cli_data.register(app, data_app)  # noqa: E702
    from detco_bench import cli_report; cli_report.register(app, data_app)  # noqa: E702
    from detco_bench import cli_linear; cli_linear.register(app, data_app)  # noqa: E702


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
