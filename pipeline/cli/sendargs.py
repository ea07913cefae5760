"""What ``sporeflow send``'s arguments mean: ``send [ORGANISM] [KNOWLEDGE]``, where one
argument alone is the knowledge unless it can only be the organism file."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sporeflow.config import ConfigError, Limits, SporeError
from sporeflow.config.positions import YamlSyntaxError, read_yaml
from sporeflow.config.size_cap import read_capped
from sporeflow.pipeline.cli.util import DEFAULT_ORGANISM
from sporeflow.steps import payload_from_xml
from sporeflow.steps.xmldocument import payload_metadata

__all__ = ["SendArguments", "knowledge_names_a_file", "not_an_organism", "send_arguments",
           "xml_knowledge"]


@dataclass(frozen=True)
class SendArguments:
    """The organism file and the knowledge; ``named``: why the first argument was read as
    the organism file (None: the default ./organism.yaml was)."""

    organism: Path
    knowledge: str | None
    named: str | None = None

    def refuse_no_organism(self, *, knowledge_missing: bool = False) -> None:
        """A usage error when the first argument, read as the organism file, is none
        (and so no run of it can answer): it was knowledge, meant as ``@FILE``."""
        if self.named is None:
            return
        why = not_an_organism(self.organism)
        if why is None:
            return
        argument = str(self.organism)
        head = "no KNOWLEDGE given: " if knowledge_missing else ""
        raise click.UsageError(
            f"{head}{argument!r} was read as the ORGANISM file, {self.named}, but it is no "
            f"organism: {why}; to send the JSON in a file as the KNOWLEDGE, write "
            f"@{argument} (after the organism file, if not ./organism.yaml)")


def send_arguments(first: str | None, second: str | None, *, xml: bool) -> SendArguments:
    """``send [ORGANISM] [KNOWLEDGE]``: the organism file and the knowledge. One argument
    alone is the knowledge, as the other commands default to ./organism.yaml, unless it
    can only be the organism: --xml gives the knowledge, or it is a file or reads as one."""
    if first is None:
        return SendArguments(DEFAULT_ORGANISM, None)
    if second is None and not xml and (first == "-" or first.startswith("@")):
        return SendArguments(DEFAULT_ORGANISM, first)  # the knowledge's file, or stdin
    if second is not None:
        _refuse_extra(first)
        return SendArguments(Path(first), second, "as the first of two arguments")
    if xml:
        _refuse_extra(first)
        return SendArguments(Path(first), None, "as --xml gives the knowledge")
    if first.endswith((".yaml", ".yml")):
        return SendArguments(Path(first), None, "as its name ends in .yaml")
    if is_file(first):
        return SendArguments(Path(first), None, "as it names a file")
    return SendArguments(DEFAULT_ORGANISM, first)


# A unit written apart from its number: `--timeout 5 sec`.
_UNIT = re.compile(r"(?i)(ms|s|m|h|millis|msecs?|secs?|seconds?|mins?|minutes?|hrs?|hours?)")


def _refuse_extra(first: str) -> None:
    """A usage error when ``first``, in the ORGANISM's place, cannot be an organism file:
    no file of that name is here, nor does the name end in .yaml or lead to a folder.
    It is an extra argument (`--timeout 5 sec`), not a file that is missing."""
    if first.endswith((".yaml", ".yml")) or "/" in first or os.sep in first or is_file(first):
        return
    hint = ("; a duration is one word, its unit attached: 5s, 250ms" if _UNIT.fullmatch(first)
            else "; give the organism file first, or none for ./organism.yaml")
    raise click.UsageError(f"Got unexpected extra argument ({first}): it is in the "
                           f"ORGANISM's place, but no file {first!r} is in {Path.cwd()}{hint}")


def is_file(text: str) -> bool:
    """Whether ``text`` names a file here."""
    try:
        return Path(text).is_file()
    except OSError:  # long JSON is too long a file name
        return False


def not_an_organism(file: Path) -> str | None:
    """Why ``file`` cannot be an organism file (its text has no ``agents:`` mapping), or
    None when it may be one. A file that cannot be read is left to the organism's loader,
    which names the problem at its line."""
    try:
        text = read_capped(file)
    except ConfigError:
        return None
    try:
        data = read_yaml(text, str(file)).data
    except YamlSyntaxError:
        return None if file.suffix in (".yaml", ".yml") else "it does not parse as YAML"
    if isinstance(data, dict) and isinstance(data.get("agents"), dict):
        return None
    if file.suffix == ".json" or _is_json(text):
        return "it holds JSON with no 'agents' mapping"
    return "it has no 'agents' mapping"


def knowledge_names_a_file(knowledge: str) -> str:
    """The way on when KNOWLEDGE is no JSON: ``@FILE`` if it names a file."""
    if is_file(knowledge):
        return f"; {knowledge!r} names a file: write @{knowledge} to send the JSON in it"
    return ""


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def xml_knowledge(text: str, as_request: bool, limits: Limits) -> tuple[Any, dict[str, Any]]:
    """``--xml``: one payload element, read by the mapping of replies; its tag is the kind."""
    if as_request:
        raise SporeError("--xml cannot be combined with --request: a request carries no "
                         "kind; send the knowledge as JSON")
    payload = payload_from_xml(text, limits=limits, strict=True)  # not repaired: a user wrote it
    if payload.attrs:
        raise SporeError(
            f"--xml: <{payload.tag}> has addressing attribute(s) {', '.join(payload.attrs)}; "
            f"on the command line --to addresses the spore: remove them, or write the data "
            f"as child elements")
    return payload.knowledge, {"metadata": payload_metadata(payload)}
