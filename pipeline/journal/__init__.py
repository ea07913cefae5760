"""The durable journal: an SQLite file of unfinished spores and dead letters.

Its modules import SQLite. An organism reaches them through the two functions here, so
that one keeping no journal never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sporeflow.pipeline.core.requests import RequestBook
    from sporeflow.pipeline.journal.hook import JournalHook
    from sporeflow.pipeline.journal.store import Journal


def open_journal(journal: str | Path | Journal | None) -> Journal | None:
    """The journal an organism was given: a file's path opened, a ``Journal`` as it is."""
    if not isinstance(journal, str | Path):
        return journal
    from sporeflow.pipeline.journal.store import Journal

    return Journal(journal)


def journal_hook(journal: Journal, requests: RequestBook,
                 now: Callable[[], datetime]) -> JournalHook:
    """The ledger's hook writing what the journal keeps; the ingress's way to it too."""
    from sporeflow.pipeline.journal.hook import JournalHook

    return JournalHook(journal, requests, now)
