"""The files of an organism's handler modules, and which of them changed since import."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

from sporeflow.config import OrganismSpec
from sporeflow.config.handlers import reimport

__all__ = ["HandlerSources", "handler_files"]


def handler_files(spec: OrganismSpec) -> dict[str, Path]:
    """The source files of ``spec``'s handler modules under its folder, by module name.

    Installed packages and sporeflow's own modules are left out: a reload never
    re-imports them.
    """
    base = spec.base_dir.resolve()
    found: dict[str, Path] = {}
    for agent in spec.agents.values():
        # A handlers: list's functions may live in several modules.
        handlers = ([route.handler for route in agent.payloads.routes]
                    if agent.payloads is not None else [agent.handler])
        for handler in handlers:
            name = getattr(handler, "__module__", None)
            if isinstance(name, str) and name not in found:
                file = _module_file(name, base)
                if file is not None:
                    found[name] = file
    return found


def _module_file(name: str, base: Path) -> Path | None:
    if name == "__main__" or name.partition(".")[0] == "sporeflow":
        return None
    module = sys.modules.get(name)
    # A module whose re-import failed was dropped from the modules: its file, beside the
    # organism, is still the one to watch and to re-import once it is mended.
    file = getattr(module, "__file__", None) if module is not None else _beside(name, base)
    if not isinstance(file, str):
        return None
    path = Path(file).resolve()
    if path.suffix != ".py" or not path.is_relative_to(base):
        return None
    # An organism folder may hold a virtualenv: what is installed there is not the user's.
    return None if {"site-packages", "dist-packages"} & set(path.parts) else path


def _beside(name: str, base: Path) -> str | None:
    """The file of module ``name`` under the organism's folder, found without importing."""
    where = base.joinpath(*name.split("."))
    for file in (where.with_suffix(".py"), where / "__init__.py"):
        if file.is_file():
            return str(file)
    return None


def _digest(file: Path) -> str | None:
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError:
        return None


class HandlerSources:
    """The handler modules seen so far, each with the digest of its file when imported."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Path, Path, str | None]] = {}  # name: file, folder, digest

    def track(self, spec: OrganismSpec) -> None:
        for name, file in handler_files(spec).items():
            self._known.setdefault(name, (file, spec.base_dir.resolve(), _digest(file)))

    def track_imported(self, before: Iterable[str], organism_file: Path) -> None:
        """Track the modules beside ``organism_file`` imported since ``before`` (a refused
        check may have imported a new handler module: an edit to it must be seen next time).
        """
        base, seen = organism_file.resolve().parent, set(before)
        for name in [n for n in sys.modules if n not in seen]:
            file = _module_file(name, base)
            if file is not None:
                self._known.setdefault(name, (file, base, _digest(file)))

    def reimport_edited(self) -> list[str]:
        """Re-import, in place, the tracked modules whose file changed; return their names.

        A module that fails to re-import is dropped from ``sys.modules``: the check that
        follows imports it again and reports the failure where the file names it.
        """
        done = []
        for name, (file, base, digest) in list(self._known.items()):
            current = _digest(file)
            if current is None or current == digest:
                continue
            self._known[name] = (file, base, current)
            if name not in sys.modules:
                continue  # the check imports it afresh
            try:
                reimport(name, base)
            except Exception:  # an import runs user code; the check reports it, located
                sys.modules.pop(name, None)
            else:
                done.append(name)
        return done


# -- applying ------------------------------------------------------------------------
