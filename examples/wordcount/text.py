"""What the demo counts in one Python file, as plain functions (no sporeflow here).

- *names*: identifiers in the code, outside strings and comments (keywords included:
  the classifier agent tells them apart later);
- *prose words*: words in comments and triple-quoted strings (docstrings), lowercased,
  stopwords aside. A word is a letter followed by at least two lowercase letters, so
  words in ALL CAPS are not words: the Unicode character names that fill the codec
  tables (``LATIN CAPITAL LETTER A``), constants and acronyms;
- *public definitions*: top-level ``def``, ``async def`` and ``class`` statements
  whose name does not start with ``_``: the code at column 0, strings aside. That is
  what ``ast`` finds in a module's body (``tests/test_demo.py`` checks it with ``ast``)
  at a small part of its cost: parsing the library with ``ast`` would take as long as
  the whole run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["STOPWORDS", "Pieces", "prose_words", "read_python"]

# One regular expression finds comments, triple-quoted strings and other strings, so
# that a '#' inside a string or a quote inside a comment is read as Python reads it.
# Unrolled loops: ~6x faster than `(?:[^"\\]|\\.)*` on the standard library. A string's
# prefix (r, b, f, rb...) is matched with it, so that it is not counted as a name.
_TRIPLE = "|".join((r'"""[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*"""',
                    r"'''[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''"))
_SINGLE = "|".join((r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"', r"'[^'\\\n]*(?:\\.[^'\\\n]*)*'"))
# Three groups (comment, docstring, other string): split() returns, in turn, the code
# before a match, then each group (None when it did not match).
_PIECES = re.compile(r"(?=[#\"'rRbBuUfF])(?:(\#[^\n]*)|(?:\b[rRbBuUfF]{1,2})?"
                     rf"(?:({_TRIPLE})|({_SINGLE})))", re.S)
_NAME = re.compile(r"\b[A-Za-z_]\w*", re.A)  # \b: not the 'x1F' of 0x1F
_WORD = re.compile(r"[A-Za-z][a-z]{2,}")
_DEFINITION = re.compile(r"^(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z]\w*)", re.M | re.A)

# English words too common to say anything about the library (a small list on purpose:
# the demo depends on nothing).
STOPWORDS = frozenset("""
    about above after again against all also although among and another any are
    around because been before being below between both but can cannot could did
    does doing done down during each either else even every for from further had
    has have having her here hers him his how however into its itself just less
    let like may might more most much must need needs never not now off once one
    only onto other others our out over own per rather same see she should since
    some such than that the their them then there these they this those though
    through thus too two under unless until upon use used uses using very via was
    way were what when where whether which while who whom whose why will with
    within without would yet you your
""".split())


class Pieces(NamedTuple):
    names: list[str]  # each name in the code, as often as it occurs
    words: list[str]  # each word of the prose as written: see prose_words()
    public: list[str]  # the public definitions


def read_python(text: str) -> Pieces:
    """Split one file's ``text`` into its names, its prose words and its public
    definitions."""
    parts = _PIECES.split(text)
    code = " ".join(parts[0::4])
    prose = "\n".join(filter(None, parts[1::4] + parts[2::4]))
    return Pieces(_NAME.findall(code), _WORD.findall(prose), _DEFINITION.findall(code))


def prose_words(written: Mapping[str, int]) -> Counter[str]:
    """Words as written, with their counts, lowercased and merged; stopwords aside. Done
    once on the totals (some 20,000 words), not on each file's."""
    words: Counter[str] = Counter()
    for word, count in written.items():
        word = word.lower()
        if word not in STOPWORDS:
            words[word] += count
    return words
