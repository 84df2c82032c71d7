"""Looking up the swarm's findings: search them by words, read one whole.

Every recorded finding leaves a search document in a capped list (FINISH pushes it,
newest first): its id, task id, status, pool and the lower-cased start of its task and
result. A search runs in Redis (SEARCH), ``SLICE`` documents per call so that no call
holds Redis long, over the newest ``SCAN_LIMIT`` documents at most (it stops early once
it has ``limit`` matches of every word): a lookup costs no more with 100k findings than
with 20k. A run's lookup scans that run's findings only. Workers, the lead
(workers/lead_tools.py) and the Python API (launcher/client.py) share it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from workers import keys
from workers.tool_base import one_line

DOC_TASK_CHARS = 300  # of a finding's task in its search document
DOC_RESULT_CHARS = 1200  # of its result
DOCS_MAX = 20_000  # documents kept (the newest)
SCAN_LIMIT = 20_000  # documents a search looks at, at most
SLICE = 2_000  # documents one SEARCH call looks at (a few ms of Redis's time)
SEP = "\x1f"
_WORD = re.compile(r"[\w.-]{2,40}")

# KEYS: documents list. ARGV: first document, how many, result limit, words...
# One slice of the documents (newest first), so that no call holds Redis for long:
# returns {scanned, id1, score1, id2, score2, ...}: the slice's documents with any query
# word in them, the most words first (newest first among equals), at most ``limit``.
SEARCH = """
local first, count, limit, words = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), {}
for i = 4, #ARGV do words[#words + 1] = ARGV[i] end
local docs = redis.call('LRANGE', KEYS[1], first, first + count - 1)
local best = {}
for _, doc in ipairs(docs) do
  local n = 0
  for _, w in ipairs(words) do
    if string.find(doc, w, 1, true) then n = n + 1 end
  end
  if n > 0 then
    local bucket = best[n]
    if not bucket then bucket = {}; best[n] = bucket end
    if #bucket < limit then
      bucket[#bucket + 1] = string.sub(doc, 1, string.find(doc, '\\31', 1, true) - 1)
    end
  end
end
local found = {#docs}
local taken = 0
for n = #words, 1, -1 do
  for _, id in ipairs(best[n] or {}) do
    if taken < limit then
      found[#found + 1] = id
      found[#found + 1] = n
      taken = taken + 1
    end
  end
end
return found
"""


def document(finding: dict[str, Any]) -> str:
    """A finding's search document."""
    text = (str(finding.get("task") or "")[:DOC_TASK_CHARS] + " " +
            str(finding.get("result") or "")[:DOC_RESULT_CHARS]).lower()
    head = [str(finding.get(k) or "") for k in ("finding_id", "task_id", "status", "pool")]
    return SEP.join([*(h.replace(SEP, " ") for h in head), text.replace(SEP, " ")])


def words_of(query: str) -> list[str]:
    """The query's words, lower-cased, at most 12, longest first."""
    words = sorted(set(_WORD.findall(query.lower())), key=len, reverse=True)
    return words[:12]


class Lookup:
    """Search and read findings; ``run`` limits searches to that run's findings. The
    ids read whole are kept (``read``): a finding read and used is cited."""

    def __init__(self, redis: Any, swarm: str, run: str | None = None) -> None:
        self.redis = redis
        self.swarm = swarm
        self.run = run
        self.read: set[str] = set()
        self._search = redis.register_script(SEARCH)

    async def search(self, query: str, limit: int = 10) -> tuple[list[dict[str, Any]], int]:
        """The best matches (finding_id, task_id, status, pool, excerpt) and how many
        findings were looked at."""
        words, limit = words_of(query), max(1, min(limit, 50))
        if not words:
            return [], 0
        if self.run:
            ids = sorted(await self.redis.smembers(keys.run_findings(self.swarm, self.run)))
            raws = await self.redis.mget([keys.finding(i) for i in ids]) if ids else []
            found, scanned = rank(ids, raws, words, limit), len(ids)
        else:
            merge, scanned = Merge(words, limit), 0
            while scanned < SCAN_LIMIT and not merge.enough():
                reply = await self._search(keys=[keys.finding_docs(self.swarm)],
                                           args=[scanned, SLICE, limit, *words])
                scanned += merge.add(reply)
                if int(reply[0]) < SLICE:
                    break
            found = merge.best()
        raws = await self.redis.mget([keys.finding(i) for i in found]) if found else []
        return hits(found, raws, words), scanned

    async def finding(self, finding_id: str) -> dict[str, Any] | None:
        found = _load(await self.redis.get(keys.finding(finding_id)))
        if found is not None:
            self.read.add(finding_id)
        return found

    async def search_text(self, query: str, limit: int = 10) -> str:
        """A search's answer, as a model reads it."""
        hits, scanned = await self.search(query, limit)
        where = f"this run's {scanned} findings" if self.run else \
            f"the newest {scanned} findings"
        if not hits:
            return f"(no finding matches; searched {where})"
        lines = [f"[{h['finding_id']}] task {h['task_id']} ({h['pool']}, {h['status']}): "
                 f"…{h['excerpt']}" for h in hits]
        return "\n".join(lines) + f"\n(searched {where}; read_finding gives one whole)"


def search_sync(redis: Any, swarm: str, query: str, limit: int = 10,
                run: str | None = None) -> list[dict[str, Any]]:
    """:meth:`Lookup.search` with a synchronous client (the Python API)."""
    words, limit = words_of(query), max(1, min(limit, 50))
    if not words:
        return []
    if run:
        ids = sorted(redis.smembers(keys.run_findings(swarm, run)))
        found = rank(ids, redis.mget([keys.finding(i) for i in ids]) if ids else [], words,
                     limit)
    else:
        script, merge, scanned = redis.register_script(SEARCH), Merge(words, limit), 0
        while scanned < SCAN_LIMIT and not merge.enough():
            reply = script(keys=[keys.finding_docs(swarm)], args=[scanned, SLICE, limit, *words])
            scanned += merge.add(reply)
            if int(reply[0]) < SLICE:
                break
        found = merge.best()
    return hits(found, redis.mget([keys.finding(i) for i in found]) if found else [], words)


class Merge:
    """The best matches over the slices, newest slice first: the most query words,
    then the newest. ``enough`` once ``limit`` matches have every word (no older
    document can beat them)."""

    def __init__(self, words: list[str], limit: int) -> None:
        self.words, self.limit = words, limit
        self.found: list[tuple[int, int, str]] = []  # (-score, order, id)

    def add(self, reply: list[Any]) -> int:
        for i in range(1, len(reply), 2):
            self.found.append((-int(reply[i + 1]), len(self.found), str(reply[i])))
        self.found = sorted(self.found)[:self.limit]
        return int(reply[0])

    def enough(self) -> bool:
        return len(self.found) >= self.limit and \
            all(-score == len(self.words) for score, _o, _i in self.found)

    def best(self) -> list[str]:
        return [fid for _s, _o, fid in self.found]


def rank(ids: list[str], raws: list[Any], words: list[str], limit: int) -> list[str]:
    """Of a run's findings, the ids with the most query words, at most ``limit``."""
    scored = []
    for fid, raw in zip(ids, raws):
        doc = document(_load(raw) or {"finding_id": fid})
        n = sum(1 for w in words if w in doc)
        if n:
            scored.append((-n, fid))
    return [fid for _n, fid in sorted(scored)[:limit]]


def hits(found: list[str], raws: list[Any], words: list[str]) -> list[dict[str, Any]]:
    """What a search answers of each finding found: its id, task, status, pool, and an
    excerpt around the first query word."""
    out = []
    for fid, raw in zip(found, raws):
        finding = _load(raw)
        if finding is None:
            continue
        text = f"{finding.get('task', '')}\n{finding.get('result', '')}"
        at = max(0, text.lower().find(words[0]) - 80)
        out.append({"finding_id": fid, "task_id": finding.get("task_id"),
                    "status": finding.get("status"), "pool": finding.get("pool"),
                    "excerpt": one_line(text[at:], 300)})
    return out


def _load(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

