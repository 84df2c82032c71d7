"""A task's finding in the seed's FINDING FORMAT, with swarm's additions (docs/protocol.md
lists every field), built from the agent's outcome."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from workers.agent import Outcome
from workers.config import WorkerConfig
from workers.pricing import Usage


def finding_of(cfg: WorkerConfig, task_id: str, description: str,
               outcome: Outcome) -> dict[str, Any]:
    nano = outcome.nano
    return {
        "finding_id": f"finding_{uuid.uuid4().hex[:16]}",
        "worker_id": cfg.worker_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "task": description,
        "result": outcome.result,
        "files_changed": outcome.files_changed,
        "citations": outcome.citations,
        "tokens_used": outcome.usage.total,
        "cost": None if nano is None else nano / 1e9,
        "model": cfg.model,
        "status": outcome.status,
        "error": outcome.error,
        "task_id": task_id,
        "pool": cfg.pool,
        "generation": cfg.generation,
        "turns": outcome.turns,
        "stop_reason": outcome.stop_reason,
        "truncated": outcome.truncated,
        "api_calls": outcome.calls,
        "tool_calls": outcome.tool_calls,
        "usage": vars(outcome.usage),
        "cost_nano_usd": nano,
        **outcome.extra,
    }


def failed(reason: str) -> Outcome:
    return Outcome("failed", "", error=reason, usage=Usage())


def describe(raw: Any) -> str:
    """What a task says it is, from a payload that may not parse."""
    try:
        return str(json.loads(raw).get("description", ""))[:1000]
    except Exception:  # noqa: BLE001 - a payload that is not JSON says what it is anyway
        return "" if raw is None else str(raw)[:200]
