"""Where a running organism's control socket lives, and the claim that makes it the only
run of its file.

    ${XDG_RUNTIME_DIR}/sporeflow/<name>-<hash>.sock     (else /tmp/sporeflow-<uid>/...)
                                 <name>-<hash>.lock     held (flock) while it runs
                                 <name>-<hash>.token    the HTTP token, when generated

``<hash>`` is 12 hex digits of the SHA-256 of the organism file's absolute path: the same
file gives the same socket from any working directory, and the command line finds it
without loading the file. A process that hosts only some agents (``--agents``) adds 8
hex digits of their names, so the processes of one organism on a broker do not collide;
a replica of a process on a broker (the same agents again) adds ``-r<pid>``.

The folder is 0700 and must be the user's own: in a shared ``/tmp`` another user could
make it first and put a socket of theirs in our place, so one that is not private is
refused. A second run of one file in one process (no broker) is refused while the first
holds the lock: it would be a second organism doing the same work; the lock goes with
its process, so a socket a killed process left behind is stale and replaced.

    ControlError
     ├── AlreadyRunning   a run of this file holds the claim
     └── NotRunning       no run of this file answers
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sporeflow.config import SporeflowError
from sporeflow.pipeline.core.privatefiles import make_folder, open_private

__all__ = [
    "AlreadyRunning",
    "Claim",
    "ControlAddress",
    "ControlError",
    "NotRunning",
    "check_private",
    "claim",
    "runtime_folder",
    "sockets_of",
]

_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL (Linux)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ControlError(SporeflowError):
    """The control endpoint of a running organism could not be served or reached."""


class AlreadyRunning(ControlError):
    """A run of this organism file is going on already."""


class NotRunning(ControlError):
    """No run of this organism file answers on its control socket."""


def runtime_folder() -> Path:
    """``$XDG_RUNTIME_DIR/sporeflow``, else ``/tmp/sporeflow-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_absolute():
        return Path(base) / "sporeflow"
    return Path("/tmp") / f"sporeflow-{os.getuid()}"  # checked private by claim


def _file_key(organism_file: Path) -> str:
    return hashlib.sha256(str(organism_file.resolve()).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ControlAddress:
    """The socket, lock and token files of one organism file's runs."""

    folder: Path
    stem: str  # <name>-<hash>[-<agents hash>]

    @classmethod
    def of(cls, organism_file: Path, name: str, hosted: Iterable[str] | None = None,
           *, folder: Path | None = None) -> ControlAddress:
        stem = f"{_NAME_CHARS.sub('_', name)[:40]}-{_file_key(organism_file)}"
        if hosted is not None:
            stem += "-" + hashlib.sha256(",".join(sorted(hosted)).encode()).hexdigest()[:8]
        return cls(folder or runtime_folder(), stem)

    def replica(self, pid: int) -> ControlAddress:
        """The address of a replica (over a broker, more processes may host one set)."""
        return ControlAddress(self.folder, f"{self.stem}-r{pid}")

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.stem}.sock"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.stem}.lock"

    @property
    def token(self) -> Path:
        return self.folder / f"{self.stem}.token"


def sockets_of(organism_file: Path, *, folder: Path | None = None) -> list[Path]:
    """The control sockets of ``organism_file``'s runs that exist: the one of a run of
    every agent first, then those of runs of some agents (``--agents``)."""
    folder = folder or runtime_folder()
    key = _file_key(organism_file)
    try:
        found = [path for path in folder.iterdir() if path.suffix == ".sock"
                 and re.search(rf"-{key}(-[0-9a-f]{{8}})?(-r[0-9]+)?$", path.stem)]
    except OSError:  # no folder: nothing ever ran here
        return []
    return sorted(found, key=lambda path: (not path.stem.endswith(key), path.name))


def check_private(folder: Path) -> None:
    """Make ``folder`` (0700) if missing; refuse one that is not the user's alone."""
    make_folder(folder)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{folder}: the control socket's folder is not a folder (a link "
                           f"or a file); remove it, or set XDG_RUNTIME_DIR to a private folder")
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ControlError(
            f"{folder}: the control socket's folder must be yours alone, it is owned by uid "
            f"{info.st_uid} with mode {stat.S_IMODE(info.st_mode):o}; remove it (it is made "
            f"0700 again) or set XDG_RUNTIME_DIR to a private folder")


@dataclass(slots=True)
class Claim:
    """This process's hold on an organism file's control address; ``release()`` ends it."""

    address: ControlAddress
    fd: int | None

    def release(self) -> None:
        """Remove the socket and let go of the lock (the lock file stays: removing it
        could let two processes hold two locks of one name)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.address.socket.unlink()
        os.close(self.fd)
        self.fd = None


def claim(address: ControlAddress, organism_file: Path, *, replica: bool = False) -> Claim:
    """Hold ``address`` for this process: raise :class:`AlreadyRunning` (naming the pid)
    while another run holds it, or with ``replica`` (a run on a broker) take a replica's
    address then; remove the socket a dead run left."""
    check_private(address.folder)
    if len(os.fsencode(address.socket)) > _MAX_SOCKET_PATH:
        raise ControlError(
            f"{address.socket}: the control socket's path is {len(os.fsencode(address.socket))}"
            f" bytes, more than a Unix socket takes ({_MAX_SOCKET_PATH}); set XDG_RUNTIME_DIR "
            f"to a shorter folder, or pass --no-control")
    fd = open_private(address.lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if replica:
            return claim(address.replica(os.getpid()), organism_file)
        raise AlreadyRunning(
            f"{organism_file}: this organism is running already (pid {pid}, control socket "
            f"{address.socket}); reach it with `sporeflow send/tail/stats/reload/dlq "
            f"{organism_file}`, or stop it first") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    with contextlib.suppress(FileNotFoundError):  # left by a run that was killed
        address.socket.unlink()
    return Claim(address, fd)
