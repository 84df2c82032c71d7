"""The CLI's hand-laid tables: columns line up, numbers align right, nothing is cut."""

from __future__ import annotations

import io

from rich.console import Console

from launcher import columns, costs


def test_columns_pad_and_align() -> None:
    headers = ["NAME", "CALLS"]
    rows = [["a", "1"], ["longer-name", "12,345"]]
    sizes = columns.widths(headers, rows)
    assert sizes == [11, 6]
    assert [columns.line(r, sizes, {1}) for r in [headers, *rows]] == [
        "NAME          CALLS",
        "a                 1",
        "longer-name  12,345",
    ]
    assert columns.line(["x", ""], sizes, set()) == "x"  # no trailing blanks


def test_cost_table_lines_up_for_many_workers() -> None:
    rows = [costs.Row("worker", f"w-{i}", {"calls": i * 1000, "input": 10**i % 10**9,
                                           "nano": 10**i, "ref_nano": 2 * 10**i})
            for i in range(1, 12)]
    rows.append(costs.Row("total", "total", {"calls": 1, "nano": 5, "ref_nano": 10}))
    console = Console(file=io.StringIO(), width=80, highlight=False, emoji=False)
    console.print(costs.render(rows, "ref-model", "test prices", "worker"), soft_wrap=True)
    lines = console.file.getvalue().splitlines()
    header, body = lines[0], lines[1:13]
    assert header.split()[:3] == ["WORKER", "CALLS", "INPUT"]
    # wider than the console, yet never wrapped or cut (the CLI prints with soft_wrap)
    assert len(header) > 80 and len(lines) == 14
    cost_end = header.index("COST") + len("COST")
    for line, row in zip(body, rows):
        assert line.startswith(row.key)
        assert line[:cost_end].endswith(costs.usd(row.get("nano")))
    assert lines[13] == "prices: test prices; reference model: ref-model"
