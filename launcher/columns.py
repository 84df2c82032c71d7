"""Plain column layout for the CLI's tables.

rich's ``Table`` measures every cell of every row before it draws (about 0.5 ms a row,
and 40 ms to import): 140 ms for `swarm cost` over 256 workers. The tables here are plain
text in columns, so they are laid out by hand and rich only prints the colours.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]


def line(cells: Sequence[str], sizes: Sequence[int], right: Collection[int]) -> str:
    """One row: two spaces between columns, the ``right`` ones (by index) right-aligned."""
    return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(cells, sizes))).rstrip()
