"""Handler imports: a broken module is imported once and reported once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sporeflow.config import ConfigError, load_organism, organism_from_dict, organism_from_text

BROKEN = """
import builtins
builtins.__dict__.setdefault("sporeflow_test_runs", []).append(__name__)  # counts runs

def a(spore, ctx):
    return None

x = 1 / 0
"""


def organism(folder: Path, agents: dict[str, str]) -> Path:
    file = folder / "organism.yaml"
    file.write_text("agents:\n" + "".join(f"  {name}: {{handler: {ref}}}\n"
                                          for name, ref in agents.items()))
    return file


def test_a_broken_module_is_reported_once_naming_its_agents(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    import builtins

    mod = handler_modules(BROKEN)
    agents = {name: f"{mod}:a" for name in ("a", "b", "c", "d", "e", "f")}
    file = organism(tmp_path, {**agents, "g": "operator:eq"})
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    [problem] = caught.value.problems
    assert (problem.line, problem.path) == (2, "agents.a.handler")
    assert problem.message == (
        f"handler module {mod!r} does not import: ZeroDivisionError: division by zero "
        f"(at {mod}.py:8); agents 'a', 'b', 'c', 'd', 'e' and 'f' use it")
    runs = builtins.__dict__.pop("sporeflow_test_runs")
    assert runs == [mod]  # its code ran once, not once per agent


def test_a_missing_module_is_reported_once_and_a_lone_user_as_before(tmp_path: Path) -> None:
    file = organism(tmp_path, {"a": "no_such_mod_x1:f", "b": "no_such_mod_x1:g",
                               "c": "no_such_mod_x2:f"})
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    first, second = caught.value.problems
    assert first.message.startswith("handler module 'no_such_mod_x1' is neither beside the "
                                    "organism file")
    assert first.message.endswith("; agents 'a' and 'b' use it")
    assert second.path == "agents.c.handler"
    assert second.message.startswith("handler module 'no_such_mod_x2' is neither beside")
    assert "use it" not in second.message


def test_a_misspelt_module_beside_the_organism_is_suggested(tmp_path: Path) -> None:
    (tmp_path / "handlers_x3.py").write_text("async def f(spore, ctx):\n    return None\n")
    with pytest.raises(ConfigError) as caught:
        load_organism(organism(tmp_path, {"a": "handler_x3:f"}))
    assert caught.value.problems[0].message == (
        f"handler module 'handler_x3' is neither beside the organism file ({tmp_path}) nor "
        f"an installed package (did you mean 'handlers_x3'?)")


def test_without_an_organism_file_a_missing_module_is_looked_for_in_base_dir(
        tmp_path: Path) -> None:
    # Found by a new user: Organism.from_dict said "neither beside the organism file
    # (/cwd)", though there was no file.
    (tmp_path / "handlers_x4.py").write_text("async def f(spore, ctx):\n    return None\n")
    for build in (lambda: organism_from_dict({"agents": {"a": {"handler": "handler_x4:f"}}},
                                             base_dir=tmp_path),
                  lambda: organism_from_text("agents: {a: {handler: 'handler_x4:f'}}",
                                             base_dir=tmp_path, name="o.yaml")):
        with pytest.raises(ConfigError) as caught:
            build()
        assert caught.value.problems[0].message == (
            f"handler module 'handler_x4' is neither in base_dir ({tmp_path}; there is no "
            f"organism file) nor an installed package (did you mean 'handlers_x4'?)")


def test_without_an_organism_file_a_shadowed_module_says_base_dir(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text("def dumps(spore, ctx):\n    return None\n")
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"agents": {"a": {"handler": "json:dumps"}}}, base_dir=tmp_path)
    assert (f"handler module 'json' is {tmp_path / 'json.py'}, in base_dir, but this process "
            f"imported a module 'json' already") in caught.value.problems[0].message


def test_a_missing_function_is_still_reported_per_agent(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    mod = handler_modules("def handle(spore, ctx):\n    return None\n")
    file = organism(tmp_path, {"x": f"{mod}:handel", "y": f"{mod}:c"})
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    assert [p.path for p in caught.value.problems] == ["agents.x.handler", "agents.y.handler"]
    assert "has no 'handel' (did you mean 'handle'?)" in caught.value.problems[0].message


def test_a_module_beside_a_second_organism_never_runs_the_first_ones_code(
        tmp_path: Path) -> None:
    import sys

    name = "sf_shared_agents_name"  # as two `sporeflow init` folders' agents.py
    for who in ("a", "b"):
        (tmp_path / who).mkdir()
        (tmp_path / who / f"{name}.py").write_text(
            f"def work(spore, ctx):\n    return {{'from': {who!r}}}\n")
    try:
        first = load_organism(organism(tmp_path / "a", {"w": f"{name}:work"}))
        assert first.agents["w"].handler(None, None) == {"from": "a"}
        with pytest.raises(ConfigError) as caught:
            load_organism(organism(tmp_path / "b", {"w": f"{name}:work"}))
    finally:
        sys.modules.pop(name, None)
    [problem] = caught.value.problems
    assert problem.path == "agents.w.handler"
    assert str(tmp_path / "b" / f"{name}.py") in problem.message  # the file not imported
    assert str(tmp_path / "a" / f"{name}.py") in problem.message  # the one that holds it
    assert "rename" in problem.message.lower()


def test_a_module_beside_the_organism_named_like_the_standard_library_is_refused(
        tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text("def fetch(spore, ctx):\n    return None\n")
    with pytest.raises(ConfigError) as caught:
        load_organism(organism(tmp_path, {"f": "json:fetch"}))
    [problem] = caught.value.problems
    assert str(tmp_path / "json.py") in problem.message
    assert "rename json.py" in problem.message.lower()


def test_a_broken_module_in_handlers_lists_is_reported_once_by_its_name(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    """``handlers:`` lists share the rule: the module runs once, one problem names it (not
    its first reference for the second) and every agent using it, ``handler:`` too."""
    import builtins

    mod = handler_modules(BROKEN)
    file = tmp_path / "organism.yaml"
    file.write_text(f"agents:\n  desk: {{handlers: [{mod}:one, {mod}:two]}}\n"
                    f"  solo: {{handler: {mod}:a}}\n")
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    [problem] = caught.value.problems
    assert problem.path == "agents.solo.handler"  # handler: refs are imported first
    assert problem.message.startswith(f"handler module {mod!r} ")
    assert problem.message.endswith("; agents 'solo' and 'desk' use it")
    assert builtins.__dict__.pop("sporeflow_test_runs") == [mod]


def test_one_agents_list_into_a_broken_module_names_the_agent_once(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    mod = handler_modules(BROKEN)
    file = tmp_path / "organism.yaml"
    file.write_text(f"agents:\n  desk: {{handlers: [{mod}:one, {mod}:two]}}\n")
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    [problem] = caught.value.problems
    assert (problem.line, problem.path) == (2, "agents.desk.handlers.0")
    assert problem.message.startswith(f"handler module {mod!r} ")
    assert problem.message.endswith("; agent 'desk' uses it")


HANDLERS_OF_THE_WRONG_SHAPE = '''
async def one(spore):
    return None

def three(spore, ctx, extra):
    return None

class Agent:
    async def handle(self, spore):
        return None
'''


def test_a_handler_that_cannot_take_a_spore_and_a_context_is_refused_at_load(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    # Before: `sporeflow check` passed them, and every spore failed "handler failed" with a
    # TypeError at the call.
    mod = handler_modules(HANDLERS_OF_THE_WRONG_SHAPE)
    file = organism(tmp_path, {"a": f"{mod}:one", "b": f"{mod}:three", "c": f"{mod}:Agent",
                               "d": "operator:eq"})
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    said = {problem.path: problem.message for problem in caught.value.problems}
    assert sorted(said) == ["agents.a.handler", "agents.b.handler", "agents.c.handler"]
    assert said["agents.a.handler"] == (
        f"'{mod}:one' cannot be called with a spore and a context (too many positional "
        f"arguments); a handler takes both: `async def one(spore, ctx)`")
    assert "(missing a required argument: 'extra')" in said["agents.b.handler"]
    assert said["agents.b.handler"].endswith("`def three(spore, ctx)`")
    assert said["agents.c.handler"].endswith("`async def handle(self, spore, ctx)`")


CLASSES_THAT_CANNOT_BE_MADE = '''
class Needy:
    def __init__(self, db):
        self.db = db

    async def handle(self, spore, ctx):
        return None

class Content:
    def __init__(self, db=None):
        self.db = db

    async def handle(self, spore, ctx):
        return None
'''


def test_a_class_handler_that_cannot_be_made_without_arguments_is_refused_at_load(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    # Found by a new user: `sporeflow check` passed a class whose __init__ needs an
    # argument, and every spore then failed "__init__() missing 1 required positional
    # argument" (one instance per agent is made with no arguments).
    mod = handler_modules(CLASSES_THAT_CANNOT_BE_MADE)
    file = organism(tmp_path, {"a": f"{mod}:Needy", "b": f"{mod}:Content"})
    with pytest.raises(ConfigError) as caught:
        load_organism(file)
    [problem] = caught.value.problems
    assert problem.path == "agents.a.handler"
    assert problem.message == (
        "class 'Needy' cannot be made without arguments (missing a required argument: "
        "'db'): one instance per agent is made as `Needy()`; give __init__'s parameters "
        "defaults")


HANDLERS_CALLED_AS_THEY_ARE = '''
import functools

def with_db(function):  # supplies an argument of its own
    @functools.wraps(function)
    async def wrapper(spore, ctx):
        return await function(spore, ctx, {"db": 1})
    return wrapper

def with_db_method(function):
    @functools.wraps(function)
    async def wrapper(self, spore, ctx):
        return await function(self, spore, ctx, {"db": 1})
    return wrapper

@with_db
async def injected(spore, ctx, db):
    return None

class InjectedMethod:
    @with_db_method
    async def handle(self, spore, ctx, db):
        return None

def _configured(config, spore, ctx):
    return None

class PartialMethod:  # a partial is no descriptor: called as it is, without self
    handle = functools.partial(_configured, {"a": 1})
'''


def test_handlers_whose_call_takes_a_spore_and_a_context_are_not_refused(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    # A decorator's wrapper is what is called; what it wraps may take more (it supplies
    # them), and a callable object held by a class is called without self.
    mod = handler_modules(HANDLERS_CALLED_AS_THEY_ARE)
    file = organism(tmp_path, {"a": f"{mod}:injected", "b": f"{mod}:InjectedMethod",
                               "c": f"{mod}:PartialMethod"})
    spec = load_organism(file)
    assert sorted(spec.agents) == ["a", "b", "c"]
