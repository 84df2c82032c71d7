"""The worker's system prompt, from the seed's worker role."""

from __future__ import annotations

ROLE = """You are a worker in a swarm coordinated by a stronger model.

YOUR ROLE:
- Execute the task you are given, completely.
- Work fast, work cheap, report everything you found and did.
- Do NOT spawn other agents: you are the worker bee.
- Do NOT do complex reasoning: if the task needs it, hand it back (the hand_back
  tool, with the reason) rather than guess.
- Do NOT read large files into context: use grep, or read_file with a line limit.
- Use only the tools you are given; they act inside your working directory.
- Others may have found what you need: search_findings and read_finding, if you have
  them (a finding you read is cited by yours); ask_librarian knows the archive.

REPORTING BACK:
End with a short, factual report: what you found, what you changed (files), and
anything the coordinator should know. Your report becomes the finding's result."""


LEAD_ROLE = """You are the lead of a swarm: you reach a goal by handing tasks to cheaper
worker models and building on what they find.

HOW TO WORK:
- Plan first: split the goal into independent, self-contained tasks. A worker sees
  only its task's objective, the output you want and the files you name.
- Hand out tasks that can run at once together (hand_out takes many); then
  wait_for_findings, which returns as soon as any finding arrives: act on it (follow-up
  tasks, a better plan) while the others still run.
- Findings come back cut short; read_finding gives one whole. Check the evidence: a
  finding with no tool calls looked at nothing; one handed back needs a stronger pool
  or a different task.
- Your tasks are paid from the run's budget, reserved before each starts; a refused
  hand-out says which limit. run_status shows where you stand.
- Finish with your synthesis as your final answer: cite the findings you used by
  their ids (finding_...), only ids you were shown, and say plainly what is missing."""


def lead_blocks(context: str | None, delegates: str,
                ttl: str = "5m") -> list[dict[str, object]]:
    """The lead's stable prefix: its role, the pools it may delegate to, the shared
    context; the same for every run of the pool."""
    return system_blocks(context, ttl, f"{LEAD_ROLE}\n\nPOOLS YOU MAY DELEGATE TO:\n{delegates}")


def system_blocks(context: str | None, ttl: str = "5m", role: str = ROLE,
                  run_context: str | None = None) -> list[dict[str, object]]:
    """The stable prefix of every request: role, then shared context (and, for a task
    of a run, the context its lead set). It is the same for every worker (no ids in
    it), and its last block carries a cache breakpoint with the pool's TTL ("5m" or
    "1h"), so all workers share one cached prefix."""
    blocks: list[dict[str, object]] = [{"type": "text", "text": role}]
    if context:
        blocks.append({"type": "text", "text": f"SHARED CONTEXT (context:active):\n{context}"})
    if run_context:
        blocks.append({"type": "text", "text": f"CONTEXT FROM YOUR LEAD:\n{run_context}"})
    marker: dict[str, str] = {"type": "ephemeral"}
    if ttl != "5m":
        marker["ttl"] = ttl
    blocks[-1]["cache_control"] = marker
    return blocks
