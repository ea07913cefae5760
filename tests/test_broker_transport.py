"""Unsigned spores over a broker: refused beyond this machine unless ``insecure: true``,
one warning per process on loopback."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import ConfigError, OrganismSpec, organism_from_dict
from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker import transport
from sporeflow.pipeline.broker.transport import check_transport
from sporeflow.pipeline.cli.main import cli

REMOTE = "amqp://app:hunter2@rabbit.example.com:5672/"
LOGGER = logging.getLogger("sporeflow.test.transport")


def echo(spore: Any, ctx: Any) -> None:
    return None


def spec(**organism: Any) -> OrganismSpec:
    return organism_from_dict({"organism": {"name": "shop", **organism},
                               "agents": {"a": {"handler": echo}}})


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: the loopback warning not given yet."""
    monkeypatch.setattr(transport, "_warned", threading.Event())


async def test_an_unsigned_organism_does_not_start_over_a_remote_broker() -> None:
    organism = Organism(spec(backend=REMOTE))
    with pytest.raises(ConfigError) as caught:
        await organism.start()  # refused before connecting: the host does not exist
    text = str(caught.value)
    assert "rabbit.example.com:5672" in text
    assert "any client of that broker could read its spores" in text
    assert "organism.signing" in text
    assert "organism.insecure: true" in text
    assert "hunter2" not in text
    assert organism.stats()["broker"] is None  # no bridge was left behind


def test_the_cli_says_so_without_a_traceback(tmp_path: Path) -> None:
    file = tmp_path / "organism.yaml"
    file.write_text(f"organism: {{name: shop, backend: '{REMOTE}'}}\n"
                    f"agents: {{a: {{handler: transport_handlers:a}}}}\n")
    (tmp_path / "transport_handlers.py").write_text("def a(spore, ctx):\n    return None\n")
    result = CliRunner().invoke(cli, ["run", str(file), "--quiet", "--until-idle"])
    assert result.exit_code == 1
    head, problem = result.stderr.strip().splitlines()
    assert head == "ConfigError: 1 problem in the organism"
    assert problem.startswith(f"{file}:1:1: organism.insecure: organism 'shop' would run "
                              f"unsigned over the broker at rabbit.example.com:5672")


@pytest.mark.usefixtures("fresh_warning")
@pytest.mark.parametrize("address", [REMOTE, "amqps://app:***@10.0.0.7:5671/"])
def test_insecure_true_accepts_a_remote_broker(address: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    check_transport(spec(backend=REMOTE, insecure=True), address, LOGGER)
    assert caplog.records == []
    with pytest.raises(ConfigError, match="10.0.0.7:5671|rabbit.example.com"):
        check_transport(spec(backend=REMOTE), address, LOGGER)


@pytest.mark.usefixtures("fresh_warning")
def test_signing_accepts_a_remote_broker(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SHOP_KEY", "k" * 32)
    signed = spec(backend=REMOTE, signing_key_env="SHOP_KEY")
    assert signed.signs
    check_transport(signed, REMOTE, LOGGER)
    assert caplog.records == []


@pytest.mark.usefixtures("fresh_warning")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.8.9.10"])
def test_a_loopback_broker_warns_once_per_process(host: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):  # three organisms in one process
        check_transport(spec(), f"amqp://guest:***@{host}:5672/", LOGGER)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "unsigned" in record.getMessage()
    assert host.strip("[]") in record.getMessage()


@pytest.mark.usefixtures("fresh_warning")
def test_no_broker_no_check(caplog: pytest.LogCaptureFixture) -> None:
    check_transport(spec(), "memory://7f00", LOGGER)
    assert caplog.records == []
    assert not transport._warned.is_set()
