"""What every ``lazyfs`` command shares: errors as one line, logging, the default cache."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from lazyfs.errors import LazyfsError, UsageError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn the project's errors into one line on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LazyfsError as exc:
            click.echo(f"lazyfs: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("lazyfs: interrupted", err=True)
            sys.exit(130)

    return cast(F, wrapper)


def configure_logging(level: str, log_file: Path | None) -> None:
    handler: logging.Handler
    try:
        handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {log_file}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO; that is noise beside our own per-block messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # httpcore's debug trace can show request headers, and with them a token.
    logging.getLogger("httpcore").setLevel(logging.INFO)
