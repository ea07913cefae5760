"""What every ``sporeflow`` subcommand shares: the organism argument and one-line errors.

Subcommands live in modules of their own (``cli_<name>.py``) and are added to the
group in ``cli.py``; they import these helpers rather than ``cli`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from sporeflow.config import ConfigError, Limits, SporeflowError, redact_text
from sporeflow.config.size_cap import FileTooLarge, read_at_most, read_bounded
from sporeflow.config.units import parse_written_seconds
from sporeflow.pipeline.core.deadletters import Masker

__all__ = ["DEFAULT_ORGANISM", "DURATION", "EXIT_OUT_OF_TIME", "ORGANISM_ARG", "fail",
           "forget_terminal", "guarded", "Unreadable", "knowledge_of", "mask_with", "masked",
           "organism_argument", "run_to_end"]

T = TypeVar("T")

DEFAULT_ORGANISM = Path("organism.yaml")
# A wait that ran out of time (`run --until-idle --max-duration`, `send --timeout` with the
# spore still pending): neither done nor failed; the code timeout(1) gives it.
EXIT_OUT_OF_TIME = 124
# Optional: `sporeflow run` with no argument runs ./organism.yaml.
def organism_argument(callback: Callable[..., Any] | None = None) -> Callable[[Any], Any]:
    """The ORGANISM argument (``callback``: a check of its own, as click calls one)."""
    return click.argument("organism", required=False, default=str(DEFAULT_ORGANISM),
                          type=click.Path(dir_okay=False, path_type=Path), callback=callback)


ORGANISM_ARG = organism_argument()


class Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, written as in organism.yaml: ``30``, ``1.5``, ``250ms``, ``5s``, ``2m``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_written_seconds(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


# What @FILE or standard input gives is read no further: a spore is far smaller
# (limits.max_spore_bytes), and /dev/zero never ends.
MAX_KNOWLEDGE_BYTES = 64 << 20


class Unreadable(ValueError):
    """KNOWLEDGE (``@FILE``, ``-``) that could not be read: no JSON to judge; the
    message ends with what to do."""


def knowledge_of(text: str) -> Any:
    """The JSON a KNOWLEDGE argument gives: itself, ``-`` standard input, ``@FILE`` that
    file (a command line holds some 128 KiB at most). Raises ValueError saying why not."""
    where = ""
    if text == "-" or text.startswith("@"):
        path = text[1:] if text != "-" else None
        where = f"{path}: " if path is not None else "standard input: "
        named = repr(path) if path is not None else "standard input"
        try:
            if path is not None:
                data = read_bounded(path, MAX_KNOWLEDGE_BYTES)
            else:
                data = read_at_most(sys.stdin.buffer, MAX_KNOWLEDGE_BYTES)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError, FileTooLarge) as exc:
            fix = ("send less: a spore is far smaller (limits.max_spore_bytes)"
                   if isinstance(exc, FileTooLarge) else "write it as UTF-8"
                   if isinstance(exc, UnicodeDecodeError) else "check the path after @")
            raise Unreadable(f"cannot read KNOWLEDGE from {named}: {exc}; {fix}") from None

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is no JSON number; send null or a string")

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError as exc:  # where it was read from first (found by a new user)
        raise ValueError(f"{where}{exc}") from None
    except RecursionError:  # json's own parser recurses per level
        raise ValueError(f"{where}nested too deep to read (past Python's recursion limit); "
                         f"a spore's knowledge nests at most limits.max_depth levels "
                         f"({Limits().max_depth} by default)") from None


def mask_with(ctx: click.Context, masker: Masker) -> None:
    """Mask what this command prints with ``masker`` (the loaded organism's secrets)."""
    ctx.ensure_object(dict)["masker"] = masker


def masked(ctx: click.Context, text: str) -> str:
    """``text`` with the organism's secrets hidden (before one is loaded: URL passwords)."""
    masker = (ctx.obj or {}).get("masker")
    return masker.mask(text) if masker is not None else redact_text(text)


def fail(ctx: click.Context, exc: BaseException) -> NoReturn:
    """Print ``TypeName: message`` and exit 1; under ``--debug`` the traceback instead.

    Both are masked: a handler's error, and what caused it, may quote a secret.
    """
    if ctx.obj and ctx.obj.get("debug"):
        click.echo(masked(ctx, "".join(traceback.format_exception(exc))).rstrip(), err=True)
        ctx.exit(1)
    name = "ConfigError" if isinstance(exc, ConfigError) else type(exc).__name__
    click.echo(masked(ctx, f"{name}: {exc}{_no_organism_here(ctx, exc)}"), err=True)
    ctx.exit(1)


def _no_organism_here(ctx: click.Context, exc: BaseException) -> str:
    """The way on when a command read the default ./organism.yaml and there is none: a
    new user's first command, in a folder they have not set up yet."""
    organism = ctx.params.get("organism")
    if isinstance(exc, ConfigError) and organism == DEFAULT_ORGANISM and not organism.exists():
        return "; create one with `sporeflow init`, or name the organism file"
    return ""


def guarded(ctx: click.Context, work: Callable[[], T]) -> T:
    """Run ``work``; a :class:`SporeflowError` becomes a one-line error."""
    try:
        return work()
    except SporeflowError as exc:
        fail(ctx, exc)


def run_to_end(main: Coroutine[Any, Any, T], *, grace: float = 0.1) -> T:
    """``asyncio.run(main)``, except that tasks left running at the end (a handler the
    stop abandoned because it ignores cancellation, reported then) get ``grace`` seconds
    to end once cancelled, not forever: the command exits when its work is done."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=grace))
            stuck = {task for task in left if not task.done()}
            if stuck:  # reported by the stop already: not again as "destroyed pending"
                loop.set_exception_handler(lambda loop, context: None if context.get(
                    "task") in stuck else loop.default_exception_handler(context))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def forget_terminal() -> None:
    """Send what is still printed to /dev/null: the terminal it went to is gone."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    os.close(null)
