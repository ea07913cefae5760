"""Names vulture (at 60% confidence) reports that are used from outside its view.

Run: ``vulture pipeline steps config tests/vulture_whitelist.py --min-confidence 60``
(`.ci/run` does). Each group says why its names stay.
"""
# ruff: noqa: B018, F821
# mypy: ignore-errors

_ = object()

# Public API, documented in README, called by users (and tests), not by the package.
_.add_agent, _.remove_agent, _.stop_when, _.broadcast, _.is_expired, _.from_xml
_.complete  # Gathered.complete, for handlers using ctx.gather

# The coroutine protocol of agents.sent.Sent, called by asyncio's tasks.
_.throw

# LedgerHook methods, called through the ledger's per-method hook lists.
_.dead_lettered, _.fanned_out

# Counters in statistics() / stats() dicts, read through as_dict() or by tests.
_.acked, _.nacked, _.consumed, _.published, _.dead_lettered, _.failed_publishes
acked, nacked, consumed, published, dead_lettered, failed_publishes
_.failures, _.replaced, _.runners, _.stopped
unchanged  # SpecDiff.unchanged, in the reload report
signing_key_env  # OrganismSpec field, set by the loader, shown by `check`
signing_key  # OrganismSpec field: the current shared key, for users of the Python API

# Framework callbacks: prometheus_client's collector, click's command registered by
# decorator, exception chaining.
_.collect, list_, _.__cause__
_.destroy  # Backend.destroy: tests delete their unique queues and exchanges with it
_.convert  # click.ParamType.convert: click calls it for a DURATION option
_.connection_made  # asyncio.Protocol: the loop calls it for a connection past a port's bound

# The top-level package's lazy names (PEP 562): Python calls these for `sporeflow.X`.
__getattr__, __dir__

# reprlib.Repr's limits, read by reprlib (core.deadletters: how a spore that is no JSON is shown).
_.maxlevel, _.maxstring, _.maxother, _.maxlong, _.maxdict, _.maxlist, _.maxtuple, _.maxset
