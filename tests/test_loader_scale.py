"""Organism files at scale: a size cap checked before anything is read, libyaml's safe
loader where it is installed, and no pass of the loader quadratic in agents.

Linearity is measured without a clock: the work of a load is the number of Python
function calls made anywhere plus the lines run in sporeflow's own code, which is the
same from run to run. Sixteen times the agents must cost under 24 times the work; the
quadratic passes this replaces (the wiring warnings, membership in listed names, "did
you mean" over every agent) made it more than 30 times.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml

import sporeflow.config
from sporeflow.config import ConfigError, check_organism, load_organism, positions
from sporeflow.config.loader import MAX_ORGANISM_BYTES_ENV, organism_from_text
from sporeflow.config.positions import read_yaml

OWN_CODE = str(Path(sporeflow.config.__file__).parent)
SMALL, LARGE = 100, 1_600


@pytest.fixture
def handler_module(tmp_path: Path) -> Iterator[str]:
    name = f"scale_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(
        "def handle(spore, ctx):\n    return {'ok': 1}\n\n"
        "def sink(spore, ctx) -> None:\n    return None\n")
    yield name
    sys.modules.pop(name, None)


def organism(folder: Path, module: str, agents: int, *, typos: bool = False) -> Path:
    """``agents`` agents, wired the ways every per-agent check looks at: most have no
    emit and subscribe to a channel others emit on (the loop warning), a restricted
    channel lists them all, peers name each other, one boots (the reach warning)."""
    lines = ["organism: {name: big}", "channels:", "  work: {}",
             "  board:", "    subscribe: [" + ", ".join(f"a{i}" for i in range(agents)) + "]",
             "agents:"]
    for i in range(agents):
        conf = [f"handler: {module}:handle"]
        if typos:
            conf.append(f"emit: {{to: aa{i}}}")  # unknown: "did you mean" looks for it
        elif i % 4 == 0:
            conf.append("emit: {channel: work}")
        else:
            conf.append("subscribe: [work, board]")
        if i % 10 == 0:
            conf.append(f"peers: [a{(i + 1) % agents}]")
        if i == 0:
            conf.append("boot: {}")
        lines.append(f"  a{i}: {{{', '.join(conf)}}}")
    path = folder / f"organism_{agents}{'_typos' if typos else ''}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def work_of(load: Callable[[], Any]) -> int:
    """Python calls anywhere plus lines run in sporeflow.config, while ``load()`` runs."""
    count = 0

    def line(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return line

    def call(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        count += 1
        return line if frame.f_code.co_filename.startswith(OWN_CODE) else None

    previous = sys.gettrace()
    sys.settrace(call)
    try:
        load()
    finally:
        sys.settrace(previous)
    return count


def load_expecting_errors(path: Path) -> None:
    with pytest.raises(ConfigError):
        load_organism(path)


def test_twenty_thousand_agents_load(tmp_path: Path, handler_module: str) -> None:
    path = organism(tmp_path, handler_module, 20_000)
    spec, warnings = check_organism(path)
    assert len(spec.agents) == 20_000
    assert spec.channels["board"].subscribe is not None
    loops = [w for w in warnings if "can only loop" in w.message]
    assert len(loops) == 15_000  # one per agent without emit, naming its senders
    assert "'a1' has no emit, so its replies go back to 'a0', 'a4', 'a8' and 4997 " \
           "others, which emit to it again" in loops[0].message


def test_load_work_grows_linearly_with_agents(tmp_path: Path, handler_module: str) -> None:
    small, large = (organism(tmp_path, handler_module, n) for n in (SMALL, LARGE))
    check_organism(small)  # the handler module is imported once, outside the counts
    ratio = work_of(lambda: check_organism(large)) / work_of(lambda: check_organism(small))
    assert ratio < 1.5 * LARGE / SMALL


def test_unknown_names_work_grows_linearly_with_agents(tmp_path: Path,
                                                       handler_module: str) -> None:
    small, large = (organism(tmp_path, handler_module, n, typos=True) for n in (SMALL, LARGE))
    load_expecting_errors(small)
    ratio = (work_of(lambda: load_expecting_errors(large))
             / work_of(lambda: load_expecting_errors(small)))
    assert ratio < 1.5 * LARGE / SMALL


def test_the_first_unknown_names_still_get_a_hint(tmp_path: Path, handler_module: str) -> None:
    path = organism(tmp_path, handler_module, 3_000, typos=True)
    with pytest.raises(ConfigError) as caught:
        load_organism(path)
    messages = [p.message for p in caught.value.problems if "unknown agent" in p.message]
    assert len(messages) == 3_000
    assert messages[0] == "unknown agent 'aa0' (did you mean 'a0'?)"
    assert messages[-1].startswith("unknown agent 'aa2999'")  # reported, hinted or not


# -- the size cap -----------------------------------------------------------------------


def test_a_file_over_the_cap_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "organism.yaml"
    path.write_text("agents: {}\n" + "# padding\n" * 300)
    monkeypatch.setenv(MAX_ORGANISM_BYTES_ENV, "1KiB")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed a file over the cap")

    monkeypatch.setattr(Path, "read_text", never)
    monkeypatch.setattr("sporeflow.config.loader.read_yaml", never)
    with pytest.raises(ConfigError) as caught:
        load_organism(path)
    [problem] = caught.value.problems
    assert problem.file == str(path)
    assert "3011 bytes" in problem.message
    assert "1024" in problem.message
    assert f"set {MAX_ORGANISM_BYTES_ENV}" in problem.message


def test_the_cap_is_raised_through_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "organism.yaml"
    path.write_text("agents: {}\n" + "# padding\n" * 300)
    monkeypatch.setenv(MAX_ORGANISM_BYTES_ENV, "1KiB")
    with pytest.raises(ConfigError, match="over the 1024-byte cap"):
        load_organism(path)
    monkeypatch.setenv(MAX_ORGANISM_BYTES_ENV, "4096")
    assert load_organism(path).agents == {}


def test_a_bad_cap_in_the_environment_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "organism.yaml"
    path.write_text("agents: {}\n")
    monkeypatch.setenv(MAX_ORGANISM_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_ORGANISM_BYTES_ENV}='lots' is not a size"):
        load_organism(path)


def test_an_endless_file_is_read_only_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_ORGANISM_BYTES_ENV, "64KiB")
    with pytest.raises(ConfigError, match="is larger than the 65536-byte cap"):
        load_organism("/dev/zero")  # its size is 0 to stat; reading it never ends


def test_text_over_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_ORGANISM_BYTES_ENV, "1KiB")
    with pytest.raises(ConfigError, match=r"<text>:1:1: <root>: the text is 2048 bytes"):
        organism_from_text("#" * 2048)


# -- the YAML reader --------------------------------------------------------------------


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML was built without libyaml")
def test_the_reader_uses_libyaml() -> None:
    assert positions.SAFE_LOADER is yaml.CSafeLoader


def test_positions_are_those_of_the_python_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).parent.parent / "organism.yaml").read_text(encoding="utf-8")
    text += "\nextra:\n  - {é: 'ü', b: [1, 2]}\n  -\n    c: >\n      folded\n  - d\n"
    fast = read_yaml(text, "x.yaml")
    monkeypatch.setattr(positions, "SAFE_LOADER", yaml.SafeLoader)
    slow = read_yaml(text, "x.yaml")
    assert fast.data == slow.data
    assert fast.values == slow.values
    assert fast.keys == slow.keys


def test_a_large_file_without_aliases_is_not_called_an_alias_bomb(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(positions, "MAX_EXPANDED_VALUES", 100)
    located = read_yaml("items: [" + ", ".join(["1"] * 500) + "]\n", "x.yaml")
    assert len(located.data["items"]) == 500
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n" \
           "c: [*b, *b, *b]\n"
    with pytest.raises(ValueError, match="aliases expand this value to over 100 values"):
        read_yaml(bomb, "x.yaml")
