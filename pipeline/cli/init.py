"""``sporeflow init [DIR]``: a working organism to start from.

It writes an organism file, its handler module, a test written with
``sporeflow.testing`` and a README, all of which ``sporeflow check``, ``sporeflow run
--until-idle`` and ``pytest`` accept as they are. It never overwrites: if any of them
exists, nothing is written.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import click

from sporeflow.config import SporeflowError
from sporeflow.pipeline.cli.util import guarded

__all__ = ["init", "scaffold", "scaffold_files"]

ORGANISM = """\
# The organism: which agents exist, what they listen to, where their output goes.
# `sporeflow check` validates it; `sporeflow schema` prints its JSON Schema for editors.
organism: {{name: {name}}}
channels:
  greetings: {{capacity: 100}}
agents:
  greeter:
    handler: {module}:greet   # module:function, beside this file
    boot: {{name: world}}            # knowledge of a spore sent to it at start
    emit: {{channel: greetings}}     # what greet returns is broadcast here
  printer:
    handler: {module}:show
    subscribe: [greetings]
    timeout: 5s
    retry: {{attempts: 3, backoff: 100ms}}
"""

AGENTS = '''\
"""The handlers of {name}: plain functions of (spore, ctx); organism.yaml wires them."""

from sporeflow import Context, Spore


async def greet(spore: Spore, ctx: Context) -> dict[str, str]:
    """Greet whoever is named; what it returns is broadcast on the greetings channel."""
    return {{"text": f"hello, {{spore.knowledge['name']}}"}}


async def show(spore: Spore, ctx: Context) -> None:
    """Print each greeting; returning nothing sends nothing on."""
    print(spore.knowledge["text"], flush=True)
'''

TEST = '''\
"""The organism under test: in memory, on a virtual clock, its outputs captured."""

import asyncio
from pathlib import Path

from sporeflow.testing import TestOrganism

ORGANISM = Path(__file__).with_name("organism.yaml")


def test_the_greeter_greets_and_the_printer_gets_it() -> None:
    async def scenario() -> None:
        async with TestOrganism(ORGANISM) as t:
            await t.send("greeter", {{"name": "Ada"}})
            await t.idle()
            assert t.knowledge("greeter") == [{{"text": "hello, Ada"}}]
            assert [s.knowledge for s in t.handled("printer")] == [{{"text": "hello, Ada"}}]
            assert t.dead_letters == []

    asyncio.run(scenario())
'''

README = """\
# {name}

A [sporeflow](https://pypi.org/project/sporeflow/) organism: agents are the handlers in
`{module}.py`, wired in `organism.yaml`.

    sporeflow check              # every problem in organism.yaml, with its line
    sporeflow run --until-idle   # run it until nothing is left to do
    sporeflow run --reload       # run it, reloading as you edit
    pytest                       # {test}, with sporeflow.testing
"""



def scaffold_files(name: str) -> dict[str, str]:
    """The files written for organism ``name``, by file name. The handler module and
    the test are named after the organism: two organisms made side by side import and
    test in one process (one ``pytest`` for both) without their modules colliding."""
    ident = re.sub(r"\W+", "_", name).strip("_").lower() or "organism"
    if ident[0].isdigit():
        ident = f"organism_{ident}"
    module, test = f"{ident}_agents", f"test_{ident}.py"
    values = {"name": name, "module": module, "test": test}
    return {file: template.format(**values) for file, template in
            (("organism.yaml", ORGANISM), (f"{module}.py", AGENTS), (test, TEST),
             ("README.md", README))}


def _free_folder(taken: Path) -> str:
    """A folder beside ``taken`` that does not exist yet, to suggest: its name numbered."""
    stem = taken.resolve().name or "my-organism"
    number = 2
    while (taken.resolve().parent / f"{stem}-{number}").exists():
        number += 1
    return f"{stem}-{number}"


def scaffold(folder: Path) -> list[Path]:
    """Write the starting organism into ``folder`` (made if missing); return the files.

    Raises :class:`SporeflowError`, writing nothing, if any of them exists already.
    """
    files = scaffold_files(_organism_name(folder))
    targets = [folder / name for name in files]
    taken = [str(target) for target in targets if target.exists()]
    if taken:
        raise SporeflowError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}"
                             f"; sporeflow init never overwrites: choose another folder, "
                             f"e.g. sporeflow init {_free_folder(folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    for target, text in zip(targets, files.values(), strict=True):
        try:
            with target.open("x", encoding="utf-8") as out:  # never over one made since
                out.write(text)
        except FileExistsError:
            raise SporeflowError(f"{target} appeared while sporeflow init wrote the others; "
                                 f"it was left as it is") from None
    return targets


def _organism_name(folder: Path) -> str:
    """A valid organism name from the folder's: letters, digits, '_', '-'."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", folder.resolve().name).strip("-")
    if not re.match(r"[A-Za-z_]", name):
        name = f"organism-{name}"
    return name[:64].rstrip("-")


@click.command()
@click.argument("folder", metavar="[DIR]", default=".",
                type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def init(ctx: click.Context, folder: Path) -> None:
    """Write a working organism into DIR (default: here): organism.yaml, its handlers, a
    test and a README. Existing files are never overwritten."""
    written = guarded(ctx, lambda: scaffold(folder))
    click.echo(f"created {', '.join(str(path) for path in written)}")
    go = "" if folder == Path(".") else f"cd {shlex.quote(str(folder))} && "
    click.echo(f"next: {go}sporeflow check && sporeflow run --until-idle && pytest")
    if importlib.util.find_spec("pytest") is None:  # `pip install sporeflow` brings none
        click.echo("(the test runs with pytest, not installed here: pip install pytest)")
