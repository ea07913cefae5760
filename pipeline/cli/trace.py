"""``sporeflow trace [ORGANISM] SPORE_ID``: the tree of spores a root produced.

    sporeflow trace 1f2e3d-7                     # ./organism.yaml's, as every command
    sporeflow trace organism.yaml 1f2e3d-7
    sporeflow trace organism.yaml 1f2e3d-7 --journal data/journal.db
    sporeflow trace organism.yaml 1f2e3d-7 --json

Each line is one spore, under the spore whose handling made it (its ``causation_id``):
its type, sender and addressee, when it was made after the root, and each delivery's
outcome: handled (by whom, in how long), failed or dead letter (with the reason),
answered its request (a response), or ended without a handler (a spore returned
outside). ``--journal`` reads a journal file; without it a running organism answers from
its recent window (the last ``observe.lineage.TRACE_WINDOW`` settlements; over a broker,
those of every process of the organism that holds the spore, together: a process that
settled only what the spore's handling made elsewhere does not know it as the root, and
adds nothing), and the organism's own journal, if it has one, is read when it is not
running or no longer holds the spore.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sporeflow.config import SporeflowError, load_organism
from sporeflow.pipeline.cli.util import DEFAULT_ORGANISM, fail, guarded, masked, run_to_end
from sporeflow.pipeline.core.lineage import TraceNode, render_tree, tree_steps
from sporeflow.pipeline.service.address import NotRunning
from sporeflow.pipeline.service.client import running_sockets
from sporeflow.pipeline.service.lineage import trace_from_endpoint, trace_from_journal

__all__ = ["trace"]


@click.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[ORGANISM] SPORE_ID")
@click.option("--journal", "journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Read this journal file (default: the running organism, then the "
                   "organism's journal).")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON lines.")
@click.pass_context
def trace(ctx: click.Context, arguments: tuple[str, ...], journal: Path | None,
          as_json: bool) -> None:
    """Print the tree of spores SPORE_ID produced in ORGANISM (default ./organism.yaml):
    agents, outcomes, timings."""
    if len(arguments) > 2:
        raise click.UsageError(f"got {len(arguments)} arguments {list(arguments)}; give "
                               f"[ORGANISM] SPORE_ID: an organism file and one spore id")
    organism = Path(arguments[0]) if len(arguments) == 2 else DEFAULT_ORGANISM
    spore_id = arguments[-1]
    _check_order(organism, spore_id, given=len(arguments) == 2)
    tree, where = _find(ctx, organism, spore_id, journal)
    if tree is None:
        click.echo(masked(ctx, f"NotFound: spore {spore_id!r} is not in {where}; a running "
                               f"organism keeps its last settlements, a journal keeps more"),
                   err=True)
        ctx.exit(1)
    if as_json:
        for step in tree_steps(tree):
            click.echo(masked(ctx, json.dumps(step.to_json(), ensure_ascii=False)))
        return
    for line in render_tree(tree):
        click.echo(masked(ctx, line))


def _check_order(organism: Path, spore_id: str, *, given: bool) -> None:
    """Found by a new user: `trace ID organism.yaml` said the spore id, read as the
    file, could not be read; `trace organism.yaml` said ./organism.yaml could not be.
    What names an organism file is no spore id: say which argument is which."""
    if spore_id.endswith((".yaml", ".yml")) or Path(spore_id).is_file():
        fix = (f"give the organism first: `sporeflow trace {spore_id} {organism}`" if given
               else f"the SPORE_ID is missing: `sporeflow trace {spore_id} SPORE_ID`")
        raise click.UsageError(f"{spore_id!r} names an organism file, not a spore id; {fix}")


def _find(ctx: click.Context, organism: Path, spore_id: str,
          journal: Path | None) -> tuple[TraceNode | None, str]:
    """The tree and where it was looked for: ``--journal``; else the running organism,
    then the organism's journal."""
    if journal is not None:
        return guarded(ctx, lambda: trace_from_journal(journal, spore_id)), str(journal)
    places = []
    sockets = running_sockets(organism)  # over a broker, each process's window
    if sockets:
        found = guarded(ctx, lambda: run_to_end(trace_from_endpoint(sockets, spore_id)))
        if found is not None:
            return found, "the running organism"
        places.append("the running organism's recent window")
    try:
        own = load_organism(organism).journal
    except SporeflowError as exc:
        if not sockets:
            fail(ctx, exc)
        own = None
    if own is not None:
        return (guarded(ctx, lambda: trace_from_journal(own, spore_id)),
                " nor ".join([*places, f"journal {own}"]))
    if not sockets:
        fail(ctx, NotRunning(f"no organism running for {organism}, and it keeps no journal to "
                             f"read; start it with `sporeflow run {organism}`, or pass "
                             f"--journal FILE"))
    return None, " nor ".join(places)
