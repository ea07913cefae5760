"""A RabbitMQ user per process: the least permissions a process of an organism needs.

RabbitMQ checks, per user and vhost, three regular expressions over the names of
exchanges and queues: configure (declare, delete), write (publish to an exchange,
bind a queue) and read (consume a queue, bind from an exchange); and, per topic
exchange, two over routing keys: write (the key of a message published) and read
(the key of a binding made). From the organism's :class:`Topology` and wiring, a
process hosting agents H as user U gets:

    configure    U's reply queues (``<exchange>.reply.<U>.*``), and the boot lock and
                 record of each agent of H with a ``boot`` (``<exchange>.booting:<a>``,
                 ``<exchange>.booted:<a>``, see ``boots``); nothing else: an
                 administrator declares the exchanges, queues and bindings once
                 (``sporeflow broker-declare``), so no process can delete them
    write        the exchange (publish), ``<exchange>.dead`` (dead letters), U's reply
                 queues (to bind them)
    read         the exchange (to bind to it), H's queues (consume), U's reply queues
    topic write  the direct keys of H and of the agents H may address (its ``peers``;
                 every agent of the organism when one of H has none), the broadcast keys
                 of the channels H may publish on, and reply keys (to answer requests)
    topic read   the key of U's reply queues only: U can bind nothing to ``#``, nor to
                 another agent's or user's keys

A client (no agents) gets the same without agent queues and dead letters: it
addresses every agent, broadcasts on the channels open to all, answers nothing.
No profile may write to the default exchange (``amq.default``), which would reach
any queue by its name; nor read ``<exchange>.dead``, a fanout exchange that topic
permissions do not guard. Every message carries the publisher's validated
``user_id`` (see ``amqp_backend``), so no user passes for another.
"""

from __future__ import annotations

import re
import shlex
import string
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from sporeflow.config import BrokerError, OrganismSpec
from sporeflow.config.secrets import ENV_NAME_ADVICE, ENV_NAME_PATTERN
from sporeflow.pipeline.broker.backend import REPLY_WORD, Topology
from sporeflow.steps import SporeType

__all__ = ["DEFAULT_PASSWORD_ENV", "Permissions", "permissions", "shell_script"]

_TOKEN = "[0-9a-f]+"  # the random part of a reply queue's name (amqp_backend)
_TYPES = tuple(sorted(t.value for t in SporeType))
DEFAULT_PASSWORD_ENV = "SPOREFLOW_BROKER_PASSWORD"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What ``set_permissions`` and ``set_topic_permissions`` grant one broker user."""

    user: str
    vhost: str
    exchange: str
    agents: tuple[str, ...]  # hosted; () for a client
    addresses: tuple[str, ...]  # agents it may send to
    channels: tuple[str, ...]  # channels it may broadcast on
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def permissions(spec: OrganismSpec, agents: Iterable[str] | None = None, *,
                user: str | None = None, vhost: str = "/") -> Permissions:
    """The permissions of a process of ``spec`` hosting ``agents`` (None: all of them;
    empty: a client), logging in as ``user`` (default: named after the organism and
    its agents)."""
    hosted = tuple(sorted(spec.agents if agents is None else set(agents)))
    unknown = [name for name in hosted if name not in spec.agents]
    if unknown:
        raise BrokerError(f"--agents names {unknown!r}, which organism {spec.name!r} does not "
                          f"have; its agents are {sorted(spec.agents)!r}")
    if user is None:
        user = (spec.name if agents is None else "-".join((spec.name, *hosted)) if hosted
                else f"{spec.name}-client")
    for what, text in (("user", user), ("vhost", vhost)):
        if not text or not text.isprintable():
            raise BrokerError(f"the broker {what} {text!r} must be printable and not empty")
    topology = Topology.of(spec)
    addresses, channels = _reach(spec, hosted)
    exchange = re.escape(topology.exchange)
    own = [re.escape(topology.queue(name)) for name in hosted]
    reply_queues = f"{re.escape(topology.reply_prefix(user))}{_TOKEN}"
    reply_key = topology.reply_key(topology.reply_prefix(user)) or ""
    boots = [re.escape(name) for agent in hosted if spec.agents[agent].boot is not None
             for name in (topology.boot_lock(agent), topology.boot_marker(agent))]
    sends = [_key(topology.direct_key, agent=addresses),
             *([_key(topology.broadcast_key, channel=channels)] if channels else [])]
    if hosted:  # a process answers requests in any other process's reply queue
        sends.append(rf"{re.escape(REPLY_WORD)}\.[^.]+\.{_TOKEN}")
    dead = [re.escape(topology.dead_letter_exchange)] if hosted else []
    return Permissions(
        user=user, vhost=vhost, exchange=topology.exchange, agents=hosted,
        addresses=addresses, channels=channels,
        configure=_any_of([reply_queues, *boots]),
        write=_any_of([exchange, *dead, reply_queues]),
        read=_any_of([exchange, *own, reply_queues]),
        topic_write=_any_of(sends),
        topic_read=_any_of([f"{re.escape(reply_key)}{_TOKEN}"]))


def _reach(spec: OrganismSpec, hosted: tuple[str, ...]) -> tuple[tuple[str, ...],
                                                                  tuple[str, ...]]:
    """Whom ``hosted`` may address, and where they may broadcast, as route allows it."""
    everyone = {*spec.agents, *spec.external}  # external agents are addressed alike
    if not hosted:  # an outside sender: any agent, the channels without a publish list
        return tuple(sorted(everyone)), tuple(sorted(
            name for name, channel in spec.channels.items() if channel.publish is None))
    addresses = set(hosted)  # boot spores, and outside senders in the process
    for name in hosted:
        peers = spec.agents[name].peers
        addresses |= everyone if peers is None else peers
    channels = {name for name, channel in spec.channels.items()
                if channel.publish is None or channel.publish & set(hosted)}
    return tuple(sorted(addresses)), tuple(sorted(channels))


def _key(template: str, **names: tuple[str, ...]) -> str:
    """A regex of the routing keys ``template`` makes for ``names`` and every spore type."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is None:
            continue
        values = _TYPES if field == "type" else names.get(field)
        if values is None:
            raise BrokerError(f"routing-key template {template!r} has {{{field}}}; only "
                              f"{{agent}}, {{channel}} and {{type}} are filled in")
        parts.append(f"(?:{'|'.join(re.escape(v) for v in values)})")
    return "".join(parts)


def _any_of(patterns: list[str]) -> str:
    """One anchored regex matching any of ``patterns`` whole (RabbitMQ's are unanchored)."""
    return f"^(?:{'|'.join(patterns)})$" if patterns else "^$"


def shell_script(perms: Permissions, *, organism: str,
                 password_env: str = DEFAULT_PASSWORD_ENV) -> str:
    """``perms`` as a commented shell script of ``rabbitmqctl`` commands. The password is
    read from the environment variable ``password_env`` when the script runs: it is never
    part of the script, nor of a command line (rabbitmqctl reads it on stdin)."""
    if not re.fullmatch(ENV_NAME_PATTERN, password_env):
        raise BrokerError(f"{password_env!r} {ENV_NAME_ADVICE}")
    for text in (organism, perms.exchange):
        if not text.isprintable():  # it goes into comments: no line break may end one
            raise BrokerError(f"{text!r} must be printable to go into a script")
    q, env, user, vhost = shlex.quote, password_env, perms.user, perms.vhost
    url = (f"'amqp://{quote(user, safe='')}:${{{env}}}@HOST:5672/{quote(vhost, safe='')}'")
    if perms.agents:
        hosting = f"hosting {', '.join(perms.agents)}"
        usage = [f"#   sporeflow run {q(organism)} --agents {','.join(perms.agents)} \\",
                 f"#     --backend {url}"]
    else:
        hosting = "hosting no agent: a client, which sends and awaits responses"
        usage = [f"#   Organism.from_file({organism!r}, hosted=[],",
                 f"#                      backend={url})"]
    queues = f"the queues of {', '.join(perms.agents)} and " if perms.agents else ""
    keys = [f"to {', '.join(perms.addresses)}"]
    keys += [f"on channels {', '.join(perms.channels)}"] if perms.channels else []
    keys += ["responses to any requester's reply queue"] if perms.agents else []
    lines = [
        "#!/bin/sh",
        *_comment(f"RabbitMQ user {user!r} for a process of {perms.exchange!r} {hosting}; "
                  f"vhost {vhost!r}. Made by: sporeflow broker-permissions."),
        "#",
        "# Once, before the first process starts, an administrator of the vhost declares the",
        "# exchanges, queues and bindings (this user may declare none of them):",
        f"#   sporeflow broker-declare {q(organism)} \\",
        f"#     --backend 'amqp://ADMIN:${{ADMIN_PASSWORD}}@HOST:5672/{quote(vhost, safe='')}'",
        "# Then the process logs in as this user (sporeflow reads ${NAME} in the URL from",
        "# the environment, so the password stays off the command line):",
        *usage,
        "set -eu",
        f': "${{{env}:?set {env} to the password of the broker user}}"',
        "",
        "# The user, unless it exists (it keeps its password then); rabbitmqctl reads the",
        "# password on stdin, so that it never shows in the process list.",
        f"if ! rabbitmqctl -s list_users | cut -f1 | grep -qxF -- {q(user)}; then",
        f'  printf \'%s\' "${env}" | rabbitmqctl add_user -- {q(user)}',
        "fi",
        "",
        "# configure: its reply queues (<exchange>.reply.<user>.<token>), and the boot lock",
        "# and record of its agents with a boot spore (<exchange>.booting:<agent>, and",
        "# <exchange>.booted:<agent>, which says the deployment sent it).",
        "# write: publish to the exchange"
        + (", dead-letter to <exchange>.dead" if perms.agents else "")
        + ", bind its reply queues.",
        f"# read: bind to the exchange, consume {queues}its reply queues.",
        "# Nothing on the default exchange, which would reach any queue by its name.",
        f"rabbitmqctl set_permissions -p {q(vhost)} -- {q(user)} {q(perms.configure)} "
        f"{q(perms.write)} {q(perms.read)}",
        "",
        *_comment(f"Routing keys it may publish with: {'; '.join(keys)}."),
        "# Keys it may bind: its reply queues' own; no '#', no other agent's or user's.",
        f"rabbitmqctl set_topic_permissions -p {q(vhost)} -- {q(user)} {q(perms.exchange)} "
        f"{q(perms.topic_write)} {q(perms.topic_read)}",
    ]
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=88, initial_indent="# ", subsequent_indent="# ",
                         break_long_words=False, break_on_hyphens=False)
