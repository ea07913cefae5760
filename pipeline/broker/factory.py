"""Pick the backend an organism's ``backend`` URL names (the memory default: none)."""

from __future__ import annotations

from sporeflow.config import BrokerError, redact_url
from sporeflow.pipeline.broker.backend import AMQP_EXTRA_HINT, Backend, resolve_backend_url

__all__ = ["open_backend"]


def open_backend(url: str) -> Backend | None:
    """The backend ``url`` names: None for ``memory`` (the embedded organism), else the
    RabbitMQ backend for ``amqp://`` and ``amqps://`` URLs (not yet connected)."""
    resolved = resolve_backend_url(url)
    if resolved == "memory":
        return None
    scheme = resolved.partition("://")[0].lower()
    if scheme not in ("amqp", "amqps"):
        raise BrokerError(f"backend {redact_url(resolved)!r} is not supported; write memory, "
                          f"amqp://user:password@host:5672/ or amqps://...")
    try:
        from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
    except ImportError as exc:
        raise BrokerError(
            f"backend {redact_url(resolved)!r} needs aio-pika, which is not installed "
            f"({exc.name}); install it with: {AMQP_EXTRA_HINT}") from None
    return AmqpBackend(resolved)
