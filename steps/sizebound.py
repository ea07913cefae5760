"""The size bound of the validate stage: an upper bound of a spore's size as JSON,
walked once, O(1) for short strings and exact for long ones (no 6x cliff), refusing on
the way what JSON (or UTF-8) cannot write.

Every walk has a budget and stops past it: an object referred to many times is written
as many times, so a spore of a few objects may stand for any size of JSON, and a walk
costs no more than the limit. Short strings are bounded at 6x their length (their
escapes), longer ones measured exactly; only what the loose bound cannot decide is
written out and measured.
"""

from __future__ import annotations

from math import isfinite
from typing import Any

from sporeflow.config.errors import LimitExceeded, SporeError
from sporeflow.config.json_shape import JSON_SCALARS, long_integer, utf8_writable
from sporeflow.config.model import Limits
from sporeflow.config.words import shown
from sporeflow.steps.spore import Spore, spore_texts

__all__ = ["check_bytes", "json_size_bound", "spore_weight"]

_SCALARS = JSON_SCALARS
# A cheap upper bound on a short string's JSON size: it may grow 6x when escaped. A
# longer one is measured exactly (_string_bytes): a 6x bound would send a 200 KB text
# to the costly exact measure of the whole spore at every check.
_STRING_GROWTH = 6
_SHORT = 64
_EXACT = -1  # as _bound's `short`: every string measured exactly
_ENVELOPE_BYTES = 512
# How far past the limit an exact-strings bound may go and still be written out to be
# measured: writing costs its size in memory, and a bound is never below the JSON.
_WRITTEN = 4
_BIG_INT = 10**21  # an int inside (-_BIG_INT, _BIG_INT) is at most 22 characters as JSON
_ESCAPED = bytes(range(0x20)) + b'"\\'
_UNESCAPED = bytes(b for b in range(256) if b not in _ESCAPED)
_SHORT_ESCAPES = b'"\\\b\f\n\r\t'


def json_size_bound(spore: Spore, max_depth: int, budget: int) -> int | None:
    """An upper bound of ``spore``'s size as JSON (its strings measured exactly), walked
    no further than ``budget``: ``budget + 1`` past it; None for a spore that is no JSON
    (what a dead letter may hold: its ids and names too may be of any length)."""
    names = sum(len(value) for value in spore_texts(spore) if isinstance(value, str))
    try:
        return names + _measure(spore, max_depth, _EXACT, budget)
    except _Over:
        return budget + 1
    except Exception:  # noqa: BLE001  # refused, or an object whose repr raised: no JSON
        return None


def spore_weight(spore: Spore, limits: Limits, max_bytes: int) -> int:
    """What ``spore`` weighs in memory as its JSON size, walked no further than
    ``max_bytes``: one that is no JSON (or too deep to walk) weighs what a spore may (the
    dead letters' and the outbox's bound in bytes)."""
    size = json_size_bound(spore, limits.max_depth, max_bytes)
    return min(limits.max_spore_bytes, max_bytes) if size is None else size


def check_bytes(spore: Spore, limits: Limits) -> None:
    """Raise :class:`LimitExceeded` past ``limits.max_spore_bytes`` (or
    ``max_depth``), :class:`SporeError` for what is no JSON (the place left to the
    caller to name)."""
    # Every walk has a budget and stops past it: an object referred to many times is
    # written as many times, so a spore of a few objects may stand for any size of JSON.
    limit, depth = limits.max_spore_bytes, limits.max_depth
    try:
        if _measure(spore, depth, _SHORT, limit) <= limit:
            return
    except _Over:
        pass
    try:  # loose for short strings: bound them exactly, as far as is worth writing out
        if _measure(spore, depth, _EXACT, _WRITTEN * limit) <= limit:
            return
    except _Over:  # only numbers leave the bound loose now: is the least size over too?
        try:
            _least_size(spore, depth, limit)
        except _Over:
            raise LimitExceeded(
                f"spore {spore.id} is more than {limit} bytes as JSON, over "
                f"limits.max_spore_bytes={limit} (more than {_human(limit)})") from None
    try:  # a bound still (numbers, the envelope): measure
        size = len(spore.to_json().encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError) as exc:  # what a walk cut short did not reach
        raise SporeError(f"knowledge is not JSON: {exc}") from None
    if size > limit:
        raise LimitExceeded(
            f"spore {spore.id} is {size} bytes as JSON, over "
            f"limits.max_spore_bytes={limit} ({_over(size, limit)})")


class _Over(Exception):
    """A walk passed its budget."""


def _measure(spore: Spore, max_depth: int, short: int, budget: int) -> int:
    """An upper bound of ``spore``'s JSON size; :class:`_Over` once past ``budget``."""
    size = _ENVELOPE_BYTES + _bound(spore.knowledge, max_depth, 1, short,
                                    budget - _ENVELOPE_BYTES)
    if spore.metadata:
        size += _bound(spore.metadata, max_depth, 1, short, budget - size)
    if spore.knowledge_references or spore.data_references:  # the envelope bounds the rest
        size += (_bound(spore.knowledge_references, max_depth, 1, short, budget - size)
                 + _bound(spore.data_references, max_depth, 1, short, budget - size))
    if size > budget:
        raise _Over
    return size


def _least_size(spore: Spore, max_depth: int, budget: int) -> int:
    """A lower bound of ``spore``'s JSON size; :class:`_Over` once past ``budget``."""
    size = _least(spore.knowledge, max_depth, 1, budget)
    size += _least(spore.metadata, max_depth, 1, budget - size)
    size += _least(spore.knowledge_references, max_depth, 1, budget - size)
    return size + _least(spore.data_references, max_depth, 1, budget - size)


def _least(value: Any, max_depth: int, depth: int, budget: int) -> int:
    kind = type(value)
    if kind is dict or kind is list or kind is tuple:
        if depth > max_depth:  # depth counts containers, as _bound's does
            raise LimitExceeded(f"knowledge is nested deeper than limits.max_depth={max_depth}")
        total = 2
        for item in (value.values() if kind is dict else value):
            total += _least(item, max_depth, depth + 1, budget - total) + 1
            if total > budget:
                raise _Over
        if kind is dict:
            total += sum(len(key) + 3 for key in value if type(key) is str)
            if total > budget:
                raise _Over
        return total
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, int) and not isinstance(value, bool) and not (
            -_BIG_INT < value < _BIG_INT):
        return _digits(value)
    return 1


def _human(size: int, digits: int = 1) -> str:
    """``size`` bytes for people: ``1 MiB``, ``2.1 MiB``, ``512 KiB``, ``900 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.{digits}f}".rstrip("0").removesuffix(".") + f" {unit}"
    return f"{size} B"


def _over(size: int, limit: int) -> str:
    """``size > limit`` for people, with the digits that tell them apart (not ``1 MiB >
    1 MiB``)."""
    for digits in (1, 2, 3):
        said = _human(size, digits), _human(limit, digits)
        if said[0] != said[1]:
            break
    else:
        said = f"{size} B", f"{limit} B"
    return f"{said[0]} > {said[1]}"


def _string_bytes(text: str) -> int:
    """The exact UTF-8 size of ``text`` as a JSON string, quotes included, as
    ``Spore.to_json`` writes it (``ensure_ascii=False``): two C passes over its bytes
    (escaping in Python, or ``str.isprintable``, cost several times more). Text UTF-8
    cannot write (a lone surrogate) is refused."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise _unwritable() from None
    escaped = data.translate(None, _UNESCAPED)  # what JSON escapes: " \ and controls
    if not escaped:
        return len(data) + 2
    # \" \\ \b \f \n \r \t take one byte more; the other controls \u00XX, five more.
    long = len(escaped.translate(None, _SHORT_ESCAPES))
    return len(data) + 2 + len(escaped) + 4 * long


def _bound(value: Any, max_depth: int, depth: int, short: int, budget: int) -> int:
    """Return an upper bound of ``value``'s JSON size (``value`` is ``depth`` deep);
    refuse what JSON cannot hold. Strings of at most ``short`` characters are bounded at
    6x, longer ones exactly. :class:`_Over` once past ``budget``: in a list after each
    item, as one object referred to many times costs nothing to hold. Depth counts
    containers. Scalars are measured in the loops themselves: a call per item would be
    most of a walk's cost, and most items are scalars."""
    kind = type(value)
    if kind is dict:
        if depth > max_depth:
            raise LimitExceeded(f"knowledge is nested deeper than limits.max_depth={max_depth}")
        total = 2
        for key, item in value.items():
            if key.__class__ is not str:
                raise SporeError(f"knowledge keys must be strings, got {shown(key, 40)}")
            size = len(key)  # with its quotes, a colon and a comma
            if size > short:
                total += _string_bytes(key) + 2
            elif key.isascii() or key.isprintable() or utf8_writable(key):
                total += size * _STRING_GROWTH + 4
            else:
                raise _unwritable()
            kind = item.__class__
            if kind is str:
                size = len(item)
                if size > short:
                    total += _string_bytes(item)
                elif item.isascii() or item.isprintable() or utf8_writable(item):
                    total += size * _STRING_GROWTH + 2
                else:
                    raise _unwritable()
            elif kind is int:
                total += 24 if -_BIG_INT < item < _BIG_INT else _digits(item)
            elif kind is bool or item is None or (kind is float and isfinite(item)):
                total += 32
            else:
                total += _bound(item, max_depth, depth + 1, short, budget - total)
                if total > budget:
                    raise _Over
        if total > budget:
            raise _Over
        return total
    if kind is list or kind is tuple:
        if depth > max_depth:
            raise LimitExceeded(f"knowledge is nested deeper than limits.max_depth={max_depth}")
        total = 2
        for item in value:
            kind = item.__class__
            if kind is str:
                size = len(item)
                if size > short:
                    total += _string_bytes(item) + 1
                elif item.isascii() or item.isprintable() or utf8_writable(item):
                    total += size * _STRING_GROWTH + 3
                else:
                    raise _unwritable()
            elif kind is int:
                total += 25 if -_BIG_INT < item < _BIG_INT else _digits(item) + 1
            elif kind is bool or item is None or (kind is float and isfinite(item)):
                total += 33
            else:
                total += _bound(item, max_depth, depth + 1, short, budget - total) + 1
            if total > budget:
                raise _Over
        return total
    return _odd_scalar(value)


# A short string is tested for text UTF-8 cannot write inline: isascii(), then
# isprintable() (a lone surrogate is not printable), both without a Python call; only
# text with a control character goes on to the encoding test (utf8_writable).


def _digits(number: int) -> int:
    """How long ``number`` is in decimal; :class:`SporeError` past what Python writes
    (``_check_size`` finds it again with ``first_not_json`` to name it)."""
    try:
        return len(str(int(number)))
    except ValueError:
        raise SporeError(f"knowledge holds {long_integer()}") from None


def _unwritable() -> SporeError:
    """Text UTF-8 cannot write, found by a walk that knows no place: ``_check_size``
    finds it again with ``first_not_json`` to name it."""
    return SporeError("knowledge holds text with a lone surrogate, which UTF-8 cannot write")


def _odd_scalar(value: Any) -> int:
    """An upper bound of the JSON size of a value that is no container: a scalar, one of
    a subclass, or what JSON cannot hold (refused)."""
    if type(value) is float:
        if not isfinite(value):
            raise SporeError(f"knowledge holds {value!r}, which JSON cannot represent")
        return 32
    if isinstance(value, str):  # a subclass's too: written as a string, measured as one
        return _string_bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 24 if -_BIG_INT < value < _BIG_INT else _digits(value)
    if isinstance(value, _SCALARS):
        return 24
    raise SporeError(f"knowledge holds a {type(value).__name__} ({shown(value, 40)}), which is "
                     f"not JSON")
