"""The worker's system prompt, from the seed's worker role."""

from __future__ import annotations

ROLE = """You are a worker in a swarm coordinated by a stronger model.

YOUR ROLE:
- Execute the task you are given, completely.
- Work fast, work cheap, report everything you found and did.
- Do NOT spawn other agents: you are the worker bee.
- Do NOT do complex reasoning: if the task needs it, say so and hand it back.
- Do NOT read large files into context: use grep, or read_file with a line limit.
- Use only the tools you are given; they act inside your working directory.

REPORTING BACK:
End with a short, factual report: what you found, what you changed (files), and
anything the coordinator should know. Your report becomes the finding's result."""


def system_blocks(context: str | None, ttl: str = "5m") -> list[dict[str, object]]:
    """The stable prefix of every request: role, then shared context. It is the same
    for every worker (no ids in it), and its last block carries a cache breakpoint with
    the pool's TTL ("5m" or "1h"), so all workers share one cached prefix."""
    blocks: list[dict[str, object]] = [{"type": "text", "text": ROLE}]
    if context:
        blocks.append({"type": "text", "text": f"SHARED CONTEXT (context:active):\n{context}"})
    marker: dict[str, str] = {"type": "ephemeral"}
    if ttl != "5m":
        marker["ttl"] = ttl
    blocks[-1]["cache_control"] = marker
    return blocks
