"""The librarian: answers questions about its archive, the seed's way. A client writes
``query:archive:{uuid}`` (the question: text, or JSON with ``question``), and finds the
answer at ``response:archive:{uuid}``, announced by its id on ``channel:responses``.

Questions are found however they were written: by keyspace notifications where the
server allows them (the librarian turns them on), and by a sweep of ``query:archive:*``
(every ``SWEEP_S`` with notifications, every second without), so a query written by a
plain client that announced nothing is answered too. One librarian answers each question
(its claim, ``SET NX EX``); identical questions in flight are answered once: the first
is asked, the others wait for its answer and get a copy (as do those that come within
``SAME_AFTER_S`` of it).

The archive (the pool's ``archive`` globs under its workdir, read through the jail, read
again when a file changes) is the stable prefix of every request, cached for an hour:
written once, then read by every later question. The pool's ``budget_usd`` is the
librarian's own: once spent, questions are answered with that news, not with a call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from typing import Any

from workers import keys, ledger_format
from workers.api_call import Caller
from workers.config import WorkerConfig
from workers.jail import Jail, PathError
from workers.redis_retry import until_redis
from workers.search import glob_regex

log = logging.getLogger("swarm.librarian")

SWEEP_S = 5.0  # a sweep for questions nobody announced, with keyspace notifications
CLAIM_S = 600  # a librarian's claim on a question
RESPONSE_TTL = 24 * 3600
ARCHIVE_MAX_CHARS = 2_000_000
SAME_AFTER_S = 10  # an answer is copied to identical questions this long after it
ARCHIVE_LOOK_S = 1.0  # how often the archive's files are looked at for changes
ROLE = """You are the swarm's librarian. You know the archive below by heart. Answer the
question you are asked from the archive, briefly and exactly, quoting where it helps.
If the archive does not say, answer that it does not; never guess."""


class Librarian:
    def __init__(self, cfg: WorkerConfig, redis: Any, caller: Caller | None,
                 missing_key: str | None, stopping: asyncio.Event) -> None:
        self.cfg = cfg
        self.redis = redis
        self.caller = caller
        self.missing_key = missing_key
        self.stopping = stopping
        self.consumer = keys.consumer(cfg.worker_id, cfg.generation)
        self.jail = Jail(cfg.workdir, cfg.fence)
        self._archive: tuple[tuple[tuple[str, int, int], ...], str] = ((), "")
        self._busy: set[str] = set()
        self._slots = asyncio.Semaphore(max(1, cfg.concurrency))
        self.jobs: set[asyncio.Task[None]] = set()
        self._archive_lock = asyncio.Lock()
        self._looked = -ARCHIVE_LOOK_S
        self._current = ("", "")

    # --- finding questions -----------------------------------------------------------------

    async def serve(self) -> None:
        notified = await self._notifications()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        db = self.redis.connection_pool.connection_kwargs.get("db", 0)
        prefix = f"__keyspace@{db}__:"
        if notified:
            await pubsub.psubscribe(prefix + keys.archive_query("*"))
        next_sweep = 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_sweep:
                    await self._sweep()
                    next_sweep = time.monotonic() + (SWEEP_S if notified else 1.0)
                if not notified:
                    await _sleep_unless(self.stopping, 0.2)
                    continue
                message = await pubsub.get_message(timeout=0.5)
                if message and message.get("data") == "set":
                    self._take(str(message["channel"])[len(prefix):])
        finally:
            await pubsub.aclose()

    async def _notifications(self) -> bool:
        """Turn on keyspace notifications of string commands (K$), keeping the flags
        already set; False where the server does not allow it."""
        try:
            flags = (await self.redis.config_get("notify-keyspace-events")).get(
                "notify-keyspace-events", "")
            if not ("K" in flags and ("$" in flags or "A" in flags)):
                await self.redis.config_set("notify-keyspace-events",
                                            "".join(sorted(set(flags + "K$"))))
            return True
        except Exception as exc:  # noqa: BLE001 - CONFIG refused: sweeping alone will do
            log.info("no keyspace notifications (%s); sweeping for questions every second",
                     exc)
            return False

    async def _sweep(self) -> None:
        try:
            async for key in self.redis.scan_iter(match=keys.archive_query("*"), count=1000):
                self._take(str(key))
        except Exception as exc:  # noqa: BLE001 - Redis away: next sweep
            log.warning("cannot sweep for questions: %s", exc)

    def _take(self, key: str) -> None:
        prefix = keys.archive_query("")
        if not key.startswith(prefix):
            return
        query_id = key[len(prefix):]
        if not query_id or ":" in query_id or query_id in self._busy:
            return
        self._busy.add(query_id)
        job = asyncio.create_task(self._answer_guarded(query_id), name=f"query {query_id}")
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    # --- answering one ---------------------------------------------------------------------

    async def _answer_guarded(self, query_id: str) -> None:
        try:
            await self._answer(query_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("question %s: could not be answered", query_id)
        finally:
            self._busy.discard(query_id)

    async def _answer(self, query_id: str) -> None:
        r = self.redis
        if await r.exists(keys.archive_response(query_id)):
            return
        if not await r.set(keys.archive_claimed(query_id), self.consumer, nx=True, ex=CLAIM_S):
            return
        raw = await r.get(keys.archive_query(query_id))
        if raw is None:
            return
        question = _question(raw)
        version, archive = await self.current_archive()
        same = keys.librarian_asking(self.cfg.swarm, _digest(question, version))
        if not await r.set(same, query_id, nx=True, ex=CLAIM_S):
            first = await r.get(same)
            if first and first != query_id:
                answer = await self._wait_for(first, same)
                if answer is not None:
                    await self._respond(query_id, answer)
                    return
        answered = False
        try:  # answered before the mark goes, so that nobody waiting misses it
            async with self._slots:  # (those waiting for an identical question take none)
                answer = await self._ask_model(query_id, question, archive)
            await self._respond(query_id, answer)
            answered = True
        finally:  # kept a little while: a question that comes just after gets a copy
            await (r.expire(same, SAME_AFTER_S) if answered else r.delete(same))

    async def _wait_for(self, first: str, same: str) -> str | None:
        """The answer to the identical question asked first (None if it never comes:
        its librarian let go of it without answering)."""
        deadline = time.monotonic() + CLAIM_S
        pause = 0.05
        while time.monotonic() < deadline and not self.stopping.is_set():
            answer = await self.redis.get(keys.archive_response(first))
            if answer is not None:
                return str(answer)
            if not await self.redis.exists(same):
                answer = await self.redis.get(keys.archive_response(first))
                return None if answer is None else str(answer)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
        return None

    async def _respond(self, query_id: str, answer: str) -> None:
        async def write() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(keys.archive_response(query_id), answer, ex=RESPONSE_TTL)
            pipe.publish(keys.CHANNEL_RESPONSES, query_id)
            await pipe.execute()

        await until_redis(write, f"answering {query_id}")

    async def _ask_model(self, query_id: str, question: str, archive: str) -> str:
        if self.caller is None:
            return f"ERROR: the librarian cannot answer: {self.missing_key or 'no API client'}"
        spent = await self._budget_spent()
        if spent:
            return f"ERROR: the librarian's budget is spent ({spent})"
        if not question:
            return "ERROR: the question is empty"
        request = {"model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
                   "system": archive_blocks(archive),
                   "messages": [{"role": "user", "content": question}]}
        try:
            answer = await self.caller.call(f"archive:{query_id}", request, first=True)
        except Exception as exc:  # noqa: BLE001 - any failure is the asker's answer
            log.warning("question %s: the API call failed: %s", query_id, exc)
            return f"ERROR: the librarian's call failed: {type(exc).__name__}"
        text = "\n".join(b.text for b in answer.message.content
                         if getattr(b, "type", "") == "text").strip()
        return text or "(the librarian had no words)"

    async def _budget_spent(self) -> str | None:
        if self.cfg.pool_budget_usd is None:
            return None
        nano = int(await self.redis.hget(keys.ledger(self.cfg.swarm), ledger_format.field(
            "pool", self.cfg.pool, "nano")) or 0)
        limit = int(self.cfg.pool_budget_usd * 10**9)
        return f"${nano / 1e9:.6f} of ${self.cfg.pool_budget_usd:g}" if nano >= limit else None

    # --- the archive -----------------------------------------------------------------------

    async def current_archive(self) -> tuple[str, str]:
        """The archive's version and text, looked at again at most once a second (one
        look at a time: questions that come together share it)."""
        async with self._archive_lock:
            if time.monotonic() - self._looked >= ARCHIVE_LOOK_S:
                self._current = await asyncio.to_thread(self.archive)
                self._looked = time.monotonic()
            return self._current

    def archive(self) -> tuple[str, str]:
        """(a version that changes when any archive file changes, the archive's text),
        read again only when a file changed."""
        stamp = []
        with self.jail.walk(200_000) as walk:
            matchers = [glob_regex(g).match for g in self.cfg.archive]
            for entry in walk:
                if any(m(entry.rel) for m in matchers):
                    try:
                        fd = self.jail.open_entry(entry)
                    except (PathError, OSError):
                        continue
                    try:
                        st = os.fstat(fd)
                        stamp.append((entry.rel, st.st_size, st.st_mtime_ns))
                    finally:
                        os.close(fd)
        signature = tuple(sorted(stamp))
        if signature != self._archive[0]:
            self._archive = (signature, self._read(signature))
        return _digest(repr(signature), ""), self._archive[1]

    def _read(self, files: tuple[tuple[str, int, int], ...]) -> str:
        parts, size = [], 0
        for rel, _size, _mtime in files:
            try:
                fd, _ = self.jail.open_read(rel)
            except (PathError, OSError):
                continue
            with open(fd, "rb") as handle:
                text = handle.read(ARCHIVE_MAX_CHARS - size).decode("utf-8", "replace")
            parts.append(f"=== {rel} ===\n{text}")
            size += len(text)
            if size >= ARCHIVE_MAX_CHARS:
                break
        return "\n\n".join(parts)


def archive_blocks(archive: str) -> list[dict[str, Any]]:
    """The librarian's stable prefix: its role, then the archive, cached for an hour."""
    return [{"type": "text", "text": ROLE},
            {"type": "text", "text": f"THE ARCHIVE:\n{archive or '(empty)'}",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}}]


def _question(raw: Any) -> str:
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        return str(raw).strip()
    if isinstance(value, dict):
        return str(value.get("question") or value.get("query") or "").strip()
    return str(value).strip() if isinstance(value, str) else str(raw).strip()


def _digest(question: str, version: str) -> str:
    normal = " ".join(question.lower().split())
    return hashlib.sha256(f"{version}\0{normal}".encode()).hexdigest()[:24]


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
