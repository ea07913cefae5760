"""The lexical layer of XML payloads: names, the error type, and the repairing scanner
that turns the unbalanced, half-escaped XML language models write into a balanced
document under one root (see :mod:`sporeflow.steps.xmlpayload`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sporeflow.config.errors import SporeError

__all__ = [
    "EXCERPT_CHARS", "NCNAME", "ROOT_TAG", "WS", "XmlPayloadError", "excerpt", "over_cap", "repair",
]

ROOT_TAG: Final = "sporeflow-payloads"
"""The root element a repaired reply is wrapped in."""

EXCERPT_CHARS: Final = 200
WS: Final = " \t\r\n"

# XML 1.0 (fifth edition) names.
_NAME_START: Final = (
    "A-Z_a-z\xc0-\xd6\xd8-\xf6\xf8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c\u200d"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_NAME_CHAR: Final = _NAME_START + r"\-.0-9\xb7\u0300-\u036f\u203f\u2040"
NCNAME: Final = f"[{_NAME_START}][{_NAME_CHAR}]*"
_QNAME: Final = f"[{_NAME_START}][{_NAME_CHAR}:]*"

_S: Final = "[ \t\r\n]"
_QUOTED: Final = "\"([^\"<]*)\"|'([^'<]*)'"
_UNQUOTED: Final = "([^ \t\r\n\"'<>`=]+)"
_ATTR_RE: Final = re.compile(f"({_QNAME}){_S}*={_S}*(?:{_QUOTED}|{_UNQUOTED})")
_ANY_ATTR: Final = f"{_QNAME}{_S}*={_S}*(?:\"[^\"<]*\"|'[^'<]*'|[^ \t\r\n\"'<>`=]+?)"
_START_RE: Final = re.compile(f"<({_QNAME})((?:{_S}+{_ANY_ATTR})*){_S}*(/?)>")
# Possessive quantifiers (``*+``): an end tag whose '>' never comes would otherwise be
# retried at every length its name could give back to ``[^<>]*``, quadratic in the
# name (52 s for 200,000 characters). Giving back never helps: both stop at '<'.
_END_RE: Final = re.compile(rf"</([{_NAME_START}][{_NAME_CHAR}:]*+)[^<>]*+>")
_ESCAPE_RE: Final = re.compile(
    r"&(?:#([0-9]{1,8});|#x([0-9a-fA-F]{1,8});|(?:lt|gt|amp|quot|apos);)?|[<>]"
)


class XmlPayloadError(SporeError, ValueError):
    """Text that cannot be turned into payloads, or that was refused as unsafe.

    ``message`` says why (for unrecoverable text, in the parser's words); ``excerpt`` is
    the offending part of the input, at most about 200 characters.
    """

    def __init__(self, message: str, excerpt: str = "") -> None:
        super().__init__(message, excerpt)
        self.message = message
        self.excerpt = excerpt

    def __str__(self) -> str:
        if not self.excerpt:
            return self.message
        return f"{self.message} (near {self.excerpt[:60]!r})"


def excerpt(text: str, start: int = 0) -> str:
    return text[start : start + EXCERPT_CHARS]


def over_cap(what: str, count: int, setting: str, cap: int, fix: str,
             near: str = "") -> XmlPayloadError:
    """The refusal of XML holding more ``what`` than a cap allows: the count, the cap's
    setting and value, and ``fix``, how to raise it."""
    return XmlPayloadError(f"the XML holds {count} {what}, over {setting}={cap}; {fix}", near)


_ORGANISM_FIX: Final = "raise limits.{0} in the organism file, or write fewer {1}"


# --- the repairing scanner ---------------------------------------------------------------

_TEXT: Final = 0
_CDATA: Final = 1
_START: Final = 2
_EMPTY: Final = 3
_END: Final = 4


@dataclass(slots=True)
class _Token:
    kind: int
    pos: int
    raw: str = ""
    name: str = ""
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class _Frame:
    index: int
    name: str
    unclosed: bool
    first_gap: str | None = None


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    scanner = _Scanner(text)
    text_start = pos = 0
    while (lt := text.find("<", pos)) >= 0:
        token, end = scanner.markup_at(lt)
        if end < 0:  # a '<' that starts nothing: literal text
            pos = lt + 1
            continue
        if lt > text_start:
            tokens.append(_Token(_TEXT, text_start, raw=text[text_start:lt]))
        if token is not None:
            tokens.append(token)
        pos = text_start = end
    if text_start < len(text):
        tokens.append(_Token(_TEXT, text_start, raw=text[text_start:]))
    return tokens


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.found: dict[str, int] = {}  # terminator -> its next known position, or -1

    def find(self, terminator: str, start: int) -> int:
        """``text.find(terminator, start)`` for increasing starts, linear overall."""
        known = self.found.get(terminator)
        if known is not None and (known < 0 or known >= start):
            return known
        self.found[terminator] = position = self.text.find(terminator, start)
        return position

    def markup_at(self, lt: int) -> tuple[_Token | None, int]:
        """The markup starting at ``lt`` and where it ends; end -1 if there is none."""
        text = self.text
        if text.startswith("<!--", lt):
            end = self.find("-->", lt + 4)
            return None, (end + 3 if end >= 0 else -1)
        if text.startswith("<![CDATA[", lt):
            end = self.find("]]>", lt + 9)
            if end < 0:
                return None, -1
            return _Token(_CDATA, lt, raw=text[lt : end + 3]), end + 3
        if text.startswith("<?", lt):
            end = self.find("?>", lt + 2)
            return None, (end + 2 if end >= 0 else -1)
        if text.startswith("</", lt):
            match = _END_RE.match(text, lt)
            if match is None:
                return None, -1
            return _Token(_END, lt, name=match.group(1)), match.end()
        match = _START_RE.match(text, lt)
        if match is None:
            return None, -1
        attrs: dict[str, str] = {}
        for attr in _ATTR_RE.finditer(match.group(2)):
            value = next(group for group in attr.groups()[1:] if group is not None)
            attrs.setdefault(attr.group(1), value)
        kind = _EMPTY if match.group(3) else _START
        return _Token(kind, lt, name=match.group(1), attrs=tuple(attrs.items())), match.end()


def _escape_text(text: str) -> str:
    return _ESCAPE_RE.sub(_escape_match, text)


def _escape_match(match: re.Match[str]) -> str:
    found = match.group()
    if found == "<":
        return "&lt;"
    if found == ">":
        return "&gt;"
    if found == "&":
        return "&amp;"
    decimal, hexadecimal = match.group(1), match.group(2)
    if decimal is None and hexadecimal is None:
        return found  # one of the five predefined entities
    code = int(decimal, 10) if decimal is not None else int(hexadecimal, 16)
    if code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD:
        return found
    if 0x10000 <= code <= 0x10FFFF:
        return found
    return "&amp;" + found[1:]


def _render_start(token: _Token) -> str:
    attrs = "".join(
        f' {name}="{_escape_text(value).replace(chr(34), "&quot;")}"'
        for name, value in token.attrs
    )
    return f"<{token.name}{attrs}{'/' if token.kind == _EMPTY else ''}>"


class _Repairer:
    """Rewrites sloppy text as balanced XML under one synthetic root."""

    def __init__(self, text: str, max_depth: int, max_elements: int,
                 max_attributes: int) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.matches, self.unclosed = self._match_tags(max_depth)
        self._check_counts(max_elements, max_attributes)
        self.out: list[str] = []
        self.frames: list[_Frame] = []
        self.pending: list[str] = []

    def _match_tags(self, max_depth: int) -> tuple[dict[int, int], set[int]]:
        """Pair end tags with start tags as a stack would; enforce the depth limit."""
        stack: list[int] = []
        matches: dict[int, int] = {}
        closed: set[int] = set()
        for index, token in enumerate(self.tokens):
            if token.kind in (_START, _EMPTY):
                if len(stack) + 1 > max_depth:
                    raise XmlPayloadError(
                        f"elements nested deeper than max_depth={max_depth}",
                        excerpt(self.text, token.pos),
                    )
                if token.kind == _START:
                    stack.append(index)
            elif token.kind == _END:
                for level in range(len(stack) - 1, -1, -1):
                    if self.tokens[stack[level]].name == token.name:
                        matches[index] = stack[level]
                        closed.add(stack[level])
                        del stack[level:]
                        break
        unclosed = {
            index
            for index, token in enumerate(self.tokens)
            if token.kind == _START and index not in closed
        }
        return matches, unclosed

    def _check_counts(self, max_elements: int, max_attributes: int) -> None:
        """Refuse more elements or attributes than allowed, before lxml builds them."""
        elements = attributes = 0
        first_over: dict[str, int] = {}
        for token in self.tokens:
            if token.kind == _START or token.kind == _EMPTY:
                elements += 1
                attributes += len(token.attrs)
                if elements > max_elements:
                    first_over.setdefault("max_xml_elements", token.pos)
                if attributes > max_attributes:
                    first_over.setdefault("max_xml_attributes", token.pos)
        for setting, count, cap, what in (
                ("max_xml_elements", elements, max_elements, "elements"),
                ("max_xml_attributes", attributes, max_attributes, "attributes")):
            if count > cap:
                raise over_cap(what, count, f"limits.{setting}", cap,
                               _ORGANISM_FIX.format(setting, what),
                               excerpt(self.text, first_over[setting]))

    def run(self) -> str:
        self.out.append(f"<{ROOT_TAG}>")
        for index, token in enumerate(self.tokens):
            if token.kind == _TEXT:
                self.pending.append(_escape_text(token.raw))
            elif token.kind == _CDATA:
                self.pending.append(token.raw)
            elif token.kind == _END:
                start = self.matches.get(index)
                if start is None:
                    continue  # stray end tag
                self._settle(opening=False)
                self._flush()
                while self.frames:
                    frame = self.frames.pop()
                    self.out.append(f"</{frame.name}>")
                    if frame.index == start:
                        break
            else:
                self._settle(opening=True)
                self._end_namesake(token.name)
                self._flush()
                self.out.append(_render_start(token))
                if token.kind == _START:
                    self.frames.append(_Frame(index, token.name, index in self.unclosed))
        self._settle(opening=False)
        self._flush()
        self.out.extend(f"</{frame.name}>" for frame in reversed(self.frames))
        self.out.append(f"</{ROOT_TAG}>")
        return "".join(self.out)

    def _flush(self) -> None:
        self.out.extend(self.pending)
        self.pending.clear()

    def _end_namesake(self, name: str) -> None:
        """A never-closed element ends before a start tag of its own name: what a model
        writes next to an unclosed ``<note>`` is the next ``<note>``, not its child (else
        the next payload would be swallowed, and go where the first one goes). Elements
        whose end tag comes may hold their namesakes; they are not closed early."""
        level = len(self.frames)
        while level and self.frames[level - 1].unclosed:
            level -= 1
            if self.frames[level].name == name:
                self._flush()  # the text before the tag stays inside, as its content
                while len(self.frames) > level:
                    self.out.append(f"</{self.frames.pop().name}>")
                return

    def _settle(self, *, opening: bool) -> None:
        """Close never-closed elements early where their content changes shape.

        Called before a start tag (``opening``), an end tag or the end of the text, with
        the text since the previous tag pending.
        """
        gap = "".join(self.pending)
        prose = gap.strip(WS) != ""
        while self.frames and self.frames[-1].unclosed:
            frame = self.frames[-1]
            if frame.first_gap is None:  # no child element yet
                if not opening:
                    return
                if not prose:
                    frame.first_gap = gap
                    return
                self._flush()  # the text is the element's content; the child is not
                gap, prose = "", False
            elif (opening and gap != frame.first_gap) or (not opening and prose):
                pass  # the element ends before the gap
            else:
                return
            self.out.append(f"</{frame.name}>")
            self.frames.pop()


def repair(source: str, max_depth: int, max_elements: int, max_attributes: int) -> str:
    """``source`` made a balanced document under one root; raise on too deep nesting and
    on more elements or attributes than allowed (counted as written, the synthetic root
    aside, a repeated attribute once)."""
    return _Repairer(source, max_depth, max_elements, max_attributes).run()
