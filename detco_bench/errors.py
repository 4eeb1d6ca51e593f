"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from pretrain.errors import PretrainInputError

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, an invalid combination."""


EXIT_BAD_INPUT = 2

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, PretrainInputError)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator for CLI commands: user errors become one `error: ...` line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper
