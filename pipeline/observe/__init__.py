"""Observability: typed events, logs, tracing, Prometheus, the live view, summaries,
the wiring graph and stop conditions over stats."""
