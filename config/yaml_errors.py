"""A YAML syntax error as a user can act on it: the line at fault and what to do there.

PyYAML (and libyaml) report where the parser gave up, which is often not where the
mistake is: a key missing its ``:`` is reported on the next line, an unclosed quote or
bracket at the end of what follows. Lines and columns here are 1-based.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml

from sporeflow.config.errors import Problem

__all__ = ["syntax_problem"]

_Make = Callable[[tuple[int, int], str], Problem]
_INDENT_HINT = "YAML nests by indentation: indent with spaces, keys of one mapping alike"


def syntax_problem(exc: yaml.MarkedYAMLError, text: str, file: str) -> Problem:
    """The located problem ``exc`` (raised parsing ``text``, read from ``file``) means."""
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    context = exc.context_mark
    opened = (context.line + 1, context.column + 1) if context else None
    what = f"{exc.context or ''} {exc.problem or ''}"
    here = _char(lines, line, column)

    def problem(at: tuple[int, int], message: str) -> Problem:
        return Problem(file, at[0], at[1], "", f"YAML does not parse: {message}")

    if here == "\t" or "'\\t'" in what:
        return problem((line, column), "a tab character; YAML indents with spaces only: "
                                       "replace the tab with spaces")
    if "quoted scalar" in what and "escape" in (exc.problem or ""):
        # "\ud800", "\q": the string is closed, one of its escapes is not YAML's.
        return problem((line, column), f"{exc.problem} in this double-quoted string; write "
                                       f"the character itself, or quote the text with ' "
                                       f"(where \\ is no escape)")
    if "quoted scalar" in what and opened is not None:
        quote = _char(lines, *opened) or "quote"
        return problem(opened, f"the string opened by {quote} here is never closed; add the "
                               f"closing {quote}")
    if "flow mapping" in what and here == ":" and opened is not None and opened[0] == line:
        # {text: hello: world}: the value's own colon, not a missing '}' (one on a later
        # line is: the mapping ran on into the next key).
        return problem((line, column), "a second ':' in one item of this {...} mapping; if "
                                       "it is part of the value, quote the value (text: "
                                       "\"hello: world\")")
    if "flow mapping" in what or "flow sequence" in what:
        if opened is not None:
            close = "}" if "flow mapping" in what else "]"
            return problem(opened, f"the {_char(lines, *opened)} opened here is not closed "
                                   f"before line {line} column {column}; add {close!r} (and "
                                   f"',' between items)")
    if "mapping values are not allowed" in what:
        return _colon_problem(lines, line, column, problem)
    if "could not find expected ':'" in what and opened is not None:
        word = lines[opened[0] - 1].strip() if opened[0] <= len(lines) else ""
        if word and ":" not in word and " " not in word:
            return _bare_key(opened[0], opened[1], word, line, problem)
    if "block mapping" in what or "block collection" in what:
        start = opened[0] if opened else 1
        if here == "-":
            item = _list_item_above(lines, line, start)
            if item is not None:
                return problem((line, column), f"this list item is indented to column "
                                               f"{column}, the one above it (line {item[0]}) "
                                               f"to column {item[1]}; indent it like that one")
            return problem((line, column), f"a list item where a key of the mapping at line "
                                           f"{start} belongs; put the list under a key (key: "
                                           f"then '- item' lines indented below it)")
        columns = ", ".join(map(str, _columns_above(lines, line, start)))
        return problem((line, column), f"line {line} is indented to column {column}, which "
                                       f"lines up with nothing above it (lines {start}-"
                                       f"{line - 1} start at columns {columns}); indent it "
                                       f"like the other keys of its mapping ({_INDENT_HINT})")
    if "another document" in what:
        return problem((line, column), "a second YAML document starts here ('---'); an "
                                       "organism file holds one: remove the rest")
    detail = exc.problem or "unknown error"
    return problem((line, column), f"{detail} ({exc.context})" if exc.context else detail)


def _colon_problem(lines: list[str], line: int, column: int, problem: _Make) -> Problem:
    """``key: value`` where YAML reads a plain value: the line is the continuation of the
    value on the line above, either indented too far or after a key that lacks its ':'."""
    before = lines[line - 1][:column - 1] if line <= len(lines) else ""
    if ": " in before:  # a key on this line already: the value holds ': '
        return problem((line, column), "a value holds ': ', which YAML reads as another "
                                       "key; quote the value ('like: this')")
    above = _line_above(lines, line)
    if above is None:
        return problem((line, column), f"':' is not allowed here; quote the value if the ':' "
                                       f"belongs to it ({_INDENT_HINT})")
    indent, above_indent = _indent(lines[line - 1]), _indent(lines[above - 1])
    word = lines[above - 1].strip()
    if indent > above_indent and ":" not in word and " " not in word:
        return _bare_key(above, above_indent + 1, word, line, problem)
    if indent > above_indent:
        return problem((line, indent + 1), f"line {line} is indented more than line {above}, "
                                           f"so it reads as the rest of line {above}'s value; "
                                           f"indent it like line {above}, or quote the value")
    return problem((above, above_indent + 1), f"line {above} has no ':' after its key, so "
                                              f"line {line} reads as the rest of it; write "
                                              f"'key: value' (a space after the ':')")


def _bare_key(at: int, column: int, word: str, then: int, problem: _Make) -> Problem:
    """Line ``at`` holds a lone word where a key belongs: it lacks its ':'."""
    return problem((at, column), f"line {at} has no ':' after {word!r}, so line {then} reads "
                                 f"as the rest of it; write '{word}:' (a key, what belongs to "
                                 f"it indented below)")


def _line_above(lines: list[str], line: int) -> int | None:
    """The number of the nearest line above ``line`` that holds more than a comment."""
    for number in range(line - 1, 0, -1):
        content = lines[number - 1].strip()
        if content and not content.startswith("#"):
            return number
    return None


def _list_item_above(lines: list[str], line: int, start: int) -> tuple[int, int] | None:
    """(line, column) of the nearest list item above ``line``, from line ``start`` on."""
    for number in range(line - 1, max(start, 1) - 1, -1):
        if lines[number - 1].lstrip(" ").startswith("-"):
            return number, _indent(lines[number - 1]) + 1
    return None


def _columns_above(lines: list[str], line: int, start: int) -> list[int]:
    """The columns the lines from ``start`` to above ``line`` start at (comments aside)."""
    return sorted({_indent(text) + 1 for text in lines[max(start, 1) - 1:line - 1]
                   if text.strip() and not text.strip().startswith("#")})


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def _char(lines: list[str], line: int, column: int) -> str:
    if 0 < line <= len(lines) and 0 < column <= len(lines[line - 1]):
        return lines[line - 1][column - 1]
    return ""
