"""Which running process of an organism a command reaches.

Without a broker an organism runs in one process. Over a broker it may run in several
(``sporeflow run FILE --agents A,B`` each, replicas of one set of agents too), each
serving its own control socket (``service.address``). The command line then either acts
on every one of them (``stats``, ``reload``, ``trace``) or needs one, chosen here:

    Process                      one of them: its socket, pid and the agents it hosts
    running_processes(file)      every one that answers, each asked ``GET /v1/process``
    choose(processes, ...)       the one a command reaches: named (``--process AGENT``,
                                 a pid or a socket), else the only one hosting what the
                                 command is about, else any one when any will do; when
                                 the choice matters and nothing decides it, refused with
                                 the list (``AmbiguousProcess``)

    ControlError
     ├── NoSuchProcess       ``--process`` names none of them
     └── AmbiguousProcess    several answer, and which one matters
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sporeflow.pipeline.service.address import ControlError
from sporeflow.pipeline.service.client import ControlClient, running_sockets

__all__ = ["AmbiguousProcess", "NoSuchProcess", "Process", "choose", "describe",
           "listing", "running_processes"]


class NoSuchProcess(ControlError):
    """``--process`` names no running process of the organism."""


class AmbiguousProcess(ControlError):
    """Several processes of the organism answer, and the command needs one of them."""


@dataclass(frozen=True, slots=True)
class Process:
    """One running process of an organism, as its control endpoint describes it."""

    socket: Path
    pid: int | None
    hosted: tuple[str, ...]  # sorted; every agent of the organism when ``every_agent``
    every_agent: bool

    @property
    def label(self) -> str:
        """``process 4242 (agents ledger, pricer)``: what it is called in what is printed."""
        agents = ("every agent" if self.every_agent
                  else f"agents {', '.join(self.hosted)}" if self.hosted else "no agent")
        return f"process {self.pid if self.pid is not None else '?'} ({agents})"

    def hosts(self, agent: str) -> bool:
        return self.every_agent or agent in self.hosted

    def named_by(self, name: str) -> bool:
        """Whether ``--process name`` names it: its socket's path, its pid, or an agent
        it hosts."""
        if "/" in name or name.endswith(".sock"):
            return Path(name).expanduser().absolute() == self.socket.absolute()
        # ``hosted`` lists every agent of a process that hosts them all: ``hosts`` (true
        # of any name there, for what a command is about) would take any pid or typo.
        if name.isdigit() and name not in self.hosted:
            return self.pid == int(name)
        return name in self.hosted

    def to_dict(self) -> dict[str, Any]:
        return {"process": self.label, "pid": self.pid, "socket": str(self.socket),
                "hosted": list(self.hosted), "every_agent": self.every_agent}


async def describe(socket: Path) -> Process:
    """The process serving ``socket``: ``GET /v1/process``, or the stats of an endpoint
    of an older sporeflow, which has no such route."""
    async with ControlClient(socket) as client:
        status, answer = await client.get("process")
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("hosted"), list):
            return Process(socket, answer.get("pid"), tuple(sorted(answer["hosted"])),
                           bool(answer.get("every_agent")))
        if status == 404:
            status, answer = await client.get("stats")
            if status == 200 and isinstance(answer, dict):
                hosted = (answer.get("broker") or {}).get("hosted")
                return Process(socket, None, tuple(sorted(hosted or answer.get("agents", ()))),
                               hosted is None)
    message = answer.get("message") if isinstance(answer, dict) else answer
    raise ControlError(f"{socket}: the organism answered {status} when asked which agents "
                       f"it hosts: {message}")


async def running_processes(organism_file: Path, *,
                            folder: Path | None = None) -> list[Process]:
    """Every running process of ``organism_file`` that answers, the run of every agent
    first."""
    return [await describe(path) for path in running_sockets(organism_file, folder=folder)]


def listing(processes: Iterable[Process]) -> str:
    """One indented line per process: its label and its socket."""
    return "".join(f"\n  {process.label}: {process.socket}" for process in processes)


def choose(processes: Sequence[Process], name: str | None, *, about: Iterable[str] = (),
           any_will_do: bool, doing: str, organism: str) -> Process:
    """The process a command reaches, of the running ``processes`` (at least one).

    ``name`` (``--process``) chooses; else the only process, else the one hosting every
    agent the command is ``about``; else, when ``any_will_do`` (what it does goes
    through the broker, whichever process does it), the first. Replicas (several
    processes hosting the same agents) are alike only when ``any_will_do``. ``doing``
    says what the command does, for a refusal: ``tail follows one``.
    """
    assert processes, "choose among running processes"
    if name is not None:
        found = [process for process in processes if process.named_by(name)]
        if not found:
            raise NoSuchProcess(
                f"--process {name}: no running process of {organism} is that agent's host, "
                f"that pid or that socket; they are:{listing(processes)}")
        if len(found) == 1 or any_will_do:
            return found[0]
        raise AmbiguousProcess(
            f"--process {name}: {len(found)} running processes of {organism} match, and "
            f"{doing}; name one by its pid or socket:{listing(found)}")
    if len(processes) == 1:
        return processes[0]
    wanted = list(about)
    fitting = [process for process in processes
               if wanted and all(process.hosts(agent) for agent in wanted)]
    if len(fitting) == 1 or (fitting and any_will_do):
        return fitting[0]
    if any_will_do:
        return processes[0]
    raise AmbiguousProcess(
        f"{organism} runs in {len(processes)} processes, and {doing}: choose it with "
        f"--process AGENT (the process hosting that agent), PID or SOCKET:"
        f"{listing(fitting or processes)}")
