"""`detco-bench report`: result records -> paper-style tables, plots, and a CI check."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer

from detco_bench.errors import UserError, cli_errors
from detco_bench.paths import check_output_folder, output_errors

DEFAULT_OUT = Path("results") / "report"
DEFAULT_FORMATS = "terminal,md,csv,latex,html,png"


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    @app.command()
    @cli_errors
    def report(
        paths: list[Path] = typer.Argument(
            None, help="Record files or folders (searched recursively for *.record.json). "
            "Default: the results store ($DETCO_BENCH_RESULTS or results/runs)."),
        out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the report files."),
        formats: list[str] = typer.Option(
            [DEFAULT_FORMATS], "--format", "-f",
            help="Comma-separated: terminal, md, csv, latex, html, png (or 'all')."),
        check: bool = typer.Option(
            False, "--check", help="Compare with the reference; exit 1 if any metric regresses."),
        reference: str = typer.Option(
            "paper", "--reference", help="paper | smoke | path of a reference CSV file."),
        k: float = typer.Option(2.0, "--k", help="Tolerance: fail below reference - k x spread."),
        provenance: bool = typer.Option(
            False, "--provenance", help="Add provenance columns (versions, commit, hashes, device...)."),
        allow_adapted: bool = typer.Option(
            False, "--allow-adapted",
            help="--check --reference paper: compare runs adapted from the published protocol too "
            "(by default they are 'not comparable')."),
        allow_empty: bool = typer.Option(
            False, "--allow-empty",
            help="--check: succeed when no metric could be compared (by default that fails)."),
    ) -> None:
        """Aggregate result records into the paper's tables next to the published numbers."""
        from rich.console import Console

        from detco_bench import report as rep
        from detco_bench.records import default_results_dir

        try:
            fmts = rep.parse_formats(formats)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if not fmts:
            raise UserError(f"--format {','.join(formats)!r} names no format; choose from {', '.join(rep.FORMATS)}")
        if not k >= 0:
            raise UserError(f"--k must be >= 0, got {k}")
        if paths:
            missing = [p for p in paths if not p.exists()]
            if missing:
                raise UserError(f"no such file or folder: {missing[0]}")
            scan = list(paths)
        else:
            scan = [default_results_dir()]
        check_output_folder(out)

        # Wide tables in logs and pipes (rich would wrap them at 80 columns); a terminal keeps its width.
        width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
        out_console = Console(highlight=False, soft_wrap=False, width=width)
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        result = rep.build_report(scan, reference=reference, check=check, k=k, provenance=provenance,
                                  allow_adapted=allow_adapted)
        with output_errors(out):  # before any warning: an --out that cannot be written is one error line
            written = rep.write_report(result, out, fmts, out_console)
        if not paths and not scan[0].exists():
            err.print(f"[yellow]warning:[/] the results store {scan[0]} does not exist yet (no records)")
        if result.skipped:
            err.print(f"[yellow]warning:[/] skipped {len(result.skipped)} record file(s):")
            for path, reason in result.skipped:
                err.print(f"  {path}: {reason}", markup=False)
        if not result.records:
            err.print("[yellow]warning:[/] no successful result records found in "
                      + ", ".join(str(p) for p in scan))
        for path in written:
            out_console.print(f"wrote {path}", markup=False, soft_wrap=True)

        if result.check is not None:
            if "terminal" not in fmts:  # the terminal tables already show it
                fails = result.check.table[result.check.table.status == rep.STATUS_FAIL]
                for row in fails.itertuples(index=False):
                    why = row.note if math.isnan(row.mean) else (
                        f"{row.mean:.2f} < {row.threshold:.2f} = {row.reference:g} - {k:g} x {row.spread:g}")
                    err.print(f"FAIL {row.task} {row.checkpoint} ({row.engine}) {row.metric}: {why}", markup=False)
                out_console.print(result.check.summary_line(), markup=False, soft_wrap=True)
            if result.check.compared == 0:
                why = (f"reference '{result.reference_name}': {len(result.reference)} row(s); "
                       f"{len(result.groups)} group(s); "
                       + ", ".join(f"{result.check.count(s)} {s}" for s in rep.UNCOMPARED_STATUSES))
                if not allow_empty:
                    # A check that compares nothing proves nothing: CI must not pass on it.
                    err.print(f"error: --check compared no metric ({why}); pass --allow-empty to accept that",
                              markup=False, soft_wrap=True)
                    raise typer.Exit(1)
                err.print(f"warning: no reference metrics to compare ({why}); --check passes vacuously "
                          "(--allow-empty)", markup=False, soft_wrap=True)
            if result.check.failed:
                err.print(f"[bold red]check failed:[/] {result.check.count(rep.STATUS_FAIL)} metric(s) "
                          f"below reference - {k:g} x spread")
                raise typer.Exit(1)
