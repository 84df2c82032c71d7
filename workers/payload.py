"""A task's payload, the JSON under ``task:{id}``: parsed, or refused with a reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_PAYLOAD_BYTES = 1_000_000


class PayloadError(Exception):
    """The payload cannot be run; ``str()`` is the reason recorded in the dead letter."""


@dataclass(frozen=True)
class Task:
    description: str
    files: list[str] = field(default_factory=list)
    pool: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse(raw: str | bytes | None) -> Task:
    if raw is None:
        raise PayloadError("no payload: task key is missing")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("payload is not UTF-8") from None
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, not {type(data).__name__}")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise PayloadError("payload has no 'description' (a non-empty string)")
    _check_text(description, "description")
    files = data.get("files", [])
    if files is None:
        files = []
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise PayloadError("payload 'files' must be a list of strings")
    for name in files:
        _check_text(name, "files")
    pool = data.get("pool")
    if pool is not None and not isinstance(pool, str):
        raise PayloadError("payload 'pool' must be a string")
    extra = {k: v for k, v in data.items() if k not in ("description", "files", "pool")}
    return Task(description, list(files), pool, extra)


def _check_text(text: str, what: str) -> None:
    """JSON can carry lone surrogates (``\\udcff``), which are not text: no API call
    could send them, so the task is refused at once rather than failed at every try."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError(f"payload '{what}' holds a lone surrogate "
                           f"(U+{ord(text[exc.start]):04X}), which is not Unicode text") from None


def dump(task: Task) -> str:
    data: dict[str, Any] = {"description": task.description, "files": task.files}
    if task.pool:
        data["pool"] = task.pool
    data.update(task.extra)
    return json.dumps(data)


def owner(raw: str | None) -> str | None:
    """The swarm a payload was submitted to (its ``swarm`` field), or None for a task
    any swarm that serves the seed protocol may run."""
    try:
        swarm = json.loads(raw or "").get("swarm")
    except (ValueError, AttributeError, RecursionError):
        return None
    return swarm if isinstance(swarm, str) else None


def route(raw: str, default_pool: str, pools: tuple[str, ...]) -> str:
    """The pool a payload asks for, if it exists; otherwise the default pool."""
    try:
        wanted = json.loads(raw).get("pool")
    except (ValueError, AttributeError, RecursionError):
        return default_pool
    return wanted if isinstance(wanted, str) and wanted in pools else default_pool


def run_of(raw: str | bytes | None) -> str:
    """The run a payload's task belongs to (its ``run`` field), or ''."""
    try:
        run = json.loads(raw or "").get("run")
    except (ValueError, AttributeError, RecursionError, UnicodeDecodeError):
        return ""
    return run if isinstance(run, str) else ""
