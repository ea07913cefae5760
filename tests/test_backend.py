"""Choosing a backend, names on the broker, and the missing-extra message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import BrokerError, ConfigError, Organism, Spore, SporeType
from sporeflow.pipeline.broker.backend import Topology, resolve_backend_url
from sporeflow.pipeline.broker.factory import open_backend
from sporeflow.pipeline.cli.main import cli

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


def test_env_references_are_expanded_and_a_missing_one_names_the_variable() -> None:
    env = {"BROKER": "amqp://app:pw@h:5672/", "PW": "s3cret"}
    assert resolve_backend_url("${BROKER}", env) == "amqp://app:pw@h:5672/"
    assert resolve_backend_url("amqp://app:${PW}@h/", env) == "amqp://app:s3cret@h/"
    with pytest.raises(BrokerError, match=r"names the environment variable NOPE, .*"
                                          r"export NOPE=<the broker's URL"):
        resolve_backend_url("${NOPE}", env)


def test_an_unset_password_variable_is_named_where_it_was_written_and_for_what() -> None:
    # Found by a new user: with --backend 'amqp://guest:${RABBIT_PW}@...' and RABBIT_PW
    # unset, the message said "names ***" (the reference sits where a password is
    # masked), blamed organism.backend, and asked for a whole URL in RABBIT_PW.
    result = CliRunner(env={"RABBIT_PW": None}).invoke(
        cli, ["run", str(SMALL), "--backend", "amqp://guest:${RABBIT_PW}@127.0.0.1:5672/"])
    assert result.exit_code == 1
    assert ("--backend 'amqp://guest:***@127.0.0.1:5672/' names the environment variable "
            "RABBIT_PW, which is not set; export RABBIT_PW=<the password of the broker's "
            "user 'guest'>") in result.output
    with pytest.raises(BrokerError, match=r"export V=<the part of the broker's URL it "):
        resolve_backend_url("amqp://${V}:5672/", {})


def test_memory_is_the_embedded_path_and_other_schemes_are_refused() -> None:
    assert open_backend("memory") is None
    with pytest.raises(BrokerError, match=r"'redis://u:\*\*\*@h/' is not supported"):
        open_backend("redis://u:secret@h/")


def test_without_aio_pika_the_error_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sporeflow.pipeline.broker.amqp_backend", None)
    with pytest.raises(BrokerError, match=r"pip install 'sporeflow\[amqp\]'") as caught:
        open_backend("amqp://guest:hunter2@127.0.0.1/")
    assert "hunter2" not in str(caught.value)


def test_routing_keys_and_bindings_follow_the_templates() -> None:
    topology = Topology(exchange="x", subscriptions={"a": ("news",), "b": ()},
                        broadcast_key="broadcast.{channel}.{type}")
    assert topology.routing_key(Spore(knowledge={}, to_agent="b")) == "agent.b.knowledge"
    assert topology.routing_key(Spore(knowledge={}, channel="news",
                                      spore_type=SporeType.BROADCAST)) == (
        "broadcast.news.broadcast")
    assert topology.bindings("a") == ("agent.a.*", "broadcast.news.*")
    assert (topology.queue("a"), topology.dead_letter_queue) == ("x.a", "x.dead-letters")


def test_the_exchange_defaults_to_the_organism_name_and_is_configurable() -> None:
    def spec(organism: dict[str, object]) -> Topology:
        return Topology.of(organism_from_dict({"organism": organism,
                                               "agents": {"a": {"handler": print}}}))

    assert spec({"name": "shop"}).exchange == "sporeflow.shop"
    assert spec({"name": "shop", "broker": {"exchange": "praval.spores"}}).exchange == (
        "praval.spores")


async def test_hosting_some_agents_needs_a_broker_and_known_names() -> None:
    spec = organism_from_dict({"agents": {"a": {"handler": print}}})
    with pytest.raises(ConfigError, match="needs a broker"):
        await Organism(spec, hosted=["a"]).start()
    with pytest.raises(ConfigError, match=r"names \['zed'\].*agents are \['a'\]"):
        await Organism(spec, backend="amqp://guest:guest@127.0.0.1:5672/",
                       hosted=["zed"]).start()


def test_run_with_agents_but_no_broker_fails_in_one_line() -> None:
    small = Path(__file__).parent / "organisms" / "small" / "organism.yaml"
    result = CliRunner().invoke(cli, ["run", str(small), "--agents", "intake", "--quiet"])
    assert result.exit_code == 1
    assert "needs a broker" in result.output
    assert "Traceback" not in result.output
