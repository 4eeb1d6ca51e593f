"""`detco-bench convert`: any ResNet checkpoint -> verified Detectron2 / torchvision weights."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from detco_bench.errors import cli_errors
from detco_bench.paths import output_errors


class ConvertTarget(str, Enum):
    detectron2 = "detectron2"
    torchvision = "torchvision"


class CheckpointFormat(str, Enum):
    auto = "auto"
    detco_bench = "detco-bench"
    moco = "moco"
    openselfsup = "openselfsup"
    torchvision = "torchvision"


def _ok(passed: bool) -> str:
    return "[green]ok[/green]" if passed else "[bold red]FAILED[/bold red]"


def print_result(console: Console, report: dict[str, Any], out: Path, report_path: Path) -> None:
    """The detected format, dropped keys, and the verification table of a conversion report."""
    src = report["source"]
    how = "detected" if src["format_detected"] else "given"
    console.print(f"[bold]{src['path']}[/bold]: format [cyan]{src['format']}[/cyan] ({how}: "
                  f"{src['format_evidence']}), arch [cyan]{src['arch']}[/cyan], "
                  f"{src['backbone_keys']} backbone keys of {src['num_keys']}")

    dropped = report["dropped"] + report["dropped_in_conversion"]
    if dropped:
        table = Table(title="Dropped keys", title_justify="left")
        table.add_column("keys", justify="right")
        table.add_column("examples", overflow="fold")
        table.add_column("why", overflow="fold")
        for group in dropped:
            examples = ", ".join(group["keys"][:2]) + (", ..." if group["count"] > 2 else "")
            table.add_row(str(group["count"]), examples, group["reason"])
        console.print(table)

    verification = report["verification"]
    keys, numerical = verification["keys"], verification["numerical"]
    table = Table(title=f"Verification ({report['target']['kind']})", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    problems = [f"{len(keys[n])} {n}" for n in ("missing", "unexpected", "duplicated") if keys[n]]
    if keys["shape_mismatch"]:
        problems.append(f"{len(keys['shape_mismatch'])} shape mismatches")
    table.add_row("key completeness", _ok(keys["passed"]),
                  f"{keys['filled']}/{keys['expected']} filled exactly once"
                  + (f"; {', '.join(problems)}" if problems else "") + f" (vs {keys['reference']})")
    if numerical.get("error"):
        table.add_row("features", _ok(False), numerical["error"])
    for stage, s in numerical.get("stages", {}).items():
        detail = s.get("error") or (f"max|diff| {s['max_abs_diff']:.2e}, rel {s['rel_diff']:.2e} "
                                    f"(tol {numerical['tolerance']:g})")
        table.add_row(f"{stage} features", _ok(s["passed"]), detail)
    console.print(table)
    console.print(f"numerical check: {numerical['method']}, input {numerical['input_shape']}")
    d2 = verification.get("detectron2")
    if d2 is not None and not d2["used"]:
        console.print(f"[yellow]detectron2 not used[/yellow] ({d2['why_not']}): key set derived from "
                      "detectron2's naming, features from a plain-torch reference forward")
    for note in report["notes"]:
        console.print(f"note: {note}")
    if report["passed"]:
        console.print(f"[green]wrote[/green] {out}  (report: {report_path})")
        if "detectron2_config" in report:
            settings = ", ".join(f"{k}={v}" for k, v in report["detectron2_config"].items()
                                 if k != "MODEL.WEIGHTS")
            console.print(f"use with: {settings}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    @app.command()
    @cli_errors
    def convert(
        checkpoint: Path = typer.Argument(..., help="Checkpoint: ours, MoCo, OpenSelfSup/MMSelfSup/DetCo, "
                                                    "or a torchvision ResNet state dict."),
        to: ConvertTarget = typer.Option(..., "--to", help="Output kind."),
        out: Path = typer.Option(..., "--out", help="Output file (.pkl for detectron2, .pth for "
                                                    "torchvision); the report goes to <out>.verify.json."),
        fmt: CheckpointFormat = typer.Option(CheckpointFormat.auto, "--format",
                                             help="Input format (default: detect it)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
        input_size: int = typer.Option(128, "--input-size", help="Side of the random input of the "
                                                                 "numerical check."),
    ) -> None:
        """Convert a ResNet checkpoint to Detectron2 (.pkl) or torchvision (.pth) weights and verify
        it: every backbone key filled exactly once, identical res2..res5 features. Exit 1 when
        verification fails (nothing is written but the report), 2 for bad input."""
        from detco_bench.checkpoints import convert_checkpoint, failure_summary

        console = Console()
        # output_errors: an --out that its permission bits allow but the file system refuses
        with console.status("converting and verifying ..."), output_errors(out):
            result = convert_checkpoint(checkpoint, to.value, out, fmt=fmt.value, force=force,
                                        input_size=input_size)
        print_result(console, result.report, result.out, result.report_path)
        if not result.passed:
            kept = " (the existing file there is unchanged)" if result.out.exists() else ""
            console.print(f"[bold red]verification FAILED[/bold red]: {result.out} was not written{kept}; "
                          f"report: {result.report_path}")
            for line in failure_summary(result.report["verification"]):
                console.print(f"  - {line}")
            raise typer.Exit(1)
