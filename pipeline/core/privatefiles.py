"""The files sporeflow keeps (the journal and its side files, state snapshots) are the
user's alone: a file it creates is 0600 and a folder it creates 0700, whatever the
process's umask. What exists already keeps its mode: the user chose it.

SQLite gives a database's ``-wal`` and ``-shm`` files the database file's mode, so a
journal made here has private side files too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FILE_MODE", "FOLDER_MODE", "make_folder", "open_private", "private_temporary"]

FILE_MODE = 0o600
FOLDER_MODE = 0o700
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each 0700; existing ones are left alone."""
    missing: list[Path] = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            os.mkdir(made, FOLDER_MODE)
        except FileExistsError:  # made meanwhile by someone else: theirs, as it is
            continue
        _set_mode(os.chmod, made, FOLDER_MODE)


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)``, the file made 0600 if this call creates it.

    A symbolic link in ``path``'s place is refused, never followed: anyone who may write
    in the folder could plant one to make sporeflow truncate or fill another file."""
    flags = (flags & ~(os.O_CREAT | os.O_EXCL)) | _NO_FOLLOW
    while True:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            try:
                return os.open(path, flags)
            except FileNotFoundError:  # removed meanwhile: make it
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP and os.path.islink(path):
                    raise OSError(errno.ELOOP, f"{path} is a symbolic link, which sporeflow "
                                               f"never writes through; remove it") from None
                raise
        _set_mode(getattr(os, "fchmod", None), fd, FILE_MODE)
        return fd


def private_temporary(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file in ``folder`` (made if missing), 0600: its fd and path (``mkstemp``)."""
    make_folder(folder)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    _set_mode(getattr(os, "fchmod", None), fd, FILE_MODE)
    return fd, name


def _set_mode(change: Callable[[Any, int], None] | None, target: Any, mode: int) -> None:
    """Set the mode asked for: the umask masked it, and may have taken the owner's bits
    too. A file system without modes (FAT, some network shares) refuses: it has none to
    leak, so that is no error; nor is Windows, without ``fchmod``."""
    if change is not None:
        with contextlib.suppress(OSError):
            change(target, mode)
