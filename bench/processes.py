"""The processes a RabbitMQ benchmark measures: which one is the broker, and the CPU
time each has spent (from /proc)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from bench.amqp_sides import URL

__all__ = ["broker_pid", "cpu_seconds", "loadavg"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads, those gone included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as file:
        return " ".join(file.read().split()[:3])


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])  # LISTEN
    return inodes


def _listens(pid: int, inodes: set[str]) -> bool:
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(link[8:-1] in inodes for link in links if link.startswith("socket:["))


def broker_pid(url: str = URL) -> int:
    """The broker's ``beam.smp``: the one listening on the port of ``url`` (tests may run
    brokers of their own beside it), else the only one of node ``rabbit@...`` or booting
    ``rabbit``; refused when that is not one process."""
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if words and words[0].endswith(b"beam.smp"):
                found.append((int(entry.name), b" ".join(words).decode(errors="replace")))
    inodes = _listening_inodes(urlsplit(url).port or 5672)
    for test in (lambda pid, line: _listens(pid, inodes),
                 lambda pid, line: "rabbit@" in line,
                 lambda pid, line: "-s rabbit boot" in line, lambda pid, line: True):
        chosen = [pid for pid, line in found if test(pid, line)]
        if len(chosen) == 1:
            return chosen[0]
    raise SystemExit(f"cannot tell the broker's beam.smp among {[p for p, _ in found]}: "
                     f"give --broker-pid")
