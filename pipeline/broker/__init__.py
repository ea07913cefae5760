"""Backends (memory, RabbitMQ) and the bridge that runs an organism's chain over one."""
