"""Secrets stay secret everywhere (issue 17, point 4).

Three secrets are planted: a password in the organism's config (its backend URL), a
signing key in an environment variable, and a database password that only a
handler's exception knows (a DSN in its message). A failing handler then quotes them,
and every output a user or a broker user can see is searched for their bytes:
dead letters, ``stats()``, logs, events (``tail``), the journal file, the command
line (``send --request``, ``tail``, ``dlq list/show``, ``--debug``), ``repr(spec)``,
and, on the in-process broker and the real RabbitMQ, the dead-letter queue's headers
and the failure response a requester in another process gets.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import textwrap
import traceback
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sporeflow.config import HandlerError, organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.backend import Backend, Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.cli.tail import Tail, TailFilter
from sporeflow.pipeline.observe.logs import configure_logging

from .conformance.harness import AMQP_URL, broker_dead_letters, broker_reachable, wait_for

PASSWORD = "cfgpw-5e9b1c7a"  # the backend URL's password, in the organism's config
KEY = "envkey-" + "3f8d2a6c" * 4  # the signing key, in an environment variable
DB_PASSWORD = "dsnpw-a41c0e92"  # known only to the handler that quotes it
KEY_ENV = "SPOREFLOW_LEAK_TEST_KEY"
BACKEND = f"amqp://guest:{PASSWORD}@127.0.0.1:5672/"
SECRETS = (PASSWORD, KEY, DB_PASSWORD)
# What the failing handlers' error reads once masked: still says what went wrong.
MASKED = "cannot reach postgresql://app:***@db/x with key ***"


def leaks(outputs: Mapping[str, str | bytes], secrets: Iterable[str] = SECRETS
          ) -> dict[str, list[str]]:
    """Each output (by name) that holds a secret's bytes, with the secrets it holds."""
    found = {}
    for where, text in outputs.items():
        data = text.encode() if isinstance(text, str) else text
        shown = [secret for secret in secrets if secret.encode() in data]
        if shown:
            found[where] = shown
    return found


def cause(key: str) -> RuntimeError:
    return RuntimeError(f"cannot reach postgresql://app:{DB_PASSWORD}@db/x with key {key}; "
                        f"the broker password {PASSWORD} did not work either")


async def leak(spore: Spore, ctx: Any) -> None:
    """A handler quoting all three secrets in its exception (the key read as it runs)."""
    raise cause(os.environ[KEY_ENV])


async def nothing(spore: Spore, ctx: Any) -> None:
    return None


def spec_data(name: str = "leaky", **organism: Any) -> dict[str, Any]:
    return {"organism": {"name": name, "backend": BACKEND, "signing_key_env": KEY_ENV,
                         **organism},
            "agents": {"asker": {"handler": nothing}, "leaky": {"handler": leak}}}


def journal_bytes(folder: Path) -> bytes:
    """Every file of the journal: the database, SQLite's WAL, the in-flight marks."""
    return b"".join(path.read_bytes() for path in sorted(folder.glob("journal.db*")))


# -- the spec ---------------------------------------------------------------------------------


def test_the_spec_shows_its_backend_only_with_the_password_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    spec = organism_from_dict(spec_data())
    organism = Organism(spec)
    assert spec.backend == BACKEND  # the runtime still reads the URL whole, to connect
    module = f"quiet_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text("def nothing(spore, ctx):\n    return None\n")
    path = tmp_path / "organism.yaml"
    path.write_text(textwrap.dedent(f"""\
        organism: {{name: leaky, backend: "{BACKEND}", signing_key_env: {KEY_ENV}}}
        agents: {{a: {{handler: "{module}:nothing"}}}}
        """))
    runner = CliRunner()
    outputs = {"repr(spec)": repr(organism.spec), "str(spec)": str(spec),
               "repr(spec.broker)": repr(spec.broker),
               **{f"sporeflow {command}": runner.invoke(cli, [command, str(path)]).output
                  for command in ("check", "graph")}}
    assert leaks(outputs) == {}
    assert "backend='amqp://guest:***@127.0.0.1:5672/'" in repr(organism.spec)


# -- one embedded run, through the Python API --------------------------------------------------


async def test_an_embedded_run_keeps_every_secret_out_of_what_it_records_and_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG, logger="sporeflow")
    # configure_logging (run by other tests) stops sporeflow's records at its own handler.
    monkeypatch.setattr(logging.getLogger("sporeflow"), "propagate", True)
    # The config's backend holds the password; "memory" runs the organism embedded.
    organism = Organism(organism_from_dict(spec_data()), backend="memory",
                        journal=tmp_path / "journal.db")
    events: list[str] = []
    async with Tail(organism.events, TailFilter.of(), events.append):
        async with organism.running():
            await organism.send("leaky", {"n": 1})
            with pytest.raises(HandlerError) as failed:
                await organism.request("leaky", {"n": 2}, timeout=10)
            await organism.idle()
            stats = json.dumps(organism.stats(), default=str)
    letters = list(organism.dead_letters)
    assert len(letters) == 2
    outputs = {
        "dead letters": json.dumps([letter.to_dict() for letter in letters], default=str),
        "stats()": stats,
        "logs": "\n".join([caplog.text, *(record.getMessage() for record in caplog.records)]),
        "events (tail)": "\n".join(events),
        "the request's HandlerError": str(failed.value),
        "the journal file": journal_bytes(tmp_path),
    }
    assert any("failed on spore" in record.getMessage() for record in caplog.records)
    assert leaks(outputs) == {}
    assert all(MASKED in letter.error and MASKED in (letter.traceback or "")
               for letter in letters)
    assert MASKED in str(failed.value)


async def test_a_failing_handlers_span_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sporeflow.pipeline.observe.tracing import SporeTracer

    monkeypatch.setenv(KEY_ENV, KEY)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # our own: the global one is set once per process
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    organism = Organism(organism_from_dict(spec_data()), backend="memory",
                        tracing=SporeTracer(provider))
    try:
        async with organism.running():
            await organism.send("leaky", {"n": 1})
            await organism.idle()
        [span] = exporter.get_finished_spans()
    finally:
        provider.shutdown()
    exported = span.to_json()  # what an exporter sends: attributes, events, status
    assert leaks({"the span": exported}) == {}
    assert MASKED in (span.status.description or "")
    assert [event.name for event in span.events] == ["exception"]
    assert MASKED in str(span.events[0].attributes)


# -- the command line ---------------------------------------------------------------------------

HANDLERS = f"""\
import os

def fail(spore, ctx):
    key = os.environ["{KEY_ENV}"]
    raise RuntimeError(f"cannot reach postgresql://app:{DB_PASSWORD}@db/x with key {{key}}")
"""


def cli_organism(tmp_path: Path) -> Path:
    """An organism whose agent fails on its boot spore and on every request, quoting the
    key and a DSN. (Its backend is memory: the command line runs it in this process.)"""
    module = f"leak_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(HANDLERS)
    path = tmp_path / "organism.yaml"
    path.write_text(textwrap.dedent(f"""\
        organism: {{name: leaky, signing_key_env: {KEY_ENV}, journal: journal.db}}
        agents:
          leaky: {{handler: "{module}:fail", boot: {{n: 0}}}}
        """))
    return path


def shown(result: Result) -> str:
    """What the command printed, and the traceback Python would print of an exception it
    let out (``--debug``)."""
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
    return text


def test_the_command_line_never_prints_a_secret(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    path = str(cli_organism(tmp_path))
    runner = CliRunner()
    try:
        results = {
            # The spore fails: send prints its dead letter's reason (the endpoint's routes
            # are in tests/test_control_endpoint.py).
            "send": runner.invoke(cli, ["send", path, "--start", "--to", "leaky", '{"n": 0}']),
            "send --request": runner.invoke(cli, ["send", path, "--start", "--to", "leaky",
                                                  "--request", '{"n": 1}']),
            "--debug send --request": runner.invoke(cli, ["--debug", "send", path, "--start",
                                                          "--to", "leaky", "--request",
                                                          '{"n": 2}']),
            "run": runner.invoke(cli, ["run", path, "--until-idle", "--log-level", "DEBUG"]),
        }
        results |= {f"dlq {' '.join(args)}": runner.invoke(cli, ["dlq", *args, path])
                    for args in (("list",), ("list", "--json"), ("show",))}
    finally:
        configure_logging("text", "WARNING")
    assert results["send"].exit_code == 1, results["send"].output
    assert results["send --request"].exit_code == 1
    assert results["--debug send --request"].exit_code == 1
    outputs = {name: shown(result) for name, result in results.items()}
    outputs["the journal file"] = journal_bytes(tmp_path)
    assert leaks(outputs, (KEY, DB_PASSWORD)) == {}
    assert (f"dead letter (agent 'leaky'): handler failed: RuntimeError: {MASKED}"
            in outputs["send --request"])
    assert "Traceback" in outputs["--debug send --request"]
    assert outputs["dlq show"].count(MASKED) >= 6  # 3 letters: error and traceback each


def test_dlq_masks_an_unmasked_row_of_an_older_journal(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    path = str(cli_organism(tmp_path))
    runner = CliRunner()
    try:
        assert runner.invoke(cli, ["run", path, "--until-idle"]).exit_code == 0
    finally:
        configure_logging("text", "WARNING")
    raw = str(cause(KEY))
    with sqlite3.connect(tmp_path / "journal.db") as db:  # as an older sporeflow wrote it
        assert db.execute("UPDATE dead_letters SET error = ?, traceback = ?",
                          (f"RuntimeError: {raw}", f"Traceback ...\nRuntimeError: {raw}\n")
                          ).rowcount == 1
    assert KEY.encode() in journal_bytes(tmp_path)
    outputs = {" ".join(args): runner.invoke(cli, ["dlq", *args, path]).output
               for args in (("list",), ("list", "--json"), ("show",),
                            ("show", "--journal", str(tmp_path / "journal.db")))}
    assert leaks(outputs, (KEY, DB_PASSWORD)) == {}
    assert MASKED in outputs["show"]


# -- over a broker: dead-letter headers and failure responses ----------------------------------


@asynccontextmanager
async def two_processes(kind: str) -> AsyncIterator[tuple[Organism, Organism, Any]]:
    """The same organism as two "processes" on one broker: ``front`` hosts ``asker``,
    ``back`` hosts ``leaky``. Yields them and the memory broker (None on RabbitMQ)."""
    spec = organism_from_dict(spec_data(f"leak-{uuid.uuid4().hex[:12]}"))
    broker = MemoryBroker() if kind == "memory-broker" else None

    def backend() -> Backend:
        if broker is not None:
            return MemoryBackend(broker)
        from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
        return AmqpBackend(AMQP_URL)

    front = Organism(spec, backend=backend(), hosted=["asker"])
    back_backend = backend()
    back = Organism(spec, backend=back_backend, hosted=["leaky"])
    try:
        async with back.running(drain_timeout=10), front.running(drain_timeout=10):
            yield front, back, broker
    finally:
        await back_backend.destroy(Topology.of(spec))


@pytest.mark.parametrize("kind", ["memory-broker", pytest.param("amqp", marks=pytest.mark.amqp)])
async def test_broker_headers_and_failure_responses_hold_no_secret(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "amqp" and (why := broker_reachable()) is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    monkeypatch.setenv(KEY_ENV, KEY)
    async with two_processes(kind) as (front, back, broker):
        # The failure response crosses the broker: front's request raises from it.
        with pytest.raises(HandlerError) as failed:
            await front.request("leaky", {"n": 1}, timeout=10)
        await wait_for(lambda: back.stats()["broker"]["dead_lettered"] >= 1)
        if broker is not None:
            dead = [json.dumps({"error": letter.error, "reason": letter.reason})
                    for letter in broker.dead_letters]
        else:
            dead = [json.dumps(headers, default=str) for headers, _ in
                    await broker_dead_letters(Topology.of(back.spec))]
    assert len(dead) == 1
    outputs = {"the failure response": str(failed.value),
               "the dead-letter queue": dead[0],
               "the responder's dead letters": json.dumps(
                   [letter.to_dict() for letter in back.dead_letters], default=str)}
    assert leaks(outputs) == {}
    assert MASKED in dead[0]
    assert MASKED in str(failed.value)
