"""Secrets: values that must never reach a log line, an error message or ``stats()``.

- :class:`Secret` wraps a key read from the environment; its ``repr`` and ``str``
  are ``'***'``, so printing a spec, an error or a traceback's locals shows no key.
- :func:`redact_url` hides the password of one URL, :func:`redact_text` of every
  URL in a text (an error message, a log line).
- :class:`SecretFilter` is a :class:`logging.Filter` for handlers: it rewrites each
  record's message (with its args) and exception text, hiding URL passwords and
  every value added to it. ``configure_logging`` installs one;
  :func:`mask_in_logs` adds values to the filters installed on a logger's handlers.
  An organism holds one as its masker too: its ``mask`` runs over every failure's
  text before it is stored, published or printed.
- :func:`secrets_of` lists what an organism must never show: the secrets its spec
  holds, the variables they came from, its backend URL's password.

It lives in ``config`` because the loader reads the keys: the runtime only carries
them, wrapped.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "ENV_NAME_ADVICE",
    "ENV_NAME_PATTERN",
    "ENV_REFERENCE",
    "MASK",
    "Secret",
    "SecretFilter",
    "mask_in_logs",
    "read_secret_env",
    "redact_text",
    "redact_url",
    "secrets_of",
    "url_password",
]

MASK = "***"
# What a *_env setting may name: a variable a shell can export ('.' and '-' cannot be).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_NAME_ADVICE = "is not an environment variable name; use letters, digits and '_'"
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""``${NAME}`` in a backend URL, read from the environment."""

# scheme://user:password@ : greedy, so a password with a stray '@' is masked whole.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s/]*@")
# Shorter values would mask ordinary words in every log line.
_MIN_MASKED_LENGTH = 4


class Secret:
    """A secret value that prints as ``***``; ``reveal()`` gives the bytes."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str | bytes, *, source: str = "") -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)
        self.source = source

    def reveal(self) -> bytes:
        """The secret itself: hand it to the code that needs it, never to a log."""
        return self._value

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"Secret({MASK}{where})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((Secret, self._value))  # equal secrets hash alike, whatever their source


def read_secret_env(name: str) -> Secret:
    """Read the environment variable ``name``; raise ``LookupError`` saying what to set."""
    value = os.environ.get(name)
    if value is None:
        raise LookupError(f"environment variable {name!r} is not set; export it with the key")
    if not value.strip():
        raise LookupError(f"environment variable {name!r} is empty; put the key in it")
    return Secret(value, source=f"${name}")


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (``amqp://u:***@host/``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # malformed (e.g. a bad IPv6 bracket): fall back to the text rule
        return redact_text(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def redact_text(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` URL in ``text``."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)


class SecretFilter(logging.Filter):
    """Mask URL passwords and the added secret values in every record it sees.

    Install it on a handler (not a logger) so that records propagated from child
    loggers are masked too. It never drops a record.
    """

    def __init__(self, secrets: Iterable[str | bytes | Secret] = ()) -> None:
        super().__init__()
        self._values: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str | bytes | Secret) -> None:
        """Mask these values from now on (keys, passwords); short values are ignored."""
        for secret in secrets:
            raw = secret.reveal() if isinstance(secret, Secret) else secret
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if len(text) < _MIN_MASKED_LENGTH:
                continue
            # The value as is, as it shows inside a repr(), and percent-encoded in a URL.
            forms = {text, repr(text)[1:-1], urllib.parse.quote(text, safe="")}
            # Longest first: a value that contains another is masked whole.
            self._values = sorted(set(self._values) | forms, key=len, reverse=True)

    def mask(self, text: str) -> str:
        """``text`` with every secret hidden."""
        text = redact_text(text)
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it; mask what we have
            message = str(record.msg)
        masked = self.mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        record.name = self.mask(record.name)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


def url_password(url: str) -> str | None:
    """The password of ``url`` (percent-decoded), or None when it has none."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


def mask_in_logs(logger: logging.Logger, *secrets: str | bytes | Secret | None) -> int:
    """Add ``secrets`` to each :class:`SecretFilter` on the handlers ``logger`` writes to.

    Walks up the hierarchy as records propagate. None values are skipped. Returns how
    many filters took them (0 when logging was configured without one).
    """
    values = [secret for secret in secrets if secret]
    filters: list[SecretFilter] = []
    current: logging.Logger | None = logger
    while current is not None:
        filters += [f for handler in current.handlers for f in handler.filters
                    if isinstance(f, SecretFilter)]
        current = current.parent if current.propagate else None
    for found in filters:
        found.add(*values)
    return len(filters)


def secrets_of(spec: Any, *backends: str | None,
               environ: Mapping[str, str] | None = None) -> list[str | Secret]:
    """What no output may show of an organism: every :class:`Secret` its spec holds
    (signing keys, in whatever field), the value of the variable each was read from,
    and the password of its backend URL and of ``backends`` (a ``--backend``), with
    each ``${NAME}`` read from the environment as the backend reads it."""
    env = os.environ if environ is None else environ
    found: list[str | Secret] = []
    for secret in _held(spec, depth=5):
        found.append(secret)
        name = secret.source[1:] if secret.source.startswith("$") else ""
        if env.get(name):  # the variable's own text (a base64 key decodes to other bytes)
            found.append(env[name])
    for url in (getattr(spec, "backend", None), *backends):
        if isinstance(url, str):
            password = url_password(
                ENV_REFERENCE.sub(lambda ref: env.get(ref.group(1), ref.group(0)), url))
            if password:
                found.append(password)
    return found


def _held(value: Any, *, depth: int) -> Iterator[Secret]:
    """The Secrets inside ``value``: its dataclass fields and containers, ``depth`` deep
    (a spec's keys sit in nested specs; agents' boot knowledge is not walked far)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        children: Iterable[Any] = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, Mapping):
        children = value.values()
    elif isinstance(value, tuple | list | frozenset | set):
        children = value
    else:
        return
    for child in children:
        if isinstance(child, Secret):
            yield child
        elif depth > 1:
            yield from _held(child, depth=depth - 1)
