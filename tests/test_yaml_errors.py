"""YAML that does not parse: the line at fault (1-based), a plain message, a hint."""

from __future__ import annotations

import pytest
import yaml

from sporeflow.config import ConfigError, organism_from_text, positions


def problem_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        organism_from_text(text, name="o.yaml")
    [problem] = caught.value.problems
    return str(problem)


CASES = [
    # A key missing its ':' is where the parser gives up one line later.
    ("agents:\n  a:\n    handler mod:h\n    emit: {to: b}\n",
     "o.yaml:3:5: <root>: YAML does not parse: line 3 has no ':' after its key, so line 4 "
     "reads as the rest of it; write 'key: value'"),
    # A lone word where a key belongs, more indented lines below it: that word lacks its
    # ':' (found by a new user: it was told to indent the next line instead).
    ("agents:\n  a\n    handler: m:h\n",
     "o.yaml:2:3: <root>: YAML does not parse: line 2 has no ':' after 'a', so line 3 reads "
     "as the rest of it; write 'a:'"),
    ("organism: {name: t}\nagents\n  a:\n    handler: m:h\n",
     "o.yaml:2:1: <root>: YAML does not parse: line 2 has no ':' after 'agents', so line 3 "
     "reads as the rest of it; write 'agents:'"),
    # A key indented further than the one above it: that line is at fault.
    ("agents:\n  a:\n    handler: mod:h\n      emit: {to: b}\n",
     "o.yaml:4:7: <root>: YAML does not parse: line 4 is indented more than line 3"),
    # A key indented less than its siblings, more than its parent's.
    ("agents:\n  a:\n    handler: mod:h\n   emit: {to: b}\n",
     "o.yaml:4:4: <root>: YAML does not parse: line 4 is indented to column 4, which lines "
     "up with nothing above it (lines 2-3 start at columns 3, 5); indent it like the other "
     "keys of its mapping (YAML nests by indentation"),
    ("agents:\n  a:\n    subscribe:\n      - x\n     - y\n",
     "o.yaml:5:6: <root>: YAML does not parse: this list item is indented to column 6, the "
     "one above it (line 4) to column 7; indent it like that one"),
    ("agents:\n  a:\n\thandler: mod:h\n",
     "o.yaml:3:1: <root>: YAML does not parse: a tab character; YAML indents with spaces"),
    # Unclosed quotes and brackets: where they were opened, not the end of the file.
    ('agents:\n  a:\n    handler: "mod:h\n    emit: {to: b}\n',
     'o.yaml:3:14: <root>: YAML does not parse: the string opened by " here is never '
     'closed; add the closing "'),
    ("organism: {name: t\nagents:\n  a: {handler: m:h}\n",
     "o.yaml:1:11: <root>: YAML does not parse: the { opened here is not closed before line "
     "2 column 7; add '}'"),
    # Found by a new user: told that the '}' was missing, where it was not.
    ("agents:\n  a: {handler: m:h, boot: {text: hello: world}}\n",
     "o.yaml:2:39: <root>: YAML does not parse: a second ':' in one item of this {...} "
     "mapping; if it is part of the value, quote the value (text: \"hello: world\")"),
    ("agents:\n  a:\n    description: note: this\n",
     "o.yaml:3:22: <root>: YAML does not parse: a value holds ': ', which YAML reads as "
     "another key; quote the value"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_a_syntax_error_names_the_line_at_fault(
        monkeypatch: pytest.MonkeyPatch, text: str, expected: str, loader: str) -> None:
    if loader == "python":  # the same report without libyaml
        monkeypatch.setattr(positions, "SAFE_LOADER", yaml.SafeLoader)
    assert problem_of(text).startswith(expected)


def test_another_error_keeps_the_parsers_words_without_its_internals() -> None:
    shown = problem_of("agents: {}\n---\nagents: {}\n")
    assert shown == ("o.yaml:2:1: <root>: YAML does not parse: a second YAML document starts "
                     "here ('---'); an organism file holds one: remove the rest")
    assert "found undefined alias" in problem_of("agents: *x\n")
