"""A few seeds of ``tests/random_reloads.py``: hot reloads of an embedded organism under
traffic (README, Hot reload), and the books they must balance after the stop. The
seeds are some of those that found a defect; how long reloads and the stop take is
not checked here (``python -m tests.random_reloads 0 300`` does)."""

from __future__ import annotations

import pytest

from .random_reloads import run_seed


@pytest.mark.parametrize("seed", [0, 2, 11, 12, 14, 37, 122, 152])
async def test_random_reloads_under_traffic_lose_nor_double_any_spore(seed: int) -> None:
    result = await run_seed(seed, timed=False)
    assert result.problems == [], f"seed {seed}: {result.problems}"
