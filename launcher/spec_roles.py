"""How a spec's pools fit together by role: a lead hands tasks to worker pools only;
workers never delegate; escalation goes to another worker pool and never comes round.
launcher/spec.py reports the first problem with its file and line."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from launcher.spec_model import RunLimits, SwarmSpec


def role_problems(spec: SwarmSpec) -> Iterator[tuple[tuple[str, ...], str]]:
    """(where, what) for each way the pools' roles do not fit together: a lead hands
    tasks to worker pools only; workers never delegate; escalation goes to another
    worker pool and never comes round again."""
    pools = spec.pools
    for name, pool in pools.items():
        at = ("pools", name)
        if pool.batch is not None and pool.role != "worker":
            yield at + ("batch",), ("is for worker pools: a lead or librarian answers while "
                                    "someone waits")
        if pool.runtime == "claude-code" and pool.role != "worker":
            yield at + ("runtime",), "claude-code runs worker pools' tasks only"
        elif pool.runtime == "claude-code" and pool.batch is not None:
            yield at + ("batch",), ("Claude Code makes its own calls, one at a time: "
                                    "they cannot wait in batches")
        if pool.role == "lead":
            if not pool.delegates_to:
                yield at + ("delegates_to",), "a lead needs the worker pools it hands tasks to"
            for target in pool.delegates_to:
                if target not in pools:
                    yield at + ("delegates_to",), f"no pool {target!r}"
                elif pools[target].role != "worker":
                    yield at + ("delegates_to",), (f"{target!r} is a {pools[target].role} "
                                                   "pool; leads hand tasks to worker pools")
            if pool.escalate_to:
                yield at + ("escalate_to",), "is for worker pools"
            if pool.run is None:
                pool.run = RunLimits()
        elif pool.role == "librarian":
            if not pool.archive:
                yield at + ("archive",), "a librarian needs its archive (files or globs)"
            for field in ("delegates_to", "escalate_to", "run"):
                if getattr(pool, field):
                    yield at + (field,), "is not for a librarian"
        else:
            if pool.archive:
                yield at + ("archive",), "is for librarian pools (role: librarian)"
            if pool.delegates_to:
                yield at + ("delegates_to",), "workers cannot delegate (only role: lead)"
            if pool.run is not None:
                yield at + ("run",), "is for lead pools (role: lead)"
            seen, step = {name}, pool.escalate_to
            while step:
                if step not in pools:
                    yield at + ("escalate_to",), f"no pool {step!r}"
                    break
                if pools[step].role != "worker":
                    yield at + ("escalate_to",), f"{step!r} is not a worker pool"
                    break
                if step in seen:
                    yield at + ("escalate_to",), f"escalation comes back round to {step!r}"
                    break
                seen.add(step)
                step = pools[step].escalate_to
    if pools[str(spec.default_pool)].role != "worker":
        yield ("default_pool",), (f"{spec.default_pool!r} is a lead pool; tasks without a "
                                  "pool go to a worker pool")


SUBSCRIPTION = "CLAUDE_CODE_OAUTH_TOKEN"  # a Claude subscription's, for Claude Code pools


def subscription_pools(spec: SwarmSpec, environ: Mapping[str, str] | None = None) -> list[str]:
    """The Claude Code pools whose calls a Claude subscription pays for: signed in with
    CLAUDE_CODE_OAUTH_TOKEN and no API key (their cost is then list price, not a bill)."""
    env = os.environ if environ is None else environ
    names = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    return [name for name, pool in spec.pools.items() if pool.runtime == "claude-code"
            and (env.get(SUBSCRIPTION) or pool.env.get(SUBSCRIPTION))
            and not any(env.get(n) or pool.env.get(n) for n in names)]
