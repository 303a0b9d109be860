"""Turn user-facing failures into one red line and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from tunepp_deploy.errors import TuneppError

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator for CLI commands: a :class:`TuneppError` prints ``error: ...`` and exits with 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TuneppError as e:
            typer.secho(f"error: {one_line(e)}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line: a file name may hold a newline or a carriage return (a hostile
    or broken name), and a user-facing error must stay one line that scripts can grep."""
    return str(e).replace("\r", "\\r").replace("\n", "\\n")
