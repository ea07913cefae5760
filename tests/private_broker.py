"""A RabbitMQ node of a test module's own, for tests that stop, restart or kill a broker.

The shared broker on 127.0.0.1:5672 is never stopped by a test: other suites use it.
``private_broker`` starts one node per test module (``sf-<id>@localhost``) on free
ports, with its own data, logs, configuration and Erlang cookie under a temporary
folder and no plugins (the quickest start), and stops it after the module, whether its
tests passed or not. Without ``rabbitmq-server`` the test fails, saying so; it never
skips (CI installs RabbitMQ and runs as root).

    async def test_x(private_broker: PrivateBroker) -> None:
        ... private_broker.url ...
        private_broker.stop_app(); private_broker.start_app()   # the app, not the node
        private_broker.kill(); private_broker.start()            # kill -9 of the node
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PrivateBroker", "private_broker"]

_STARTUP = 90  # seconds: a backstop; a node starts in about 5 (a restart in 1 to 3)
_LIBEXEC = Path("/usr/lib/rabbitmq/bin")  # Debian's scripts, without the su wrapper


def _tool(name: str) -> str:
    """The RabbitMQ script ``name``: run directly, it keeps our HOME (and so our cookie)."""
    direct = _LIBEXEC / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: these tests start a RabbitMQ node of their "
                    f"own (apt-get install rabbitmq-server)")
    return found


def _free_port() -> int:
    """A port free now, below the kernel's range for outgoing connections: the node binds
    it seconds later (and again after a restart), and a client's connection meanwhile
    took a port of that range once (the node then failed: could_not_start_listener)."""
    lowest = ephemeral_ports()[0]
    for _ in range(1000):
        port = random.randrange(10_000, lowest)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # someone's: try another
            return port
    raise AssertionError(f"no free port between 10000 and {lowest} on 127.0.0.1")


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux's default if unread)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class PrivateBroker:
    """One RabbitMQ node under ``base``, listening on 127.0.0.1 only."""

    def __init__(self, base: Path) -> None:
        self.node = f"sf-{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.base = base
        self.pid_file = base / "pid"
        home = base / "home"
        home.mkdir()
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        (base / "enabled_plugins").write_text("[].\n")
        # Our own files only: the machine's rabbitmq.conf pins the shared broker's port.
        self.env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(_free_port()),
                    "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(base / "log"),
                    "RABBITMQ_PID_FILE": str(self.pid_file),
                    "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
                    "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins")}

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = _STARTUP) -> str:
        """``rabbitmqctl -n <node> ARGS``; its output, or a failure naming the log."""
        done = subprocess.run([_tool("rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} on {self.node} failed "
                                 f"({done.returncode}): {done.stderr[-1500:]} (logs in "
                                 f"{self.base / 'log'})")
        return done.stdout

    def start(self) -> None:
        """Start the node (again, after ``kill``: its durable queues and persistent
        messages come back) and return once it accepts connections."""
        self.pid_file.unlink(missing_ok=True)
        subprocess.run([_tool("rabbitmq-server"), "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=_STARTUP)
        self.ctl("wait", str(self.pid_file), "--timeout", str(_STARTUP))

    def stop_app(self) -> None:
        """Stop RabbitMQ in the node: every connection is closed, the node stays up."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", str(_STARTUP))

    def kill(self) -> None:
        """kill -9 of the node's Erlang VM, as a crash or the OOM killer would; returns once
        it is gone."""
        _kill(int(self.pid_file.read_text().strip()))

    def stop(self) -> None:
        """Stop the node, by its name; kill it if it does not answer."""
        try:
            self.ctl("stop", timeout=30)
        except (AssertionError, subprocess.TimeoutExpired):
            if self.pid_file.exists():
                _kill(int(self.pid_file.read_text().strip()))


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` (no child of ours) and wait until it has exited."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        os.kill(pid, signal.SIGKILL)
        ready, _, _ = select.select([handle], [], [], 30)  # readable once it exited
        if not ready:
            raise AssertionError(f"process {pid} is still there 30 s after SIGKILL")
    finally:
        os.close(handle)


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A RabbitMQ node of this test module's own, stopped after the module."""
    broker = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
