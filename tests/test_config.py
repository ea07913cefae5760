from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest

from sporeflow.config import (
    ORGANISM_SCHEMA,
    ConfigError,
    check_organism,
    load_organism,
    organism_from_dict,
    parse_duration,
    parse_size,
)

FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "handlers_ok.py").write_text((FIXTURES / "handlers_ok.py").read_text())
    path = tmp_path / "organism.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_organism(path)
    return [str(p) for p in caught.value.problems]


def test_good_file_loads_into_immutable_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
        organism: {name: demo}
        channels:
          files: {capacity: 50}
        agents:
          reader:
            handler: handlers_ok:echo
            emit: {channel: files}
            boot: {root: "."}
          counter:
            handler: handlers_ok:nothing
            subscribe: [files]
            concurrency: 4
            timeout: 250ms
            retry: {attempts: 3, backoff: 100ms, max_backoff: 2m}
        limits: {max_spore_bytes: 512KiB, max_hops: 8}
        """)
    spec = load_organism(path)
    assert spec.name == "demo"
    counter = spec.agents["counter"]
    assert counter.concurrency == 4
    assert counter.timeout == 0.25
    assert (counter.retry.attempts, counter.retry.backoff, counter.retry.max_backoff) == (
        3, 0.1, 120.0)
    assert spec.agents["reader"].emit is not None
    assert spec.agents["reader"].emit.channel == "files"
    assert spec.channels["files"].capacity == 50
    assert spec.limits.max_spore_bytes == 512 * 1024
    assert spec.base_dir == tmp_path.resolve()
    with pytest.raises(TypeError):
        spec.agents["x"] = counter  # type: ignore[index]


def test_every_mistake_is_reported_at_once_with_line_column_and_hint(tmp_path: Path) -> None:
    path = write(tmp_path, """
        organism: {name: demo}
        channels:
          files: {}
        agents:
          reader:
            handler: handlers_ok:echo
            emit: {channel: filez}
          counter:
            handler: handlers_ok:echo
            subscribe: [files]
            emit: {to: reduser}
            concurency: 4
          reducer:
            handler: handlers_ok:ecko
            peers: [counter, nobody]
            timeout: soon
        """)
    problems = problems_of(path)
    file = str(path)
    joined = "\n".join(problems)
    assert len(problems) == 6
    assert (f"{file}:7:21: agents.reader.emit.channel: unknown channel 'filez' "
            f"(did you mean 'files'?)") in joined
    assert (f"{file}:11:16: agents.counter.emit.to: unknown agent 'reduser' "
            f"(did you mean 'reducer'?)") in joined
    assert f"{file}:15:22: agents.reducer.peers.1: unknown agent 'nobody'" in joined
    assert f"{file}:12:5: agents.counter.concurency: unknown key 'concurency' " \
           f"(did you mean 'concurrency'?)" in joined
    # Found by a new user: timeout: '5' was told to "write seconds", which it was.
    assert (f"{file}:16:14: agents.reducer.timeout: 'soon' is not valid here; write a number "
            f"of seconds (5, unquoted), or a string with its unit like 250ms, 5s or 2m"
            ) in joined
    assert "agents.reducer.handler: handler 'handlers_ok:ecko'" in joined


def test_reference_and_import_problems_are_located(tmp_path: Path) -> None:
    path = write(tmp_path, """
        agents:
          reader:
            handler: handlers_ok:echo
            emit: {channel: filez}
          counter:
            handler: handlers_ok:echo
            emit: {to: reduser}
          reducer:
            handler: handlers_ok:ecko
            peers: [counter, nobody]
          broken:
            handler: no_such_module:run
          number:
            handler: handlers_ok:NOT_CALLABLE
        """)
    joined = "\n".join(problems_of(path))
    file = str(path)
    assert (f"{file}:4:21: agents.reader.emit.channel: unknown channel 'filez' "
            f"(did you mean 'files'?)") not in joined  # no 'files' channel here
    assert f"{file}:4:21: agents.reader.emit.channel: unknown channel 'filez'" in joined
    assert (f"{file}:7:16: agents.counter.emit.to: unknown agent 'reduser' "
            f"(did you mean 'reducer'?)") in joined
    assert f"{file}:10:22: agents.reducer.peers.1: unknown agent 'nobody'" in joined
    assert ("agents.reducer.handler: handler 'handlers_ok:ecko': module 'handlers_ok' has no "
            "'ecko' (did you mean 'echo'?)") in joined
    assert "agents.broken.handler: handler module 'no_such_module' is neither beside" in joined
    assert "agents.number.handler: handler 'handlers_ok:NOT_CALLABLE' is an int, not callable" \
        in joined


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "agents:\n  a: {handler: x:y\n")
    [problem] = problems_of(path)
    # Where the brace was opened, not the end of the file where the parser gave up.
    assert problem.startswith(f"{path}:2:6: <root>: YAML does not parse: the {{ opened here "
                              f"is not closed")


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """
        agents:
          a: {handler: handlers_ok:echo}
          a: {handler: handlers_ok:nothing}
        """)
    assert any("3:3: agents.a: key 'a' appears twice" in p for p in problems_of(path))


def test_wrong_types_name_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path, """
        agents:
          a: {handler: handlers_ok:echo, subscribe: files, concurrency: 0}
        """)
    joined = "\n".join(problems_of(path))
    assert "agents.a.subscribe: 'files' is a string; expected an array" in joined
    assert "agents.a.concurrency: expected a positive integer, got 0" in joined


def test_missing_agents_and_handler_are_reported(tmp_path: Path) -> None:
    assert any("'agents' is a required property" in p
               for p in problems_of(write(tmp_path, "organism: {name: x}\n")))
    assert any("agents.a: 'handler' is a required property; add it" in p
               for p in problems_of(write(tmp_path, "agents:\n  a: {concurrency: 2}\n")))


def test_emit_needs_exactly_one_destination(tmp_path: Path) -> None:
    path = write(tmp_path, """
        agents:
          a: {handler: handlers_ok:echo, emit: {to: b, channel: main}}
          b: {handler: handlers_ok:echo}
        """)
    assert any("give exactly one of 'to' (an agent) or 'channel'" in p for p in problems_of(path))


def test_check_warns_about_wiring_that_can_only_loop(tmp_path: Path) -> None:
    path = write(tmp_path, """
        agents:
          a: {handler: handlers_ok:echo, emit: {to: b}, boot: {}}
          b: {handler: handlers_ok:echo}
          lonely: {handler: handlers_ok:echo}
        """)
    _, warnings = check_organism(path)
    text = "\n".join(map(str, warnings))
    assert "'b' has no emit, so its replies go back to 'a', which emits to it again" in text
    assert "nothing declared reaches 'lonely'" in text
    assert all(w.warning for w in warnings)


def test_check_warns_about_a_cost_without_a_cost_limit(tmp_path: Path) -> None:
    path = write(tmp_path, """
        agents:
          a: {handler: handlers_ok:echo, cost: 5}
        """)
    _, warnings = check_organism(path)
    assert ["'a' declares a cost, but without limits.max_cost_per_thread nothing is charged "
            "or refused: set that limit or drop the cost" in str(w) for w in warnings] == [True]
    limited = write(tmp_path, """
        agents:
          a: {handler: handlers_ok:echo, cost: 5}
        limits: {max_cost_per_thread: 10}
        """)
    assert check_organism(limited)[1] == []


def test_a_source_reaches_the_agent_it_feeds(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    path = write(tmp_path, """
        agents:
          starter: {handler: handlers_ok:echo, boot: {}}
          reader: {handler: handlers_ok:echo}
          lonely: {handler: handlers_ok:echo}
        sources:
          inbox: {kind: folder, path: inbox, to: reader}
        """)
    _, warnings = check_organism(path)
    text = "\n".join(map(str, warnings))
    assert "reaches 'reader'" not in text
    # Found by a new user: an agent reached only by ctx.request was "reached by nothing",
    # on every command, with no way to say otherwise.
    assert ("nothing declared reaches 'lonely' (no subscribe, no boot, no emit, peers or "
            "source naming it): only outside sends, and handlers' ctx.send or ctx.request "
            "naming it, will; list it in its senders' peers to say so") in text


def test_check_warns_about_an_emit_on_a_channel_nobody_subscribes_to(tmp_path: Path) -> None:
    # Found by a new user: check said ok, and every spore the agent returned became a
    # 'no subscribers' dead letter.
    path = write(tmp_path, """
        channels: {news: {}, heard: {}}
        agents:
          teller: {handler: handlers_ok:echo, emit: {channel: news}}
          speaker: {handler: handlers_ok:echo, emit: {channel: heard}}
          ear: {handler: handlers_ok:echo, subscribe: [heard]}
        """)
    _, warnings = check_organism(path)
    said = [str(w) for w in warnings if "emits on channel" in str(w)]
    assert len(said) == 1
    assert ("'teller' emits on channel 'news', to which no agent subscribes: what it "
            "returns becomes 'no subscribers' dead letters") in said[0]
    assert "agents.teller.emit.channel" in said[0]


def test_from_dict_accepts_callables_and_checks_the_rest() -> None:
    async def handler(spore: object, ctx: object) -> None:
        return None

    spec = organism_from_dict({"agents": {"a": {"handler": handler}}})
    assert spec.agents["a"].handler is handler
    with pytest.raises(ConfigError, match=r"agents.a.emit.to: unknown agent 'c'"):
        organism_from_dict({"agents": {"a": {"handler": handler, "emit": {"to": "c"}}}})


def test_from_dict_leaves_the_callers_dict_as_it_was() -> None:
    async def handler(spore: object, ctx: object) -> None:
        return None

    data = {"agents": {"a": {"handler": handler}, "pr": {"external": "praval"}}}
    before = repr(data)
    for _ in range(2):  # the same dict gives the same spec again
        spec = organism_from_dict(data)
        assert spec.agents["a"].handler is handler
        assert repr(data) == before


def test_handlers_import_only_beside_the_file_or_installed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "stray_handlers.py").write_text("async def h(s, c): return None\n")
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path, "agents:\n  a: {handler: stray_handlers:h}\n")
    assert any("'stray_handlers' is neither beside the organism file" in p
               for p in problems_of(path))


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0),
                                               ("1.5h", 5400.0), (3, 3.0)])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("512KiB", 524288), ("1MiB", 1048576),
                                            ("10KB", 10000), (64, 64), ("7", 7)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_bad_units_say_how_to_write_them() -> None:
    with pytest.raises(ValueError, match="write it like 250ms"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="write it like 512KiB"):
        parse_size("big")


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 1e20])
def test_a_duration_must_be_a_usable_number_of_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="not a usable number of seconds"):
        parse_duration(seconds)


def test_an_infinite_duration_in_the_organism_file_is_refused_at_its_place(
        tmp_path: Path) -> None:
    path = write(tmp_path, "limits: {loop_stall_warning: .inf}\nagents: {}\n")
    [problem] = problems_of(path)
    assert "limits.loop_stall_warning" in problem
    assert "inf" in problem


def test_exported_schema_is_valid_and_accepts_the_demo() -> None:
    import yaml

    jsonschema.Draft202012Validator.check_schema(ORGANISM_SCHEMA)
    demo = yaml.safe_load((Path(__file__).parent.parent / "organism.yaml").read_text())
    jsonschema.validate(demo, ORGANISM_SCHEMA)
    json.dumps(ORGANISM_SCHEMA)


def test_a_timeout_of_zero_is_no_timeout(tmp_path: Path) -> None:
    # As dedupe: 0 and key_idle: 0 are off. A deadline of now failed every call.
    file = tmp_path / "organism.yaml"
    file.write_text("agents:\n  a: {handler: operator:eq, timeout: 0}\n"
                    "  b: {handler: operator:eq, timeout: 0s}\n"
                    "  c: {handler: operator:eq, timeout: 250ms}\n")
    spec = load_organism(file)
    assert [spec.agents[n].timeout for n in "abc"] == [None, None, 0.25]


def test_a_backoff_above_max_backoff_is_warned_of(tmp_path: Path) -> None:
    file = tmp_path / "organism.yaml"
    file.write_text("agents:\n  a: {handler: operator:eq, retry: {attempts: 3, backoff: 1h}}\n"
                    "  b: {handler: operator:eq, retry: {attempts: 3, backoff: 1h, "
                    "max_backoff: 2h}}\n")
    spec, problems = check_organism(file)
    assert spec is not None
    [warning] = problems
    assert warning.warning
    assert warning.path == "agents.a.retry.backoff"
    assert "3600s is more than retry.max_backoff (10s, its default): every" in warning.message
    # Found by a new user: one set below the backoff was called "its default unless set".
    file.write_text("agents:\n  b: {handler: operator:eq, retry: {attempts: 3, backoff: 1h, "
                    "max_backoff: 5s}}\n")
    _, [set_one] = check_organism(file)
    assert "3600s is more than retry.max_backoff (5s): every pause" in set_one.message
