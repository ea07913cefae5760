"""What ``sporeflow send``'s arguments mean: ``send [ORGANISM] [KNOWLEDGE]``, where one
argument alone is the knowledge unless it can only be the organism file."""

from __future__ import annotations

from pathlib import Path

from sporeflow.pipeline.cli.util import DEFAULT_ORGANISM

__all__ = ["send_arguments"]


def send_arguments(first: str | None, second: str | None, *,
                   xml: bool) -> tuple[Path, str | None]:
    """``send [ORGANISM] [KNOWLEDGE]``: the organism file and the knowledge. One argument
    alone is the knowledge, as the other commands default to ./organism.yaml, unless it
    can only be the organism: --xml gives the knowledge, or it is a file or reads as one."""
    if first is None:
        return DEFAULT_ORGANISM, None
    if second is None and not xml and (first == "-" or first.startswith("@")):
        return DEFAULT_ORGANISM, first  # the knowledge's own file, or standard input
    if second is not None or xml or first.endswith((".yaml", ".yml")) or is_file(first):
        return Path(first), second
    return DEFAULT_ORGANISM, first


def is_file(text: str) -> bool:
    """Whether ``text`` names a file here."""
    try:
        return Path(text).is_file()
    except OSError:  # long JSON is too long a file name
        return False
