"""The test suite's own RabbitMQ nodes (tests/private_broker.py)."""

from __future__ import annotations

from .private_broker import _free_port, ephemeral_ports


def test_a_private_nodes_port_is_below_the_range_clients_connect_from() -> None:
    # Found in CI: a port picked by binding port 0 comes from the range the kernel gives
    # outgoing connections their ports from; a client's connection took it in the
    # seconds the node needed to boot, and the node failed (could_not_start_listener).
    lowest, _ = ephemeral_ports()
    ports = [_free_port() for _ in range(50)]
    assert all(10_000 <= port < lowest for port in ports), ports
