"""Agents outside sporeflow declared in organism.yaml (``agents: {pr: {external: praval}}``):
the loader's checks, their place in routing and on the broker. The traffic itself, with
real Praval agents on RabbitMQ, is in test_praval_interop.py."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.config import ConfigError, ExternalAgentSpec, organism_from_dict, organism_from_text
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.broker.backend import PRAVAL_BROADCAST_KEY, Topology
from sporeflow.pipeline.broker.external import ExternalAgents
from sporeflow.pipeline.core.wiring import routing_table


async def handler(spore: Spore, ctx: Any) -> None:
    return None


def spec(agents: dict[str, Any], **organism: Any) -> Any:
    return organism_from_dict({"organism": {"name": "o", **organism},
                               "channels": {"alerts": {}}, "agents": agents})


def problems(agents: dict[str, Any], **organism: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        spec(agents, **organism)
    return [(p.path, p.message) for p in caught.value.problems]


def test_an_external_agent_is_loaded_apart_from_the_agents_with_handlers() -> None:
    loaded = organism_from_text("""
agents:
  asker: {handler: operator:eq, peers: [pr]}
  pr: {external: praval, description: a Praval agent, subscribe: [main], channel: alerts}
channels: {alerts: {}}
""")
    assert list(loaded.agents) == ["asker"]
    assert loaded.external == {"pr": ExternalAgentSpec(
        name="pr", kind="praval", description="a Praval agent", subscribe=("main",),
        channel="alerts")}


def test_the_callers_dict_is_left_whole() -> None:
    agents = {"a": {"handler": handler}, "pr": {"external": "praval"}}
    spec(agents)
    assert agents == {"a": {"handler": handler}, "pr": {"external": "praval"}}


@pytest.mark.parametrize(("conf", "path", "words"), [
    ({"external": "autogen"}, "agents.pr.external", "the frameworks sporeflow speaks with "
                                                    "are ['praval']"),
    ({"external": "praval", "handler": "m:f"}, "agents.pr.handler",
     "'handler' does not apply to an external agent"),
    ({"external": "praval", "subscrbe": ["main"]}, "agents.pr.subscrbe",
     "(did you mean 'subscribe'?)"),
    ({"external": "praval", "channel": "alert"}, "agents.pr.channel",
     "unknown channel 'alert' (did you mean 'alerts'?); declare it under channels:"),
    ({"external": "praval", "subscribe": "main"}, "agents.pr.subscribe",
     "write a list of channel names"),
    ({"external": "praval", "subscribe": ["nope"]}, "agents.pr.subscribe.0",
     "unknown channel 'nope'"),
])
def test_a_wrong_external_agent_is_a_located_problem(conf: dict[str, Any], path: str,
                                                     words: str) -> None:
    [(where, message)] = problems({"a": {"handler": handler}, "pr": conf})
    assert where == path
    assert words in message


def test_accept_unsigned_from_names_external_agents_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_EXTERNAL_KEY", "k" * 32)
    signing = {"key_env": "SF_EXTERNAL_KEY", "accept_unsigned_from": ["a", "pr"]}
    [(where, message)] = problems({"a": {"handler": handler}, "pr": {"external": "praval"}},
                                  signing=signing)
    assert where == "organism.signing.accept_unsigned_from.0"
    assert "'a' is no external agent of this organism" in message
    loaded = spec({"a": {"handler": handler}, "pr": {"external": "praval"}},
                  signing={**signing, "accept_unsigned_from": ["pr"]})
    assert loaded.signing.unsigned_from == {"pr"}


def test_external_agents_are_addressable_and_hear_the_channels_they_subscribe() -> None:
    table = routing_table(spec({"a": {"handler": handler, "subscribe": ["alerts"]},
                                "pr": {"external": "praval", "subscribe": ["alerts"]}}))
    assert table.agents == {"a", "pr"}
    assert table.subscribers["alerts"] == ("a", "pr")


def test_no_queue_is_declared_for_an_external_agent_and_its_channel_binds_praval_broadcasts(
        ) -> None:
    topology = Topology.of(spec({
        "alerted": {"handler": handler, "subscribe": ["alerts"]},
        "other": {"handler": handler, "subscribe": ["main"]},
        "pr": {"external": "praval", "channel": "alerts"}}))
    assert set(topology.subscriptions) == {"alerted", "other"}  # one queue per agent of ours
    assert PRAVAL_BROADCAST_KEY in topology.bindings("alerted")
    assert PRAVAL_BROADCAST_KEY not in topology.bindings("other")


def test_a_praval_broadcast_lands_on_its_declared_channel_for_the_agents_that_hear_it() -> None:
    externals = ExternalAgents(spec({"pr": {"external": "praval", "channel": "alerts"}}))
    subscribers = {"alerts": ("alerted",), "main": ("other",)}
    praval = Spore(knowledge={}, spore_type=SporeType.BROADCAST, from_agent="pr")
    heard = externals.broadcast_for("alerted", praval, subscribers)
    assert heard is not None
    assert (heard.channel, heard.id) == ("alerts", praval.id)
    assert externals.broadcast_for("other", praval, subscribers) is None
    direct = Spore(knowledge={}, from_agent="pr", to_agent="other")
    assert externals.broadcast_for("other", direct, subscribers) is direct
    stranger = Spore(knowledge={}, spore_type=SporeType.BROADCAST, from_agent="someone")
    assert externals.broadcast_for("other", stranger, subscribers) is stranger


async def test_an_organism_with_external_agents_needs_a_broker() -> None:
    org = Organism(spec({"a": {"handler": handler}, "pr": {"external": "praval"}}))
    with pytest.raises(ConfigError, match=r"agents \['pr'\] are external: they are reached "
                                          r"through a broker; set organism.backend"):
        async with org.running():
            pass


def test_a_broker_user_may_publish_to_the_external_agents_its_agents_address() -> None:
    from sporeflow.pipeline.broker.permissions import permissions

    loaded = spec({"a": {"handler": handler}, "b": {"handler": handler, "peers": ["a"]},
                   "pr": {"external": "praval"}})
    assert "pr" in permissions(loaded, ["a"]).addresses  # a has no peers: everyone
    assert "pr" in permissions(loaded, []).addresses  # a client
    assert "pr" not in permissions(loaded, ["b"]).addresses


def test_a_reload_over_a_broker_refuses_to_change_external_agents() -> None:
    from sporeflow.pipeline.reload.diff import broker_bound, diff_specs

    before = spec({"a": {"handler": handler}, "pr": {"external": "praval"}})
    after = spec({"a": {"handler": handler},
                  "pr": {"external": "praval", "channel": "alerts"}})
    assert broker_bound(diff_specs(before, after)) == (
        "a reload cannot add, remove or change external agents")
    assert broker_bound(diff_specs(before, before)) == ""


def test_the_published_schema_takes_external_agents_as_the_loader_does() -> None:
    import jsonschema

    from sporeflow.config import ORGANISM_SCHEMA

    validator = jsonschema.Draft202012Validator(ORGANISM_SCHEMA)
    good = {"agents": {"a": {"handler": "m:f"},
                       "pr": {"external": "praval", "subscribe": ["main"], "channel": "main"}}}
    assert list(validator.iter_errors(good)) == []
    bad = {"agents": {"pr": {"external": "praval", "handler": "m:f"}}}
    assert [error.message for error in validator.iter_errors(bad)] == [
        "Additional properties are not allowed ('handler' was unexpected)"]
