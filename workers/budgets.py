"""Budgets: which ledger counter each one watches, and the verdict when it is spent.

A pure judgement (no Redis here): the worker asks before it starts a task, the
supervisor with each tick; both pause new work with the same reason, and a supervisor
that starts again clears the pauses that were budgets, so they are judged afresh."""

from __future__ import annotations

from dataclasses import dataclass

from workers import ledger_format

PREFIX = "budget reached: "


@dataclass(frozen=True)
class Budget:
    field: str  # the ledger counter it watches (nano-dollars)
    usd: float
    who: str  # "the swarm", "pool haiku"
    pool: str | None  # None: the swarm's own pause, else the pool's

    def reached(self, spent_nano: int) -> str | None:
        """The pause reason if ``spent_nano`` used the budget up, else None."""
        if spent_nano < self.usd * 1e9:
            return None
        return f"{PREFIX}{self.who} spent ${spent_nano / 1e9:.6f} of ${self.usd:g}"


def budgets(swarm_usd: float | None, pools: dict[str, float | None]) -> list[Budget]:
    """The swarm's budget and each pool's, those that are set."""
    found = []
    if swarm_usd is not None:
        found.append(Budget(ledger_format.field("total", "*", "nano"), swarm_usd,
                            "the swarm", None))
    for pool, usd in pools.items():
        if usd is not None:
            found.append(Budget(ledger_format.field("pool", pool, "nano"), usd,
                                f"pool {pool}", pool))
    return found


def is_budget_pause(reason: str | None) -> bool:
    return bool(reason) and str(reason).startswith(PREFIX)


def from_redis(values: dict[str, str], pool: str, swarm_usd: float | None,
               pool_usd: float | None) -> list[Budget]:
    """The budgets a worker of ``pool`` keeps: those in Redis (``keys.budgets``), else
    the spec's as it was given at fork."""
    return in_force(values, swarm_usd, {pool: pool_usd})


def in_force(values: dict[str, str], swarm_usd: float | None,
             pools: dict[str, float | None]) -> list[Budget]:
    """The swarm's budget and those of ``pools``, as Redis holds them (`swarm budget`
    changes them while the swarm runs), else as given (the spec's)."""
    def read(field: str, default: float | None) -> float | None:
        if field not in values:
            return default
        try:
            return float(values[field]) if values[field] else None
        except ValueError:
            return default

    return budgets(read("swarm", swarm_usd),
                   {pool: read(f"pool:{pool}", usd) for pool, usd in pools.items()})
