"""What a supervisor does with the commands of its control list (launcher/control.py):
stop, scale a pool, restart workers, reload the spec. Actions on the supervisor's slots
(``sup``: the running Supervisor); its loop reads the list with each tick."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from launcher import control, proctree
from launcher.slot import STOPPED
from launcher.spec import SpecError, load
from launcher.spec_model import Pool, SwarmSpec
from workers import ledger_format

log = logging.getLogger("swarm.supervisor")


def handle(sup: Any, raw: str) -> None:
    command = control.decode(raw)
    if isinstance(command, control.Down):
        sup.stop(graceful=not command.now, reason="swarm down")
    elif isinstance(command, control.Scale) and command.pool in sup.spec.pools:
        scale(sup, command.pool, command.workers)
    elif isinstance(command, control.Restart):
        restart(sup, command.target)
    elif isinstance(command, control.Reload):
        reload(sup)
    else:
        log.warning("ignored a control command: %.200r", raw)


def scale(sup: Any, pool: str, workers: int) -> None:
    """Run ``workers`` of ``pool`` here: new slots start at the next turn; retired ones
    finish their tasks (within stop_grace) and are not restarted."""
    before = sup.table.targets.get(pool, 0)
    for slot in sup.table.scale(pool, workers):
        if slot.pid is None:
            slot.state, slot.next_start = STOPPED, None
            continue
        slot.kill_at = time.monotonic() + sup.spec.stop_grace + sup.spec.kill_grace
        proctree.signal_tree(slot.pid, signal.SIGTERM)
    sup.events.record("scale", pool=pool, before=before, after=workers)
    sup.dirty()


def restart(sup: Any, target: str | None) -> None:
    """Restart the slots of ``target`` (a pool or a slot name; None: all): each finishes
    its tasks first, then starts again at once; a FATAL one starts again now."""
    now = time.monotonic()
    chosen = [s for s in sup.slots.values() if target is None or target in (s.pool, s.name)]
    for slot in chosen:
        if slot.restart(now) and slot.pid is not None:
            slot.kill_at = now + sup.spec.stop_grace + sup.spec.kill_grace
            proctree.signal_tree(slot.pid, signal.SIGTERM)
    sup.events.record("restart_asked", target=target or "all", slots=len(chosen))
    sup.dirty()


def reload(sup: Any) -> None:
    """`swarm reload`: read the spec file again and apply it without stopping work, as
    `supervisorctl update` and `pm2 reload` do: worker counts scale, budgets and the
    swarm's shared records change at once, new pools start, removed pools retire (their
    workers finish their tasks first), and the workers of a pool whose settings changed
    are restarted with the new settings. What only a new start can change (the swarm's
    name, its Redis, its state folder, the host's name) is refused, and the swarm goes
    on as it was."""
    old = sup.spec
    if old.source is None:
        log.error("reload: this swarm was not started from a spec file")
        return
    try:
        new = load(old.source)
    except SpecError as exc:
        log.error("reload refused, the swarm goes on as it was: %s", exc)
        sup.events.record("reload_refused", reason=str(exc), level=logging.ERROR)
        return
    fixed = [f for f in ("name", "redis", "state_dir") if getattr(new, f) != getattr(old, f)]
    if new.host_name != old.host_name:
        fixed.append("host")
    if fixed:
        why = f"{', '.join(fixed)} changed: that takes `swarm down` and `swarm up`"
        log.error("reload refused, the swarm goes on as it was: %s", why)
        sup.events.record("reload_refused", reason=why, level=logging.ERROR)
        return
    everyone = _shared(new) != _shared(old)  # prices, limits...: every worker is given them
    changed = [p for p in new.pools if p in old.pools and
               (everyone or _settings(new.pools[p]) != _settings(old.pools[p]))]
    added = [p for p in new.pools if p not in old.pools]
    removed = [p for p in old.pools if p not in new.pools]
    sup.spec = sup.presence.spec = sup.table.spec = new
    sup.returns.pools = list(dict.fromkeys([*new.pools, *removed]))
    sup.spend_fields = [ledger_format.field("total", "*", "nano"),
                        *(ledger_format.field("pool", n, "nano") for n in new.pools)]
    sup.presence.register()  # meta, pools, budgets as the spec says now
    for pool in removed:
        scale(sup, pool, 0)
    for pool in [*added, *new.pools]:
        if pool in added or new.pools[pool].workers != sup.table.targets.get(pool):
            scale(sup, pool, new.pools[pool].workers)
    for slot in sup.slots.values():
        if slot.pool in new.pools:
            slot.policy = new.pools[slot.pool].restart
    for pool in changed:
        restart(sup, pool)
    log.info("reloaded %s: %s", old.source, ", ".join(
        [f"pools added: {', '.join(added)}"] * bool(added) +
        [f"retired: {', '.join(removed)}"] * bool(removed) +
        [f"restarted for new settings: {', '.join(changed)}"] * bool(changed)) or "no pool changed")
    sup.events.record("reload", added=",".join(added), removed=",".join(removed),
                      restarted=",".join(changed))


def _shared(spec: SwarmSpec) -> dict[str, object]:
    """What of the swarm's own settings its workers are given at fork (budgets are
    read from Redis as they change, so they need no restart)."""
    return spec.model_dump(include={"prices", "rate_limits", "reference_model", "stop_grace",
                                    "seed_protocol", "default_pool"})


def _settings(pool: Pool) -> dict[str, object]:
    """A pool's settings that its workers were given (its worker count aside)."""
    return pool.model_dump(exclude={"workers"})
