"""The ledger's counters: hash fields ``{dim}|{key}|{metric}`` in ``swarm:{name}:ledger``
and its minute buckets. The RECORD and LOSE scripts (workers/ledger_scripts.py) build
the same fields in Lua; everything in Python reads and writes them through here."""

from __future__ import annotations

DIMS = ("total", "worker", "host", "pool", "model", "run")  # total's one key is '*'
METRICS = ("calls", "input", "output", "cache_write", "cache_write_1h", "cache_read", "nano",
           "ref_nano", "nocache_nano", "unpriced_calls", "lost_calls", "lost_bound_nano",
           # calls sent through the Message Batches API: their count, their cost (part of
           # nano) and what the same tokens would have cost at standard prices
           "batch_calls", "batch_nano", "batch_std_nano")
MISS = "miss_"  # then the API's cache_miss_reason type: calls whose cache missed, and why


def hit_ratio(input_tokens: int, cache_write: int, cache_read: int) -> float | None:
    """Cache reads over every input-side token; None when there were none."""
    side = input_tokens + cache_write + cache_read
    return cache_read / side if side else None


def field(dim: str, key: str, metric: str) -> str:
    return f"{dim}|{key}|{metric}"


def split(name: str) -> tuple[str, str, str]:
    """(dim, key, metric) of a field; a worker key holds '/' but never '|'."""
    dim, key, metric = name.split("|", 2)
    return dim, key, metric
