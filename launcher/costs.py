"""`swarm cost`: what the swarm spent, from the ledger's pre-aggregated counters.

One HGETALL answers it whatever the number of calls recorded (``--since`` reads one
small hash per minute instead). Money is integer nano-dollars until it is printed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from typing import Any

from launcher import columns
from workers import keys, ledger_format

METRICS = ledger_format.METRICS
DIMS = ("worker", "host", "pool", "model", "run", "task")


@dataclass
class Row:
    kind: str  # worker, pool, model, task, total
    key: str
    values: dict[str, int] = field(default_factory=dict)

    def get(self, metric: str) -> int:
        return self.values.get(metric, 0)

    def as_dict(self) -> dict[str, Any]:
        cost, ref = self.get("nano"), self.get("ref_nano")
        money = ("nano", "ref_nano", "nocache_nano", "lost_bound_nano", "batch_nano",
                 "batch_std_nano")
        return {
            "kind": self.kind, "key": self.key,
            **{m: self.get(m) for m in METRICS if m not in money},
            "cost_usd": cost / 1e9, "reference_usd": ref / 1e9,
            "savings_pct": self.savings_pct(),
            "cache_hit_ratio": self.hit_ratio(),
            "cache_saved_usd": self.cache_saved() / 1e9,
            "cache_misses": {name.removeprefix(ledger_format.MISS): n
                             for name, n in sorted(self.values.items())
                             if name.startswith(ledger_format.MISS)},
            "lost_bound_usd": self.get("lost_bound_nano") / 1e9,
            "batch_usd": self.get("batch_nano") / 1e9,
            "standard_usd": (cost - self.get("batch_nano")) / 1e9,
            "standard_calls": self.get("calls") - self.get("batch_calls"),
            "batch_saved_usd": self.batch_saved() / 1e9,
            "batch_saved_pct": self.batch_saved_pct(),
        }

    def savings_pct(self) -> float | None:
        """What the reference model would have cost more, in %; None when some calls
        have no price (their cost is unknown, so no saving can be said)."""
        cost, ref = self.get("nano"), self.get("ref_nano")
        if not ref or self.get("unpriced_calls"):
            return None
        return round((ref - cost) / ref * 100, 1)

    def hit_ratio(self) -> float | None:
        """Cache reads over every input-side token (rounded to 3 places)."""
        ratio = ledger_format.hit_ratio(self.get("input"), self.get("cache_write"),
                                        self.get("cache_read"))
        return None if ratio is None else round(ratio, 3)

    def cache_saved(self) -> int:
        """Nano-dollars caching saved: the same tokens uncached, minus what was paid
        (negative when writes cost more than reads gave back)."""
        return self.get("nocache_nano") - self.get("nano") if self.get("nocache_nano") else 0

    def batch_saved(self) -> int:
        """Nano-dollars the Message Batches API saved: its calls' tokens at standard
        prices, minus what they cost."""
        return self.get("batch_std_nano") - self.get("batch_nano")

    def batch_saved_pct(self) -> float | None:
        """The batch saving in % of the standard price (rounded to 1 place); None when no
        batch call was priced."""
        std = self.get("batch_std_nano")
        return round(self.batch_saved() / std * 100, 1) if std else None


Counters = dict[str, dict[str, dict[str, int]]]  # dim -> key -> metric -> n


def read_counters(client: Any, name: str, since: float | None = None) -> Counters:
    """{dim: {key: {metric: n}}} from the totals, or from the minute buckets of the last
    ``since`` seconds (whole minutes, so up to a minute more)."""
    if since is None:
        hashes = [client.hgetall(keys.ledger(name))]
    else:
        now = int(time.time() // 60)
        minutes = range(now - max(1, math.ceil(since / 60)) + 1, now + 1)
        pipe = client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(keys.ledger_minute(name, minute))
        hashes = pipe.execute()
    counters: dict[str, dict[str, dict[str, int]]] = {}
    for fields in hashes:
        for name_, value in fields.items():
            dim, key, metric = ledger_format.split(name_)
            slot = counters.setdefault(dim, {}).setdefault(key, {})
            slot[metric] = slot.get(metric, 0) + int(value)
    return counters


def rows_by(counters: dict[str, dict[str, dict[str, int]]], by: str) -> list[Row]:
    """Rows for ``by`` (worker, pool or model), then subtotals, then the total."""
    def rows(dim: str) -> list[Row]:
        return [Row(dim, key, vals) for key, vals in sorted(counters.get(dim, {}).items(),
                                                             key=lambda kv: _order(kv[0]))]
    result = rows(by)
    if by in ("worker", "host"):
        result += rows("pool") + rows("model")
    elif by == "pool":
        result += rows("model")
    total = counters.get("total", {}).get("*", {})
    result.append(Row("total", "total", total))
    return result


def rows_by_task(client: Any, name: str, limit: int, since: float | None) -> list[Row]:
    """The dearest tasks, from the per-task cost index and each task's own counters."""
    ids = client.zrevrange(keys.task_costs(name), 0, max(limit * 10, limit) - 1)
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(keys.task_meta(name, task_id), *_TASK_FIELDS)
    cutoff = time.time() - since if since else None
    found = []
    for task_id, values in zip(ids, pipe.execute()):
        got = dict(zip(_TASK_FIELDS, values))
        if cutoff is not None and float(got.pop("submitted") or 0) < cutoff:
            continue
        counts = {k: int(v or 0) for k, v in got.items() if k != "submitted"}
        # a task keeps its input-side total, its reads and its writes: the rest of the
        # input side is its uncached input, so the hit ratio is the same sum as everywhere
        counts["input"] = counts.pop("input_side") - counts["cache_read"] - counts["cache_write"]
        found.append(Row("task", task_id, counts))
    return found[:limit]


_TASK_FIELDS = ("calls", "tokens", "nano", "nocache_nano", "ref_nano", "input_side", "output",
                "cache_write", "cache_read", "submitted")


def _order(key: str) -> tuple[str, int]:
    """Worker ids sort by host, pool, then the slot's number (haiku-2 before haiku-10)."""
    head, _, tail = key.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (key, 0)


def short(key: str, kind: str) -> str:
    """A worker row names ``host/slot``: the swarm is the one being shown."""
    return key.split("/", 1)[1] if kind == "worker" and key.count("/") == 2 else key


def usd(nano: int) -> str:
    return f"${nano / 1e9:,.6f}" if nano < 10**9 else f"${nano / 1e9:,.2f}"


def render(rows: list[Row], reference: str, source: str, by: str) -> Any:
    """The cost table, laid out by ``launcher.columns`` (rich.Table takes ~140 ms for a
    swarm of 256 workers); rich still prints the bold and the notes' colours."""
    from rich.console import Group
    from rich.text import Text

    if by == "task":
        headers = ["TASK", "CALLS", "TOKENS", "CACHE HIT", "CACHE SAVED", "COST"]
        cells = [[row.key, str(row.get("calls")), f"{row.get('tokens'):,}", _hit(row),
                  _cache_saved(row), usd(row.get("nano"))] for row in rows]
    else:
        headers = [by.upper(), "CALLS", "INPUT", "OUTPUT", "CACHE WRITE", "CACHE READ",
                   "CACHE HIT", "CACHE SAVED", "COST",
                   f"ON {reference}" if reference else "REFERENCE", "SAVED", "LOST IN FLIGHT"]
        cells = [_cost_cells(row, by) for row in rows]
    sizes = columns.widths(headers, cells)
    right = set(range(1, len(headers)))
    lines = [Text(columns.line(headers, sizes, right), style="bold")]
    for row, cell in zip(rows, cells):
        lines.append(Text(columns.line(cell, sizes, right),
                          style="bold" if row.kind == "total" else ""))
    total = next((row for row in rows if row.kind == "total"), None)
    if total is not None and total.get("batch_calls"):
        lines.append(Text(batch_line(total)))
    notes = [Text(f"prices: {source}; reference model: {reference or 'none'}", style="dim")]
    if any(r.get("unpriced_calls") for r in rows if r.kind == "model"):
        unknown = ", ".join(r.key for r in rows if r.kind == "model" and r.get("unpriced_calls"))
        notes.append(Text(f"* no price known for {unknown}: tokens counted, cost not",
                          style="yellow"))
    return Group(*lines, *notes)


def batch_line(row: Row) -> str:
    """The batch calls' spend beside the standard calls', and what batching saved."""
    batch, calls = row.get("batch_nano"), row.get("batch_calls")
    pct = row.batch_saved_pct()
    saved = ("" if pct is None else
             f" (saved {usd(row.batch_saved())} against standard prices, {pct:.1f}%)")
    std_calls = row.get("calls") - calls
    return (f"batch: {usd(batch)} in {_count(calls, 'call')}{saved}; "
            f"standard: {usd(row.get('nano') - batch)} in {_count(std_calls, 'call')}")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _cost_cells(row: Row, by: str) -> list[str]:
    key = short(row.key, row.kind)
    label = key if row.kind in (by, "total") else f"{row.kind} {key}"
    ref, cost = row.get("ref_nano"), row.get("nano")
    pct = row.savings_pct()
    saved = "-" if pct is None else f"{pct:.1f}%"
    lost = (f"{row.get('lost_calls')} (≤ {usd(row.get('lost_bound_nano'))})"
            if row.get("lost_calls") else "-")
    unpriced = row.get("unpriced_calls")
    cost_text = ("unknown *" if unpriced and not cost else
                 usd(cost) + (" + unknown *" if unpriced else ""))
    return [label, f"{row.get('calls'):,}", f"{row.get('input'):,}", f"{row.get('output'):,}",
            f"{row.get('cache_write'):,}", f"{row.get('cache_read'):,}", _hit(row),
            _cache_saved(row), cost_text, usd(ref) if ref else "-", saved, lost]


def _hit(row: Row) -> str:
    ratio = row.hit_ratio()
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def _cache_saved(row: Row) -> str:
    saved = row.cache_saved()
    if not row.get("nocache_nano"):
        return "-"
    return usd(saved) if saved >= 0 else "-" + usd(-saved)


def to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    dicts = [row.as_dict() for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(dicts[0]) if dicts else ["kind"])
    writer.writeheader()
    writer.writerows(dicts)
    return buffer.getvalue()
