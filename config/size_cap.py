"""The cap on an organism file's size: a file or text over it is refused from its size,
before it is read or parsed.

The cap is ``DEFAULT_MAX_ORGANISM_BYTES`` (8 MiB); the environment variable
``SPOREFLOW_MAX_ORGANISM_BYTES`` sets another.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from sporeflow.config.errors import ConfigError, Problem
from sporeflow.config.units import parse_size

__all__ = [
    "DEFAULT_MAX_ORGANISM_BYTES",
    "MAX_ORGANISM_BYTES_ENV",
    "FileTooLarge",
    "capped_text",
    "read_at_most",
    "read_bounded",
    "read_capped",
]

DEFAULT_MAX_ORGANISM_BYTES = 8 << 20
"""The largest organism file or text read: some 150,000 agents of one line each."""
MAX_ORGANISM_BYTES_ENV = "SPOREFLOW_MAX_ORGANISM_BYTES"
"""The environment variable that sets another cap: bytes, or a size like 32MiB."""


def read_capped(file: Path) -> str:
    """The file's text, refused from its size before anything is read when over the cap,
    and read no further than the cap when its size is unknown (a pipe, a device)."""
    cap = _max_organism_bytes(str(file))

    def refuse(message: str) -> ConfigError:
        return ConfigError([Problem(str(file), 1, 1, "", message)])

    try:
        data = read_bounded(file, cap)
    except FileTooLarge as exc:
        raise refuse(_over_cap("the file", exc.size, cap)) from None
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"the file is not UTF-8: {exc.reason}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text() reads it


class FileTooLarge(ValueError):
    """A file over the cap of what is read of it; ``size`` is None when only reading told."""

    def __init__(self, size: int | None, cap: int) -> None:
        super().__init__(f"it {_amount(size)} the {cap}-byte cap")
        self.size = size
        self.cap = cap


def read_bounded(file: str | Path, cap: int) -> bytes:
    """The bytes of a file someone named, at most ``cap``: refused from its size before
    anything is read when over it, and read no further than it when the size is unknown
    (a pipe, a device: /dev/zero never ends). Raises :class:`FileTooLarge`, or OSError.

    Opened without blocking, so a named pipe nobody writes to reads as empty rather than
    hanging the command for good; reads then block as usual (a pipe being written).
    """
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as stream:
        os.set_blocking(fd, True)
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size > cap:
            raise FileTooLarge(info.st_size, cap)
        return read_at_most(stream, cap)


def read_at_most(stream: BinaryIO, cap: int) -> bytes:
    """What ``stream`` holds, read no further than ``cap`` bytes (:class:`FileTooLarge`
    past them): a file, a pipe, standard input."""
    data = stream.read(cap + 1)
    if len(data) > cap:
        raise FileTooLarge(None, cap)
    return data


def capped_text(text: str | bytes, name: str) -> str:
    """``text`` (of the organism named ``name``) as a string, refused over the cap or
    when its bytes are not UTF-8."""
    cap = _max_organism_bytes(name)
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > cap:
        raise ConfigError([Problem(name, 1, 1, "", _over_cap("the text", size, cap))])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([Problem(name, 1, 1, "", f"the text is not UTF-8: {exc.reason}")]
                              ) from None
    return text


def _max_organism_bytes(name: str) -> int:
    raw = os.environ.get(MAX_ORGANISM_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ORGANISM_BYTES
    try:
        return parse_size(int(raw) if raw.isdigit() else raw)
    except ValueError:
        raise ConfigError([Problem(
            name, 1, 1, "", f"{MAX_ORGANISM_BYTES_ENV}={raw!r} is not a size; write bytes "
                            f"or a size like 32MiB")]) from None


def _amount(size: int | None) -> str:
    return f"is {size} bytes, over" if size is not None else "is larger than"


def _over_cap(what: str, size: int | None, cap: int) -> str:
    return (f"{what} {_amount(size)} the {cap}-byte cap on organism files; split it, or set "
            f"{MAX_ORGANISM_BYTES_ENV} to a larger size (e.g. {MAX_ORGANISM_BYTES_ENV}=32MiB)")
