"""Errors the CLI reports as one `error: ...` line, without a traceback.

Exit code 2: bad input from the user (nothing was done). Exit code 1: a run that started and then
failed on its own (a loss became NaN), which no change of the command line would have prevented.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from pretrain.errors import NonFiniteLossError, PretrainInputError

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, an invalid combination."""


EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2

#: What to do when detectron2 is missing (`detco-bench doctor` and the engine registry say it).
DETECTRON2_INSTALL_HINT = (
    "detectron2 is not on PyPI: install it from its official repository following "
    "https://detectron2.readthedocs.io/en/latest/tutorials/install.html "
    "(it needs 'setuptools<81' at run time)"
)

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, PretrainInputError)
RUN_ERRORS: tuple[type[BaseException], ...] = (NonFiniteLossError,)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator for CLI commands: user errors become one `error: ...` line and exit code 2, run
    failures one `error: ...` line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except RUN_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_RUN_FAILED) from None

    return wrapper
