"""``sporeflow schema``: the JSON Schema of organism files, for editors; with ``--agent
NAME``, what an agent accepts, as a schema file.

A typed agent's schema is made from its payload types (JSON Schema, or an XSD with
``--xsd``); a declared ``schema:`` file is printed as written.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sporeflow.config import (
    ORGANISM_SCHEMA,
    OrganismSpec,
    SporeflowError,
    did_you_mean,
    load_organism,
)
from sporeflow.pipeline.cli.util import DEFAULT_ORGANISM, fail, guarded

__all__ = ["agent_schema_text", "schema"]


@click.command()
@click.argument("organism", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--agent", metavar="NAME", help="Print what agent NAME of ORGANISM accepts: "
              "the schema made from its payload types, or its schema file.")
@click.option("--xsd", is_flag=True, help="With --agent: an XML Schema of its payload types.")
@click.pass_context
def schema(ctx: click.Context, organism: Path | None, agent: str | None, xsd: bool) -> None:
    """Print the JSON Schema of organism files (for editors); with --agent, the schema
    of what an agent of ORGANISM (default ./organism.yaml) accepts."""
    if agent is None:
        if organism is not None or xsd:
            fail(ctx, SporeflowError("ORGANISM and --xsd go with --agent NAME; without it "
                                     "`sporeflow schema` prints the organism files' schema"))
        click.echo(json.dumps(ORGANISM_SCHEMA, indent=2))
        return
    spec = guarded(ctx, lambda: load_organism(organism or DEFAULT_ORGANISM))
    click.echo(guarded(ctx, lambda: agent_schema_text(spec, agent, xsd=xsd)), nl=False)


def agent_schema_text(spec: OrganismSpec, agent: str, *, xsd: bool) -> str:
    """The schema of what ``agent`` accepts; raise :class:`SporeflowError` saying why none."""
    found = spec.agents.get(agent)
    if found is None:
        raise SporeflowError(f"--agent {agent!r}: no such agent in {spec.name!r}"
                             f"{did_you_mean(agent, list(spec.agents))}")
    if found.payloads is not None:
        if xsd:
            return found.payloads.xsd()
        return json.dumps(found.payloads.json_schema(), indent=2) + "\n"
    if found.schema is None:
        raise SporeflowError(f"agent {agent!r} declares no schema and takes no typed payload: "
                             f"it accepts any JSON object")
    if xsd != found.schema.wants_xml:
        raise SporeflowError(
            f"the schema of agent {agent!r} is {found.schema.path.name}, written by hand: "
            f"sporeflow makes {'an XSD' if xsd else 'a JSON Schema'} only from payload types; "
            f"{'drop' if xsd else 'add'} --xsd")
    return found.schema.path.read_text(encoding="utf-8")
