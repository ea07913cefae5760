"""The demo's printed report: what was found, which agent did what, what they said."""

from __future__ import annotations

import textwrap
from typing import Any

__all__ = ["render"]

WIDTH = 88


def _items(pairs: list[Any]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in pairs) or "none"


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def _time(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _wrapped(text: str, indent: str = "  ", hang: str = "      ") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=hang,
                         break_on_hyphens=False)


def _message(text: str) -> list[str]:
    return _wrapped(text, "    ", " " * 15)


def _agent_line(name: str, books: dict[str, Any]) -> str:
    handled, seconds = books["handled"], books["seconds"]
    rate = f"{handled / seconds:,.0f}" if handled > 1 and seconds > 0 else ""
    return (f"  {name:<11}{handled:>8,}{_time(seconds):>10}{rate:>10}  "
            f"{books.get('did', '')}").rstrip()


def _listed(names: list[str], shown: int = 4) -> str:
    more = ", ..." if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _request_line(request: dict[str, Any]) -> str:
    """One request and its answer: the counter's totals, or the classifier's split."""
    answer = request["answer"]
    head = f"request    {request['from']} → {request['to']}: "
    later = f", answered in {_time(request['seconds'])}: "
    if "classify" not in request["asked"]:
        return (head + "your totals" + later + f"{answer['distinct_names']:,} distinct "
                f"names, {answer['distinct_words']:,} distinct prose words, the "
                f"{len(answer['names']):,} most common names")
    kinds = [("keywords", "keywords"), ("builtins", "builtins"),
             ("conventions", "short or conventional"), ("own", "the library's own")]
    parts = [f"{len(answer[key])} {label} ({_listed(answer[key])})"
             for key, label in kinds if answer[key]]
    return (head + f"classify {len(request['asked']['classify']):,} names" + later
            + (", ".join(parts) or "no names"))


def render(k: dict[str, Any], *, sender: str, me: str, elapsed: float) -> str:
    """The report of the knowledge ``sender`` (tally) sent ``me`` (the reporter)."""
    totals: dict[str, int] = k["totals"]
    agents: dict[str, dict[str, Any]] = k["agents"]
    files = totals.get("files", 0)
    lines = [f"{k['title']}: {k['root']}"]
    summary = (f"{files:,} files, {totals.get('lines', 0):,} lines, "
               f"{_size(totals.get('bytes', 0))}: "
               f"{totals.get('library files', 0):,} library modules "
               f"({totals.get('library lines', 0):,} lines), "
               f"{totals.get('tests files', 0):,} test files "
               f"({totals.get('tests lines', 0):,} lines)")
    lines += _wrapped(summary)
    lines += _wrapped("largest packages, in lines: " + _items(k["packages"]))
    lines += _wrapped("most common names, the library's own: " + _items(k["names"]))
    lines += _wrapped("most common words in comments and docstrings: " + _items(k["words"]))
    lines += _wrapped("public modules with the most public functions and classes: "
                      + _items(k["public"]))
    lines += ["", f"  {'agent':<11}{'handled':>8}{'cpu':>10}{'per cpu s':>10}  what it did"]
    lines += [_agent_line(name, books) for name, books in agents.items()]
    lines.append(f"  {'in all':<11}{sum(a['handled'] for a in agents.values()):>8,} "
                 f"spores in {_time(elapsed)}")
    lines += ["", "  messages"]
    scanner = k["scanner"]
    lines += _message(f"send       {scanner} → {sender}: expect {files:,} files")
    for channel, hearers in k["channels"].items():
        heard = " and ".join(f"{name} ({count:,})" for name, count in hearers.items())
        lines += _message(f"broadcast  {scanner} → '{channel}': {files:,} spores, one per "
                          f"file, heard by {heard}")
        lines += _message(f"emit       {', '.join(hearers)} → {sender}: "
                          f"{sum(hearers.values()):,} results")
    for request in k["requests"]:
        lines += _message(_request_line(request))
    lines += _message(f"emit       {sender} → {me}: this report")
    return "\n".join(lines)
