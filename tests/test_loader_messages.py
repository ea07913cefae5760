"""Shape errors say what is wrong with the value itself, at its own line."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import ConfigError, organism_from_text
from sporeflow.pipeline.cli.main import cli


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        organism_from_text(text, name="o.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ('"big"', "'big'"),
                                              ("2.5", "2.5"), ("-3", "-3")])
def test_a_bad_channel_capacity_is_named_at_its_line(value: str, shown: str) -> None:
    text = f"channels:\n  files:\n    description: x\n    capacity: {value}\nagents: {{}}\n"
    assert problems_of(text) == [
        f"o.yaml:4:15: channels.files.capacity: expected a positive integer, got {shown}"]


def test_an_unknown_key_of_a_channel_gets_its_hint() -> None:
    [problem] = problems_of("channels:\n  files: {capacty: 5}\nagents: {}\n")
    assert problem.startswith("o.yaml:2:11: channels.files.capacty: unknown key 'capacty' "
                              "(did you mean 'capacity'?)")


def test_a_channel_that_is_no_mapping_says_what_to_write() -> None:
    assert problems_of("channels:\n  files: 7\nagents: {}\n") == [
        "o.yaml:2:10: channels.files: 7 is not valid here; write a mapping of settings, like "
        "{capacity: 100}, or {}"]


def test_other_counts_say_the_same() -> None:
    text = "agents:\n  a: {handler: operator:eq, concurrency: 0}\n"
    assert problems_of(text) == [
        "o.yaml:2:42: agents.a.concurrency: expected a positive integer, got 0"]


@pytest.mark.parametrize("value", ["5", "[a]", '"x"', "{capacity: 0}"])
def test_a_channel_with_bad_settings_is_still_known_by_its_name(value: str) -> None:
    text = (f"channels:\n  news: {value}\nagents:\n"
            f"  x: {{handler: operator:eq, subscribe: [news], emit: {{channel: news}}}}\n"
            f"  g: {{gather: {{channel: news}}}}\n"
            f"sources:\n  tick: {{kind: timer, every: 1s, channel: news}}\n")
    problems = problems_of(text)
    assert len(problems) == 1, problems  # only the settings: no "unknown channel 'news'"
    assert problems[0].startswith("o.yaml:2:")


def test_a_bad_name_is_named_at_its_own_key() -> None:
    """Found by a new user: a bad agent or channel name was reported at the first key of
    its mapping (line 3 for the agent on line 6)."""
    found = problems_of("agents:\n  a: {handler: operator:eq}\n  b: {handler: operator:eq}\n"
                        "\n  'bad name!': {handler: operator:eq}\nchannels:\n  ok: {}\n"
                        "  'no good': {}\n")
    assert [problem.split(": ", 1)[0] for problem in found] == [
        "o.yaml:5:3", "o.yaml:8:3"]
    assert "'bad name!' is not a valid name; use letters" in found[0]


def test_an_organism_name_with_a_dot_is_refused_saying_what_it_would_collide_with() -> None:
    """Found by a fault injector: on a shared vhost, organism 'X.signed' declared
    'sporeflow.X.signed', organism X's signing mark (X then refused to start, advising to
    delete it), and organism 'shop' agent 'orders.a' met organism 'shop.orders' agent 'a'
    (`broker-delete shop` deleted the other's queue). With no '.' in an organism's name,
    `sporeflow.<name>.` belongs to that organism alone."""
    [found] = problems_of("organism: {name: shop.signed}\nagents:\n"
                          "  a: {handler: operator:eq}\n")
    assert found.startswith("o.yaml:1:18: organism.name: 'shop.signed' is not a valid "
                            "organism name; use letters, digits, '_', '-'"), found
    assert "organism 'X.signed' would take X's signing mark): write '-' for it" in found
    assert organism_from_text("organism: {name: shop-signed}\nagents:\n"
                              "  orders.a: {handler: operator:eq}\n").name == "shop-signed"


@pytest.mark.parametrize("agent", ["dead-letters", "dead", "signed", "reply", "reply.guest.x",
                                   "dead-letters.reader"])
def test_an_agent_named_as_the_organisms_own_broker_objects_is_refused(agent: str) -> None:
    """Found by a fault injector: an agent 'dead-letters' had the organism's dead-letter
    queue as its own: start failed, advising to delete that queue (its dead letters
    lost, and the next start failing alike)."""
    [found] = problems_of(f"agents:\n  {agent}: {{handler: operator:eq}}\n")
    assert found.startswith(f"o.yaml:2:3: agents.{agent}: {agent!r} is reserved: an agent's "
                            f"queue on a broker is `<exchange>.<agent>`"), found
    assert found.endswith("rename the agent (e.g. with a prefix: 'my-dead-letters')")
    assert organism_from_text("agents:\n  deadline: {handler: operator:eq}\n"
                              "  my-dead-letters: {handler: operator:eq}\n").agents


@pytest.mark.parametrize(("setting", "hint"), [
    ("retry: 3", "retry: 3 is an integer; expected an object; write {attempts: 3}"),
    ("emit: b", "emit: 'b' is a string; expected an object; write {to: b} (an agent) or "
                "{channel: b}"),
])
def test_a_bare_value_where_a_mapping_goes_says_which(setting: str, hint: str) -> None:
    [found] = problems_of(f"agents:\n  a: {{handler: operator:eq, {setting}}}\n"
                          f"  b: {{handler: operator:eq}}\n")
    assert found.endswith(hint), found


@pytest.mark.parametrize(("setting", "hint"), [
    # Found by a new user: each said only what was expected, not what to write.
    ('concurrency: "4"', "agents.a.concurrency: expected a positive integer, got '4'; it is "
                         "a string (quoted): write it unquoted, 4"),
    ("retry: {attempts: '3'}", "agents.a.retry.attempts: expected a positive integer, got "
                               "'3'; it is a string (quoted): write it unquoted, 3"),
    ("subscribe: news", "agents.a.subscribe: 'news' is a string; expected an array; write a "
                        "list, [news]"),
    ("peers: b", "agents.a.peers: 'b' is a string; expected an array; write a list, [b]"),
    ("peers: 7", "agents.a.peers: 7 is an integer; expected an array; write a list, [7]"),
])
def test_a_value_of_the_wrong_type_says_what_to_write(setting: str, hint: str) -> None:
    [found] = problems_of(f"channels: {{news: {{}}}}\n"
                          f"agents:\n  a: {{handler: operator:eq, {setting}}}\n"
                          f"  b: {{handler: operator:eq}}\n")
    assert found.endswith(hint), found


def test_a_quoted_number_is_named_wherever_the_schema_wants_a_number() -> None:
    # One rule, whatever the key: a count, a count or null, in any section.
    found = problems_of("organism: {broker: {max_length: '100'}}\n"
                        "channels: {news: {capacity: '7'}}\nagents: {}\n")
    assert [p.split(": ", 2)[1:] for p in found] == [
        ["organism.broker.max_length", "'100' is not valid here; write an integer of 1 or "
         "more; or null for none; it is a string (quoted): write it unquoted, 100"],
        ["channels.news.capacity", "expected a positive integer, got '7'; it is a string "
         "(quoted): write it unquoted, 7"]]
    [timeout] = problems_of("agents: {a: {handler: operator:eq, timeout: '5'}}\n")
    assert "(quoted)" not in timeout  # a duration may be a string: its hint says both forms


@pytest.mark.parametrize("name", ["cli", "system"])
def test_an_agent_named_as_the_outside_world_is_refused(name: str) -> None:
    # Found by a new user: with an agent named `cli`, `sporeflow send`'s reply went to it
    # (and with `system`, what Python sent was answered to that agent).
    problems = problems_of(f"agents:\n  echo: {{handler: operator:eq}}\n"
                           f"  {name}: {{handler: operator:eq}}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"o.yaml:3:3: agents.{name}: agent name {name!r} is the "
                                  f"outside world's")
    assert problems[0].endswith("rename the agent")


def test_declared_knowledge_that_is_no_json_is_refused_at_its_line() -> None:
    # Found by a new user: `check` said ok, and `run` refused the boot spore with no line:
    # YAML reads an unquoted date as a date, .nan as a float JSON cannot hold.
    problems = problems_of(
        "agents:\n"
        "  a: {handler: operator:eq, boot: {when: 2024-01-01}}\n"
        "  b: {handler: operator:eq, boot: {1: one}}\n"
        "  c: {handler: operator:eq, boot: {xs: [1, .nan]}}\n"
        "  d: {handler: operator:eq, boot: {fine: [1, {when: '2024-01-01'}]}}\n"
        "sources:\n"
        "  tick: {kind: timer, every: 1s, to: d, knowledge: {at: 2024-01-01 10:00:00}}\n")
    assert problems == [
        "o.yaml:2:42: agents.a.boot.when: is a date (datetime.date(2024, 1, 1)), which is "
        "not JSON; quote it to make it text",
        "o.yaml:3:35: agents.b.boot: has the key 1, an int: JSON keys are text; quote it",
        "o.yaml:4:44: agents.c.boot.xs.1: is nan, which JSON cannot represent; write a "
        "number or text",
        "o.yaml:7:57: sources.tick.knowledge.at: is a datetime (datetime.datetime(2024, 1, "
        "1, 10, 0)), which is not JSON; quote it to make it text"]


def test_declared_knowledge_is_measured_as_compact_as_a_spore_is_written() -> None:
    # 1500 numbers: 3001 bytes as the chain writes them ([0,0,...]), 4501 with a space
    # after each comma; the spore is well under 4096 and its agent gets it.
    numbers = ", ".join(["0"] * 1500)
    spec = organism_from_text("limits: {max_spore_bytes: 4096}\nagents:\n"
                              f"  a: {{handler: operator:eq, boot: {{n: [{numbers}]}}}}\n",
                              name="o.yaml")
    assert spec.agents["a"].boot == {"n": [0] * 1500}


def test_declared_knowledge_over_the_spore_limit_is_refused_at_load() -> None:
    problems = problems_of("limits: {max_spore_bytes: 1KiB}\nagents:\n"
                           f"  a: {{handler: operator:eq, boot: {{text: {'x' * 2000}}}}}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith("o.yaml:3:35: agents.a.boot: is 2011 bytes as JSON, over "
                                  "limits.max_spore_bytes=1024")


def test_a_list_with_an_item_twice_names_it() -> None:
    # Found by a new user: budget_warnings: [50, 50] "lists a name twice" (numbers).
    problems = problems_of("limits: {budget_warnings: [50, 50]}\n"
                           "agents:\n  a: {handler: operator:eq}\n")
    assert len(problems) == 1, problems
    assert problems[0].endswith("lists 50 twice; list it once")


_HANDLER = "agents: {a: {handler: operator:eq}}\n"


@pytest.mark.parametrize(("text", "place"), [
    ("organism: {signing_key_env: MY-KEY}\n", "organism.signing_key_env"),
    ("organism: {signing: {key_env: MY-KEY}}\n", "organism.signing.key_env"),
    ("organism: {signing: {key_env: K, accept_key_env: MY-KEY}}\n",
     "organism.signing.accept_key_env"),
    ("organism: {signing: {key_env: K, agents: {a: {public_key: "
     "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=, private_key_env: MY-KEY}}}}\n",
     "organism.signing.agents.a.private_key_env"),
    ("sources: {api: {kind: http, port: 0, token_env: MY-KEY, to: a}}\n",
     "sources.api.token_env"),
], ids=["signing_key_env", "key_env", "accept_key_env", "private_key_env", "token_env"])
def test_a_bad_environment_variable_name_is_told_the_rule_of_variable_names(
        text: str, place: str) -> None:
    # '.' and '-' make a valid agent name, never a variable a shell can export.
    problems = [p for p in problems_of(text + _HANDLER) if place in p]
    assert problems, problems_of(text + _HANDLER)
    assert all(p.endswith(f"{place}: 'MY-KEY' is not an environment variable name; use "
                          f"letters, digits and '_'") for p in problems), problems


@pytest.mark.parametrize("setting", [
    "timeout: .nan", "retry: {attempts: 2, backoff: .nan}",
    "retry: {attempts: 2, max_backoff: .nan}", "dedupe: .nan", "key_idle: .nan"])
def test_a_nan_duration_is_named_at_its_line(setting: str) -> None:
    # Before: the schema let NaN through (every comparison with it is false) and
    # parse_duration's ValueError escaped `check` and `run` as a raw traceback.
    problem = problems_of(f"agents:\n  a: {{handler: operator:eq, {setting}}}\n")[0]
    assert problem.startswith("o.yaml:2:"), problem
    assert "nan is not valid here; write a number of seconds" in problem, problem


def test_a_nan_loop_stall_warning_is_named_at_its_line() -> None:
    [problem] = problems_of("limits: {loop_stall_warning: .nan}\nagents: {}\n")
    assert problem.startswith("o.yaml:1:30: limits.loop_stall_warning: nan is not valid"
                              " here; write"), problem


def test_sporeflow_check_of_a_nan_duration_is_a_config_error(tmp_path: Any) -> None:
    (tmp_path / "nan_handlers.py").write_text("def sink(spore, ctx):\n    return None\n")
    path = tmp_path / "organism.yaml"
    path.write_text("organism: {name: nan}\nagents:\n"
                    "  sink: {handler: nan_handlers:sink, timeout: .nan}\n")
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    assert "organism.yaml:3:" in result.output, result.output


def test_an_exponent_without_a_dot_is_told_yaml_reads_it_as_text() -> None:
    # Found by an attacker: `max_spore_bytes: 1e3` (YAML 1.1 reads it as text) was told
    # "it is a string (quoted): write it unquoted, 1e3", which is what had been written.
    [problem] = problems_of("limits: {max_in_flight: 1e3}\nagents: {}\n")
    assert problem.endswith("; YAML reads an exponent without a dot as text: write 1000, "
                            "or 1.0e3"), problem
