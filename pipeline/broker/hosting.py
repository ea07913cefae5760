"""Which agents a process hosts on a broker (``--agents``, ``hosted=``), checked before
anything connects: each a name of the organism's, each with its signing key here (how
many deliveries of each one's queue it holds unacked: ``prefetch``)."""

from __future__ import annotations

from collections.abc import Iterable

from sporeflow.config.errors import ConfigError, Problem
from sporeflow.config.model import OrganismSpec
from sporeflow.config.reasons import did_you_mean

__all__ = ["hosted_names", "usage_error", "without_broker"]


_HOSTED = "--agents (hosted)"  # where a wrong choice of hosted agents is told


def usage_error(spec: OrganismSpec, message: str, *,
                where: str = "organism.backend") -> ConfigError:
    """A mistake in how the organism is run over a broker, told as a problem of it (at
    ``where``: the setting, or the option of the run, that is wrong)."""
    source = str(spec.source or f"<organism {spec.name}>")
    return ConfigError([Problem(source, 1, 1, where, message)])


def without_broker(spec: OrganismSpec, hosted: Iterable[str] | None) -> None:
    """Refuse what needs a broker in an organism that has none."""
    if spec.external:
        raise usage_error(spec, f"agents {sorted(spec.external)!r} are external: they are "
                                f"reached through a broker; set organism.backend or "
                                f"--backend to an amqp:// URL")
    if hosted is not None:
        raise usage_error(spec, "hosting some agents (--agents) needs a broker: set "
                                "organism.backend or --backend to an amqp:// URL")


def hosted_names(spec: OrganismSpec, hosted: Iterable[str] | None) -> frozenset[str]:
    """The agents this process hosts (None: all of them), each checked."""
    if isinstance(hosted, str):  # its letters would be the names
        raise usage_error(spec, f"hosted names the agents this process runs: a list, got "
                                f"the text {hosted!r:.60}; write hosted=[{hosted!r:.60}]",
                          where=_HOSTED)
    names = frozenset(spec.agents) if hosted is None else frozenset(hosted)
    unknown = sorted(names - set(spec.agents))
    if unknown:
        raise usage_error(spec, f"--agents names {unknown!r}, which organism {spec.name!r} "
                                f"does not have; its agents are {sorted(spec.agents)!r}"
                                f"{did_you_mean(unknown[0], spec.agents)}", where=_HOSTED)
    keyless = sorted(name for name in names if spec.signing is not None
                     and name in spec.signing.owners and spec.signing.signer(name) is None)
    if keyless:
        raise usage_error(spec, f"this process hosts {keyless!r}, which sign with keys of "
                                f"their own, but holds no private key for them: set the "
                                f"variables organism.signing.agents.<agent>.private_key_env "
                                f"name")
    return names

