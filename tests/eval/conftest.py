"""Fixtures of the evaluation tests: the tiny world loaded, and 60 queries of A/B traffic
over it (one of each per test module)."""

import pytest

from visctr.eval import abtest as ab
from visctr.world import World


@pytest.fixture(scope="module")
def world(tiny_world_dir) -> World:
    return World.load(tiny_world_dir)


@pytest.fixture(scope="module")
def traffic(world) -> ab.Traffic:
    return ab.simulate_traffic(world, 60, seed=0)
