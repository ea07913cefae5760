"""The cap on an organism file's size: a file or text over it is refused from its size,
before it is read or parsed.

The cap is ``DEFAULT_MAX_ORGANISM_BYTES`` (8 MiB); the environment variable
``SPOREFLOW_MAX_ORGANISM_BYTES`` sets another.
"""

from __future__ import annotations

import os
from pathlib import Path

from sporeflow.config.errors import ConfigError, Problem
from sporeflow.config.units import parse_size

__all__ = [
    "DEFAULT_MAX_ORGANISM_BYTES",
    "MAX_ORGANISM_BYTES_ENV",
    "capped_text",
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
        with file.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > cap:
                raise refuse(_over_cap("the file", size, cap))
            data = stream.read(cap + 1)
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror}") from None
    if len(data) > cap:
        raise refuse(_over_cap("the file", None, cap))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"the file is not UTF-8: {exc.reason}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text() reads it


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


def _over_cap(what: str, size: int | None, cap: int) -> str:
    amount = f"is {size} bytes, over" if size is not None else "is larger than"
    return (f"{what} {amount} the {cap}-byte cap on organism files; split it, or set "
            f"{MAX_ORGANISM_BYTES_ENV} to a larger size (e.g. {MAX_ORGANISM_BYTES_ENV}=32MiB)")
