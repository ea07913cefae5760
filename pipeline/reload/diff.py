"""What a reload would change: the diff of two organism specs, and its report."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sporeflow.config import AgentSpec, OrganismSpec
from sporeflow.config.positions import read_yaml
from sporeflow.config.sources import SourceSpec

__all__ = ["LIVE_LIMITS", "ReloadReport", "SpecDiff", "broker_bound", "diff_specs", "refusal",
           "rekeyed", "restart_only", "stranded"]


# Fields that name or describe something without changing how it runs.
_AGENT_IGNORED = frozenset({"name", "description", "handler_ref", "handler", "payloads"})
_CHANNEL_IGNORED = frozenset({"name", "description"})
_ORGANISM_IGNORED = frozenset({"agents", "channels", "limits", "source", "base_dir",
                               "description"})
# The limits a running organism takes at once; the chain's stages hold the others.
LIVE_LIMITS = ("max_in_flight",)


# -- the diff ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecDiff:
    """What differs between two organism specs, by agent, by channel and in the limits.

    ``changed`` and ``channels_changed`` map a name to the fields that changed
    (``handler``, ``emit``, ``peers``, ``subscribe``, ``concurrency``, ``timeout``,
    ``retry``, ``schema``, ``boot``, ...); ``organism_changed`` lists the
    ``organism.*`` settings that changed.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unchanged: tuple[str, ...] = ()
    channels_added: tuple[str, ...] = ()
    channels_removed: tuple[str, ...] = ()
    channels_changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits_changed: tuple[str, ...] = ()
    organism_changed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "changed", MappingProxyType(dict(self.changed)))
        object.__setattr__(self, "channels_changed",
                           MappingProxyType(dict(self.channels_changed)))

    @property
    def empty(self) -> bool:
        """True when the two specs run the same way."""
        return not (self.added or self.removed or self.changed or self.channels_added
                    or self.channels_removed or self.channels_changed or self.limits_changed
                    or self.organism_changed)


def diff_specs(old: OrganismSpec, new: OrganismSpec) -> SpecDiff:
    """Compare ``old`` with ``new``, agent by agent and channel by channel.

    A handler counts as changed when its import path differs or when it is
    another function object, as after its module was re-imported.
    """
    changed = {name: fields_ for name in old.agents.keys() & new.agents.keys()
               if (fields_ := _agent_changes(old.agents[name], new.agents[name]))}
    channels = {name: fields_ for name in old.channels.keys() & new.channels.keys()
                if (fields_ := _changed_fields(old.channels[name], new.channels[name],
                                               _CHANNEL_IGNORED))}
    return SpecDiff(
        added=tuple(n for n in new.agents if n not in old.agents),
        removed=tuple(n for n in old.agents if n not in new.agents),
        changed={n: changed[n] for n in new.agents if n in changed},
        unchanged=tuple(n for n in new.agents if n in old.agents and n not in changed),
        channels_added=tuple(n for n in new.channels if n not in old.channels),
        channels_removed=tuple(n for n in old.channels if n not in new.channels),
        channels_changed={n: channels[n] for n in new.channels if n in channels},
        limits_changed=_changed_fields(old.limits, new.limits, frozenset()),
        organism_changed=_changed_fields(old, new, _ORGANISM_IGNORED),
    )


def _agent_changes(old: AgentSpec, new: AgentSpec) -> tuple[str, ...]:
    changes = _changed_fields(old, new, _AGENT_IGNORED)
    if (old.handler_ref != new.handler_ref or old.handler is not new.handler
            or old.payloads != new.payloads):  # typed handlers: any of them
        changes = ("handler", *changes)
    return changes


def _changed_fields(old: Any, new: Any, ignored: frozenset[str]) -> tuple[str, ...]:
    """The compared dataclass fields of ``old`` and ``new`` that differ."""
    return tuple(f.name for f in fields(old) if f.compare and f.name not in ignored
                 and getattr(old, f.name) != getattr(new, f.name))


# -- the report ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload did: applied (``ok``) or refused with located ``errors``."""

    ok: bool
    source: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    channels_added: tuple[str, ...] = ()
    channels_removed: tuple[str, ...] = ()
    channels_changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits_changed: tuple[str, ...] = ()
    reimported: tuple[str, ...] = ()
    # Changed in the file, but run by other processes of the organism over a broker:
    # never among ``changed`` here (this process applied the file; their lanes are idle).
    elsewhere: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    duration: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "changed", MappingProxyType(dict(self.changed)))
        object.__setattr__(self, "channels_changed",
                           MappingProxyType(dict(self.channels_changed)))

    @property
    def refused(self) -> bool:
        return not self.ok

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict (as in ``stats()["reload"]["last"]``); with
        ``elsewhere`` only when some are."""
        data: dict[str, Any] = {
            "ok": self.ok, "refused": not self.ok, "source": self.source,
            "added": list(self.added), "removed": list(self.removed),
            "changed": {name: list(what) for name, what in self.changed.items()},
            "channels": {"added": list(self.channels_added),
                         "removed": list(self.channels_removed),
                         "changed": {n: list(w) for n, w in self.channels_changed.items()}},
            "limits_changed": list(self.limits_changed),
            "reimported": list(self.reimported),
            "errors": list(self.errors), "warnings": list(self.warnings),
            "duration_s": round(self.duration, 6),
        }
        if self.elsewhere:  # only over a broker, in a process that hosts some agents
            data["elsewhere"] = list(self.elsewhere)
        return data

    def summary(self) -> str:
        """One line: what was applied, or how many problems refused the file."""
        if not self.ok:
            count = len(self.errors)
            return f"{self.source}: refused, {count} problem{'s' if count != 1 else ''}"
        parts = [f"{label} {', '.join(names)}" for label, names in (
            ("added", self.added), ("removed", self.removed),
            ("changed", [f"{n} ({', '.join(w)})" for n, w in self.changed.items()]),
            ("channels added", self.channels_added),
            ("channels removed", self.channels_removed),
            ("channels changed", [f"{n} ({', '.join(w)})"
                                  for n, w in self.channels_changed.items()]),
            ("limits changed", self.limits_changed),
            ("re-imported", self.reimported)) if names]
        done = "; ".join(parts) if parts else "no change"
        if self.elsewhere:
            done += f"; not hosted here: {', '.join(self.elsewhere)}"
        return f"{self.source}: applied: {done} ({self.duration * 1000:.1f} ms)"


# -- handler modules -----------------------------------------------------------------



def refusal(source: str, started: float, errors: list[str], *,
             warnings: list[str] | None = None,
             reimported: list[str] | None = None) -> ReloadReport:
    return ReloadReport(ok=False, source=source, errors=tuple(errors),
                        warnings=tuple(warnings or ()), reimported=tuple(reimported or ()),
                        duration=time.perf_counter() - started)


def broker_bound(diff: SpecDiff) -> str:
    """What in ``diff`` the broker's topology would have to follow ('' when nothing)."""
    if diff.added or diff.removed:
        return f"a reload cannot add or remove agents ({_named(diff.added, diff.removed)})"
    if "external" in diff.organism_changed:  # their broadcasts' bindings, their addresses
        return "a reload cannot add, remove or change external agents"
    moved = [name for name, what in diff.changed.items() if "subscribe" in what]
    if moved:
        return f"a reload cannot change subscriptions ({', '.join(moved)})"
    if diff.channels_added or diff.channels_removed:
        return (f"a reload cannot add or remove channels "
                f"({_named(diff.channels_added, diff.channels_removed)})")
    return ""


def _named(added: tuple[str, ...], removed: tuple[str, ...]) -> str:
    return "; ".join(f"{label} {', '.join(names)}"
                     for label, names in (("added", added), ("removed", removed)) if names)


def stranded(sources: Mapping[str, SourceSpec], diff: SpecDiff) -> str:
    """The running ``sources`` whose agent or channel ``diff`` takes away ('' when none):
    a source runs on as started until the next start, and would feed what is gone."""
    fed = [f"source {name!r} feeds agent {source.to!r}" for name, source in sources.items()
           if source.to in diff.removed]
    fed += [f"source {name!r} feeds channel {source.channel!r}"
            for name, source in sources.items() if source.channel in diff.channels_removed]
    if not fed:
        return ""
    return (f"a reload cannot take away what a running source feeds ({'; '.join(fed)}): "
            f"sources keep their targets until the next start; keep that target in the "
            f"file, or restart the organism to apply the new sources")


def rekeyed(diff: SpecDiff) -> str:
    """Agents whose ``key`` the diff changes ('' when none): their states are kept by the
    old key, so a reload cannot carry them over."""
    names = [name for name, what in diff.changed.items() if "key" in what]
    if not names:
        return ""
    return (f"a reload cannot change the key of {', '.join(map(repr, names))}: its states are "
            f"kept by the old key; restart the organism (save_state and load_state carry "
            f"the states, by their old keys)")


def restart_only(file: Path, diff: SpecDiff) -> list[str]:
    """Warnings, located in ``file``, for the changes that wait for the next start."""
    paths = [("organism", name) for name in diff.organism_changed]
    paths += [("limits", name) for name in diff.limits_changed if name not in LIVE_LIMITS]
    if not paths:
        return []
    try:
        located = read_yaml(file.read_text(encoding="utf-8"), str(file))
    except (OSError, ValueError):
        return [f"{file}: {'.'.join(p)}: changed; it takes effect at the next start"
                for p in paths]
    return [str(located.problem(p, "changed; the running organism keeps the old value until "
                                   "its next start", warning=True)) for p in paths]
