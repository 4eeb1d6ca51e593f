"""The command line of ``detco-bench linear``, defined once.

`FLAGS` lists every option with its flag, type, default and help. From it come the CLI's
parameters (`cli_parameters`), the argument list a pipeline job runs (`linear_argv`) and the
check of a job's flags before the pipeline starts (`parse_linear_argv`, the CLI's own parser).
Importing this module does not import torch: the CLI builds its command from it at start-up.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import typer.core
import typer.main
from typer.exceptions import TyperException

from detco_bench.errors import UserError

#: typer's default of a required option.
REQUIRED: Any = ...


@dataclass(frozen=True)
class LinearFlag:
    """One option of ``detco-bench linear``: the command's parameter `name`, its `flag`, value
    `type`, `default` (`REQUIRED`, or None: the mode's preset decides) and `help`."""

    name: str
    flag: str
    type: type
    default: Any
    help: str | None = None


FLAGS: tuple[LinearFlag, ...] = (
    LinearFlag("checkpoint", "--checkpoint", Path, REQUIRED, "Any checkpoint `detco-bench convert` reads."),
    LinearFlag("data", "--data", Path, REQUIRED, "ImageFolder root with train/<class>/ and val/<class>/."),
    LinearFlag("out", "--out", Path, REQUIRED, "Output folder (state, feature cache, result record)."),
    LinearFlag("mode", "--mode", str, "protocol", "protocol | fast | knn | stages"),
    LinearFlag("epochs", "--epochs", int, None, "Default 100 (lr x0.1 at 60% and 80% of them)."),
    LinearFlag("batch_size", "--batch-size", int, None, "Global batch size (default 256)."),
    LinearFlag("lr", "--lr", float, None, "Default 30 (MoCo's linear protocol)."),
    LinearFlag("image_size", "--image-size", int, None,
               "Crop size (default 224; validation resizes to size*256/224)."),
    LinearFlag("aug_copies", "--aug-copies", int, None,
               "fast/stages: passes of the training augmentation to cache (default 4; 0 trains on centre crops)."),
    LinearFlag("fast_head", "--fast-head", str, None,
               "fast/stages: sgd (the protocol's head and schedule on the cached views; default) | lbfgs "
               "(logistic regression, weight decay chosen on held-out training images)."),
    LinearFlag("view_sampling", "--view-sampling", str, None,
               "fast/stages, sgd head: gaussian (each epoch a fresh draw from a Gaussian fitted to each image's K "
               "views; default with 2 or more views) | cycle (epoch e trains on cached view e mod K)."),
    LinearFlag("cache_dtype", "--cache-dtype", str, None, "float32 | float16 for the feature cache."),
    LinearFlag("knn_k", "--knn-k", int, None, "kNN neighbours (default 20)."),
    LinearFlag("workers", "--workers", int, None, "Data-loading workers (default 8, fewer on fewer CPUs)."),
    LinearFlag("seed", "--seed", int, None),
    LinearFlag("format", "--format", str, "auto", "Checkpoint format (auto-detected by default)."),
    LinearFlag("method", "--method", str, None, "Method label for the record (default: from the checkpoint)."),
    LinearFlag("baseline", "--baseline", bool, False,
               "Record the checkpoint as an in-harness baseline (detco-bench run --baselines sets it): the "
               "report takes every method's delta against it."),
    LinearFlag("dataset_name", "--dataset-name", str, None,
               "Dataset label (default: imagenet for 1000 classes, else the folder name)."),
    LinearFlag("resume", "--resume", bool, False, "Continue the job in --out."),
    LinearFlag("no_progress", "--no-progress", bool, False),
)
#: The flags that override the mode's `LinearConfig` preset (`linear.config.preset_config`).
PRESET_FLAGS = ("epochs", "batch_size", "lr", "image_size", "aug_copies", "fast_head", "view_sampling", "cache_dtype",
                "knn_k", "workers", "seed")


def cli_parameters() -> list[inspect.Parameter]:
    """One typer option per flag, for a command built with `inspect.Signature`."""
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                              default=typer.Option(f.default, f.flag, help=f.help)) for f in FLAGS]


def linear_argv(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str],
                mode: str, *, seed: int | None = None, extra: Sequence[str] = (), method: str | None = None,
                baseline: bool = False, resume: bool = False, progress: bool = True) -> list[str]:
    """The ``detco-bench linear`` arguments (no program name) of one probe; `extra`: more flags
    (a suite's, the user's ``--linear-flags``), after the job's own."""
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--mode", mode]
    if seed is not None:
        argv += ["--seed", str(seed)]
    argv += [*(["--resume"] if resume else []), *([] if progress else ["--no-progress"]), *extra]
    if method:
        argv += ["--method", method]
    if baseline:
        argv.append("--baseline")
    return argv


def _command() -> typer.core.TyperCommand:
    """A ``linear`` command with these flags and no action: the CLI's parser, alone."""
    app = typer.Typer()

    def linear(**values: Any) -> None:  # never called: only the parser is used
        del values

    linear.__signature__ = inspect.Signature(cli_parameters())  # type: ignore[attr-defined]
    app.command()(linear)
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperCommand)
    return command


def parse_linear_argv(argv: Sequence[str]) -> dict[str, Any]:
    """The parameters ``detco-bench linear`` would read from `argv`; the parser's own message (a
    bad value, an unknown flag, a missing option) as a one-line `UserError`. Nothing runs."""
    try:
        return dict(_command().make_context("linear", list(argv)).params)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise UserError(" ".join(message.split())) from None
