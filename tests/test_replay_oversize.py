"""A dead letter whose spore is over ``limits.max_spore_bytes`` is refused at ``dlq replay``
from a journal or a broker, as the running organism refuses it, instead of being put
back to become the same dead letter again."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.journal.offline import JournalFile

from .conformance.harness import AMQP_URL, broker_reachable

HANDLERS = '''
def big(spore, ctx):
    return {"x": "y" * 3000}


def ok(spore, ctx):
    return None
'''


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def organism_file(folder: Path, head: str, max_bytes: str = "2KiB") -> Path:
    module = f"oversize_{uuid.uuid4().hex[:10]}"  # one module per name in a process
    (folder / f"{module}.py").write_text(HANDLERS)
    path = folder / "organism.yaml"
    path.write_text(f"organism: {{{head}}}\n"
                    f"limits: {{max_spore_bytes: {max_bytes}}}\n"
                    f"agents:\n"
                    f"  big: {{handler: {module}:big, emit: {{to: ok}}}}\n"
                    f"  ok: {{handler: {module}:ok}}\n")
    return path


def assert_refused_for_its_size(code: int, err: str) -> None:
    assert code == 1, err
    [refused] = [line for line in err.splitlines() if line.startswith("not replayed: ")]
    assert "LimitExceeded: spore r-" in refused
    assert "over limits.max_spore_bytes=2048" in refused
    assert "once that is fixed, `dlq replay --id r-" in refused


async def test_a_journal_letter_over_the_size_limit_is_refused_at_replay(
        tmp_path: Path) -> None:
    # Found by a tester: `dlq replay` moved it back to the pending spores, and the next
    # run made it the same `limit exceeded` letter again; the running organism refuses it.
    path = organism_file(tmp_path, f"name: ovj-{uuid.uuid4().hex[:8]}, journal: j.db")
    org = Organism.from_file(path)
    async with org.running(drain_timeout=5):
        await org.send("big", {})
        await org.idle()
    assert [letter.reason for letter in org.dead_letters] == ["limit exceeded"]
    code, _, err = invoke("dlq", "replay", str(path), "--all")
    assert_refused_for_its_size(code, err)
    with JournalFile(tmp_path / "j.db") as journal:
        assert [s.letter.reason for s in journal.dead_letters()] == ["limit exceeded"]
        assert list(journal.pending()) == []
    # Once the limit is raised, it is replayed.
    path = organism_file(tmp_path, f"name: {org.spec.name}, journal: j.db", "8KiB")
    code, _, err = invoke("dlq", "replay", str(path), "--all")
    assert code == 0, err


@pytest.mark.amqp
async def test_a_broker_letter_over_the_size_limit_is_refused_at_replay(
        tmp_path: Path) -> None:
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    path = organism_file(tmp_path, f"name: ovb-{uuid.uuid4().hex[:8]}, backend: '{AMQP_URL}'")
    org = Organism.from_file(path)
    topology = Topology.of(org.spec)
    try:
        async with org.running(drain_timeout=5):
            await org.send("big", {})
            await org.idle()
        assert org.stats()["broker"]["letters_out"] == 1
        # In a thread: the command runs an event loop of its own.
        code, _, err = await asyncio.to_thread(invoke, "dlq", "replay", str(path), "--all")
        assert_refused_for_its_size(code, err)
        code, out, _ = await asyncio.to_thread(invoke, "dlq", "list", str(path))
        assert (code, len(out.splitlines()), "limit exceeded" in out) == (0, 1, True)
    finally:
        await AmqpBackend(AMQP_URL).destroy(topology)
