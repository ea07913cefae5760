"""``sporeflow.testing``: test your own organisms (see :mod:`sporeflow.pipeline.testing`)."""

from sporeflow.pipeline.testing import TestOrganism, VirtualClock

__all__ = ["TestOrganism", "VirtualClock"]
