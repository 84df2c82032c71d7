"""Fixtures that run real swarms: a real supervisor process, real forked workers and
the real embedded Redis, all under a temporary folder and all ended by the test.

Only fixtures live here; what the tests (and the benchmarks) build swarms with is in
``tests.harness``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.fake_api import FakeAPI
from tests.harness.swarm import SwarmRun


@pytest.fixture
def make_swarm(tmp_path: Path) -> Iterator[Callable[..., SwarmRun]]:
    """``make_swarm(spec, name=None, env=None)``: a :class:`SwarmRun` in ``tmp_path``
    (not started), stopped when the test ends."""
    made: list[SwarmRun] = []

    def make(spec: str, name: str | None = None, env: dict[str, str] | None = None) -> SwarmRun:
        swarm = SwarmRun(tmp_path, spec, name, env)
        made.append(swarm)
        return swarm

    yield make
    for swarm in made:
        swarm.stop()


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    """A fake Messages API on loopback, for the real SDK in the workers."""
    server = FakeAPI().start()
    yield server
    server.stop()
