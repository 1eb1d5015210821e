"""The ``lazyfs`` command line. User errors become one line on stderr and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lazyfs import __version__
from lazyfs.errors import LazyfsError

F = TypeVar("F", bound=Callable[..., Any])


def fail(exc: LazyfsError) -> None:
    click.echo(f"lazyfs: error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lazyfs")
def main() -> None:
    """Mount a remote model repository read-only; every block is verified before it is read."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port (0: any free port).")
@click.option("--access-log", type=click.Path(path_type=Path), help="Append one line per request.")
def serve(directory: Path, host: str, port: int, access_log: Path | None) -> None:
    """Serve a published DIRECTORY over HTTP (GET, HEAD, byte ranges).

    \b
    Example:
      lazyfs serve ./my-model --port 8000
    """
    from lazyfs.server import run_server

    try:
        run_server(directory, host, port, access_log)
    except LazyfsError as exc:
        fail(exc)
