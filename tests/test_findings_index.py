"""The findings search (workers/findings_index.py) on the real embedded Redis: slices of
the newest documents, the most query words first and the newest among equals, an early
stop once enough findings have every word, and the bound on what it scans."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.redis_server import EmbeddedRedis
from launcher.state import StateDir
from workers import findings_index as fi
from workers import keys

pytestmark = pytest.mark.timeout(120)
SWARM = "fi"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    server = EmbeddedRedis(StateDir(tmp_path / "state"), tmp_path / "redis.log")
    target = server.start()
    client = target.sync()
    try:
        yield client
    finally:
        client.close()
        server.stop()


def add(redis: Any, n: int, text: str) -> str:
    """A finding as FINISH leaves it: the JSON and its search document, pushed newest
    first."""
    finding = {"finding_id": f"finding_{n:016x}", "task_id": f"t{n}", "status": "done",
               "pool": "a", "task": f"task {n}", "result": text}
    redis.set(keys.finding(finding["finding_id"]), json.dumps(finding))
    redis.lpush(keys.finding_docs(SWARM), fi.document(finding))
    return finding["finding_id"]


def test_the_most_words_first_then_the_newest(redis: Any) -> None:
    old_both = add(redis, 1, "the pump and the valve")
    for n in range(2, 5000):
        add(redis, n, f"filler record {n}")
    new_one = add(redis, 5000, "only the pump")
    new_both = add(redis, 5001, "pump valve, again")
    found = fi.search_sync(redis, SWARM, "PUMP valve", limit=3)
    assert [h["finding_id"] for h in found] == [new_both, old_both, new_one]
    assert found[0]["excerpt"].startswith("task 5001 pump valve")
    assert fi.search_sync(redis, SWARM, "zebra") == []


def test_it_stops_early_and_never_scans_past_its_bound(redis: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(1, 6001):
        add(redis, n, "alpha" if n % 3 == 0 else "beta")
    calls: list[list[Any]] = []
    script = redis.register_script(fi.SEARCH)

    class Counting:
        def __call__(self, keys: list[str], args: list[Any]) -> Any:
            calls.append(args)
            return script(keys=keys, args=args)

    monkeypatch.setattr(redis, "register_script", lambda _text: Counting())
    found = fi.search_sync(redis, SWARM, "alpha", limit=5)
    assert len(found) == 5 and len(calls) == 1  # the first slice had five of every word
    calls.clear()
    monkeypatch.setattr(fi, "SCAN_LIMIT", 4000)
    assert fi.search_sync(redis, SWARM, "gamma", limit=5) == []
    assert [c[0] for c in calls] == [0, 2000]  # two slices, then the bound
