"""The slots one host runs: which exist, how many each pool wants, and what a change
of that number means (new slots, slots to retire). Pure bookkeeping: the supervisor
starts and signals the processes."""

from __future__ import annotations

from launcher.slot import RETIRING, STOPPED, Slot
from launcher.spec import SwarmSpec
from workers import keys


class SlotTable:
    def __init__(self, spec: SwarmSpec, host: str) -> None:
        self.spec = spec
        self.host = host
        self.slots: dict[str, Slot] = {}  # worker id -> slot
        self.targets: dict[str, int] = {}  # pool -> workers wanted on this host
        self._generations: dict[str, int] = {}  # kept across a slot dropped and re-added
        for pool_name, pool in spec.pools.items():
            self.targets[pool_name] = pool.workers
            for index in range(1, pool.workers + 1):
                self.add(pool_name, index)

    def add(self, pool: str, index: int) -> Slot:
        worker_id = keys.worker_id(self.spec.name, self.host, keys.slot_name(pool, index))
        slot = Slot(pool, index, self.spec.pools[pool].restart, worker_id)
        slot.generation = self._generations.get(worker_id, 0)
        self.slots[worker_id] = slot
        return slot

    def started(self, slot: Slot) -> None:
        self._generations[slot.worker_id] = slot.generation

    def active(self, pool: str) -> list[Slot]:
        """The pool's slots that are not leaving, by number."""
        return sorted((s for s in self.slots.values()
                       if s.pool == pool and s.state not in (RETIRING, STOPPED)),
                      key=lambda s: s.index)

    def scale(self, pool: str, workers: int) -> list[Slot]:
        """Want ``workers`` of ``pool``: new slots are added (the lowest free numbers);
        the slots to retire are returned, the highest numbers first to go."""
        self.targets[pool] = workers
        leaving = self.active(pool)[workers:]
        for slot in leaving:
            slot.state = RETIRING
        taken = {s.index for s in self.slots.values() if s.pool == pool}
        index = 1
        while len(self.active(pool)) < workers:
            while index in taken:
                index += 1
            self.add(pool, index)
            taken.add(index)
        return leaving

    def done_with(self) -> list[str]:
        """Slots that stopped for good and have no process: to drop from the table."""
        return [w for w, s in self.slots.items() if s.state == STOPPED and s.pid is None]
