"""`detco-bench linear`: linear probe, cached-feature probe, kNN and per-stage probes."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from detco_bench.errors import cli_errors
from detco_bench.linear.flags import PRESET_FLAGS, cli_parameters


def _run_linear_command(**values: Any) -> None:
    """Evaluate a frozen backbone on an ImageFolder dataset (the MoCo linear protocol and
    faster approximations). Launch with torchrun for several GPUs (protocol mode)."""
    from detco_bench.linear import preset_config, run_linear
    from detco_bench.records import read_record
    from pretrain.distributed import rank

    cfg = preset_config(values["mode"], **{name: values[name] for name in PRESET_FLAGS})
    path = run_linear(values["checkpoint"], values["data"], values["out"], cfg, fmt=values["format"],
                      method=values["method"], baseline=values["baseline"], dataset_name=values["dataset_name"],
                      resume=values["resume"], show_progress=not values["no_progress"])
    if rank() == 0:
        record = read_record(path)
        shown = "  ".join(f"{k} {v:.2f}" for k, v in sorted(record.metrics.items()))
        typer.echo(f"{record.task}: {shown}")
        typer.echo(f"record: {path}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add `linear` to the app: one option per flag of `detco_bench.linear.flags`."""

    @cli_errors
    def linear(**values: Any) -> None:
        _run_linear_command(**values)

    linear.__doc__ = _run_linear_command.__doc__
    linear.__signature__ = inspect.Signature(cli_parameters())  # type: ignore[attr-defined]
    linear.__annotations__ = {}
    app.command("linear")(linear)
