"""What every ``sporeflow`` subcommand shares: the organism argument and one-line errors.

Subcommands live in modules of their own (``cli_<name>.py``) and are added to the
group in ``cli.py``; they import these helpers rather than ``cli`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from sporeflow.config import ConfigError, SporeflowError

__all__ = ["ORGANISM_ARG", "ORGANISM_FILE", "fail", "guarded"]

T = TypeVar("T")

# Optional: `sporeflow run` with no argument runs ./organism.yaml.
ORGANISM_ARG = click.argument(
    "organism", required=False, default="organism.yaml",
    type=click.Path(dir_okay=False, path_type=Path))
# Required: commands that inspect a named file.
ORGANISM_FILE = click.argument("organism", type=click.Path(dir_okay=False, path_type=Path))


def fail(ctx: click.Context, exc: BaseException) -> NoReturn:
    """Print ``TypeName: message`` and exit 1 (or re-raise under ``--debug``)."""
    if ctx.obj and ctx.obj.get("debug"):
        raise exc
    name = "ConfigError" if isinstance(exc, ConfigError) else type(exc).__name__
    click.echo(f"{name}: {exc}", err=True)
    ctx.exit(1)


def guarded(ctx: click.Context, work: Callable[[], T]) -> T:
    """Run ``work``; a :class:`SporeflowError` becomes a one-line error."""
    try:
        return work()
    except SporeflowError as exc:
        fail(ctx, exc)
