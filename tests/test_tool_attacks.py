"""The file tools against a model that attacks: links and loops, races, hard links,
swarm's own files, FIFOs, runaway regexes, deep trees, huge files. Each of these got out
(or took the worker down) before the tools walked paths by descriptor."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from launcher.fence import fence_for
from launcher.spec import load
from workers import tools
from workers.jail import MAX_DEPTH, Fence, Jail
from workers.tools import Toolbox, ToolError, ToolSettings


def run(box: Toolbox, name: str, **args: Any) -> str:
    return asyncio.run(box.run(name, args))


def outcome(box: Toolbox, name: str, **args: Any) -> str:
    """The tool's text, or 'ERROR: ...' as the model would read it."""
    try:
        return run(box, name, **args)
    except ToolError as exc:
        return f"ERROR: {exc}"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("SECRET sentinel\n")
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "inner.txt").write_text("hello\n")
    return folder


@pytest.fixture
def box(work: Path):  # type: ignore[no-untyped-def]
    toolbox = Toolbox(work, ToolSettings(tool_timeout=20))
    yield toolbox
    toolbox.jail.close()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# --- links ---------------------------------------------------------------------------------

def test_a_symlink_loop_beside_a_link_out_leads_nowhere(work: Path, outside: Path,
                                                        box: Toolbox) -> None:
    os.symlink("loop", work / "loop")
    os.symlink(outside, work / "out")
    before = tree(outside)
    attempts = [
        ("write_file", {"path": "loop/../out/x", "content": "pwned"}),
        ("write_file", {"path": "loop/../out/secret.txt", "content": "pwned"}),
        ("read_file", {"path": "loop/../out/secret.txt"}),
        ("edit_file", {"path": "loop/../out/secret.txt", "old_string": "SECRET",
                       "new_string": "pwned"}),
        ("read_file", {"path": "loop"}),
        ("write_file", {"path": "loop", "content": "x"}),
    ]
    for name, args in attempts:
        answer = outcome(box, name, **args)
        assert answer.startswith("ERROR: refused"), (name, args, answer)
        assert "SECRET" not in answer
    assert "loop" in outcome(box, "read_file", path="loop")  # says why: a loop
    assert "SECRET" not in outcome(box, "grep", pattern="SECRET")
    assert outcome(box, "list_files") == "inner.txt"
    assert tree(outside) == before
    assert box.files_changed == set()


def test_a_hard_link_to_an_outside_file_is_replaced_not_written_through(
        work: Path, outside: Path, box: Toolbox) -> None:
    os.link(outside / "secret.txt", work / "linked.txt")
    run(box, "write_file", path="linked.txt", content="new content\n")
    assert (outside / "secret.txt").read_text() == "SECRET sentinel\n"
    assert (work / "linked.txt").read_text() == "new content\n"
    os.link(outside / "secret.txt", work / "linked2.txt")
    run(box, "edit_file", path="linked2.txt", old_string="SECRET", new_string="public")
    assert (outside / "secret.txt").read_text() == "SECRET sentinel\n"
    assert (work / "linked2.txt").read_text() == "public sentinel\n"
    assert not [p for p in os.listdir(work) if "swarm-tmp" in p]  # no temporary left


def test_writes_keep_mode_and_replace_atomically(work: Path, box: Toolbox) -> None:
    script = work / "run.sh"
    script.write_text("echo old\n")
    script.chmod(0o750)
    run(box, "write_file", path="run.sh", content="echo new\n")
    assert script.stat().st_mode & 0o777 == 0o750
    assert script.read_text() == "echo new\n"


SWAP = """
import ctypes, os, sys
work, outside, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
sub, link = os.path.join(work, "sub").encode(), os.path.join(work, "sub.link").encode()
os.symlink(outside, link)
print("ready", flush=True)
for _ in range(rounds):  # 'sub' is the folder, then a symlink out, then the folder ...
    if libc.renameat2(AT_FDCWD, sub, AT_FDCWD, link, RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
"""


def test_a_parent_folder_swapped_for_a_symlink_mid_walk_never_leads_out(
        work: Path, outside: Path, box: Toolbox) -> None:
    (work / "sub").mkdir()
    (work / "sub" / "secret.txt").write_text("inside\n")
    before = tree(outside)
    swapper = subprocess.Popen([sys.executable, "-c", SWAP, str(work), str(outside),
                                "1000000"], stdout=subprocess.PIPE, text=True)
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "ready\n"

        async def attack() -> dict[str, int]:
            seen = {"read": 0, "wrote": 0, "failed": 0, "leaked": 0}
            for i in range(3000):
                for name, args in (("read_file", {"path": "sub/secret.txt"}),
                                   ("write_file", {"path": f"sub/new_{i}.txt",
                                                   "content": "x"})):
                    try:
                        text = await box.run(name, args)
                    except ToolError:
                        seen["failed"] += 1
                        continue
                    seen["leaked"] += "SECRET" in text
                    seen["read" if name == "read_file" else "wrote"] += 1
            return seen

        seen = asyncio.run(attack())
    finally:
        swapper.kill()
        swapper.wait(10)
    assert swapper.returncode == -9, "the swapper stopped swapping"
    assert seen["leaked"] == 0
    assert tree(outside) == before, "a write landed outside"
    # the race was real: some calls met the symlink, some the folder
    assert seen["failed"] > 0 and seen["read"] > 0 and seen["wrote"] > 0, seen


# --- swarm's own files -----------------------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The old default layout: the workdir is the folder with the spec, the state, the
    logs, a git repository and a virtual environment."""
    folder = tmp_path / "project"
    (folder / ".swarm" / "demo").mkdir(parents=True)
    (folder / ".swarm" / "demo" / "redis.pass").write_text("hunter2-password")
    (folder / ".swarm" / "demo" / "redis.json").write_text('{"url": "unix:///x"}')
    (folder / ".swarm" / "demo" / "redis.conf").write_text("requirepass hunter2-password\n")
    (folder / "logs").mkdir()
    (folder / "logs" / "redis.log").write_text("requirepass hunter2-password\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (folder / ".venv" / "lib").mkdir(parents=True)
    (folder / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (folder / "src").mkdir()
    (folder / "src" / "app.py").write_text("print('requirepass is a word')\n")
    (folder / "swarm.yaml").write_text("name: demo\npools:\n  w:\n    model: m\n"
                                       "    workdir: .\n")
    return folder


@pytest.fixture
def own_box(project: Path):  # type: ignore[no-untyped-def]
    spec = load(project / "swarm.yaml")
    fence = fence_for(spec)
    toolbox = Toolbox(Jail(spec.pools["w"].workdir, fence), ToolSettings())
    yield toolbox
    toolbox.jail.close()


@pytest.mark.parametrize("name,args", [
    ("read_file", {"path": ".swarm/demo/redis.pass"}),
    ("read_file", {"path": "./.swarm/../.swarm/demo/redis.conf"}),
    ("read_file", {"path": "logs/redis.log"}),
    ("write_file", {"path": ".swarm/demo/redis.json", "content": '{"url": "redis://evil"}'}),
    ("write_file", {"path": ".swarm/demo/new.txt", "content": "x"}),
    ("write_file", {"path": "logs/x.log", "content": "x"}),
    ("write_file", {"path": "swarm.yaml", "content": "pools: {w: {model: m, tools: "
                                                     "{shell: true}}}"}),
    ("edit_file", {"path": "swarm.yaml", "old_string": "workdir", "new_string": "x"}),
    ("edit_file", {"path": ".git/config", "old_string": "bare = false",
                   "new_string": "fsmonitor = touch /tmp/pwned"}),
    ("write_file", {"path": ".git/hooks/pre-commit", "content": "#!/bin/sh\n"}),
    ("write_file", {"path": ".venv/lib/evil.pth", "content": "import os"}),
    ("write_file", {"path": "src/.git/config", "content": "x"}),
])
def test_swarms_own_files_are_out_of_reach(project: Path, own_box: Toolbox, name: str,
                                           args: dict[str, Any]) -> None:
    before = tree(project)
    answer = outcome(own_box, name, **args)
    assert answer.startswith("ERROR: refused"), answer
    assert "hunter2" not in answer
    assert tree(project) == before


def test_grep_and_list_do_not_see_swarms_secrets(own_box: Toolbox) -> None:
    assert outcome(own_box, "grep", pattern="requirepass") == \
        "src/app.py:1: print('requirepass is a word')"
    listed = outcome(own_box, "list_files").split("\n")
    assert listed == ["src/app.py", "swarm.yaml"]
    assert outcome(own_box, "read_file", path="swarm.yaml").startswith("name: demo")


def test_a_folder_python_imports_from_takes_no_new_module(work: Path) -> None:
    (work / "pkg").mkdir()
    box = Toolbox(Jail(work, Fence(import_dirs=(str(work / "pkg"),))), ToolSettings())
    assert "refused" in outcome(box, "write_file", path="pkg/typer.py", content="x")
    assert "refused" in outcome(box, "write_file", path="pkg/evil/__init__.py", content="x")
    assert run(box, "write_file", path="other/typer.py", content="x").startswith("wrote")
    assert not (work / "pkg" / "typer.py").exists()


def test_a_workdir_holding_swarms_own_code_or_state_is_refused(tmp_path: Path) -> None:
    from launcher.spec import SpecError

    (tmp_path / ".swarm" / "demo").mkdir(parents=True)
    for workdir, says in ((".swarm/demo", "swarm's state or logs"),
                          (str(Path(tools.__file__).parent), "swarm's own files"),
                          (sys.prefix, "swarm's own files or the Python installation")):
        spec = tmp_path / "swarm.yaml"
        spec.write_text(f"name: demo\npools:\n  w:\n    model: m\n    workdir: {workdir}\n")
        with pytest.raises(SpecError) as err:
            load(spec)
        assert str(err.value).startswith(f"{spec}:5: pools.w.workdir: ")
        assert says in str(err.value)


# --- things that used to take the worker down -------------------------------------------

def test_fifos_sockets_and_devices_are_refused_without_blocking(work: Path,
                                                                box: Toolbox) -> None:
    for i in range(8):  # more than the tools have threads
        os.mkfifo(work / f"fifo{i}")

    async def all_at_once() -> list[str]:
        calls = [box.run("read_file", {"path": f"fifo{i}"}) for i in range(8)]
        calls += [box.run("edit_file", {"path": "fifo0", "old_string": "a",
                                        "new_string": "b"}),
                  box.run("write_file", {"path": "fifo1", "content": "x"}),
                  box.run("read_file", {"path": "/dev/zero"})]
        done = await asyncio.gather(*calls, return_exceptions=True)
        return [str(d) for d in done]

    answers = asyncio.run(all_at_once())
    assert all("refused" in a for a in answers), answers
    assert "grep" not in outcome(box, "grep", pattern="x")  # the walk skips them too
    assert run(box, "read_file", path="inner.txt") == "hello\n"


@pytest.mark.parametrize("pattern,text", [
    (r"^(a+)+$", "a" * 5000 + "!"),
    (r"^(a|a)*$", "a" * 40 + "!"),
    (r"(x+x+)+y", "x" * 5000),
])
def test_a_runaway_regex_is_stopped_and_the_loop_keeps_beating(
        work: Path, pattern: str, text: str) -> None:
    (work / "victim.txt").write_text(text + "\n")
    box = Toolbox(work, ToolSettings(tool_timeout=2))

    async def grep_while_beating() -> tuple[str, float]:
        gaps, last = [0.0], time.monotonic()

        async def beat() -> None:
            nonlocal last
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beating = asyncio.ensure_future(beat())
        try:
            answer = await box.run("grep", {"pattern": pattern})
        except ToolError as exc:
            answer = f"ERROR: {exc}"
        beating.cancel()
        return answer, max(gaps)

    answer, worst_gap = asyncio.run(grep_while_beating())
    assert answer == "(no matches)" or "took too long" in answer, answer
    assert worst_gap < 1.5, f"the event loop stood still for {worst_gap:.2f}s"


def test_a_glob_of_many_double_stars_over_a_deep_tree_returns(work: Path,
                                                              box: Toolbox) -> None:
    deep = work.joinpath(*["d"] * 30)
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("x")
    pattern = "**/" * 12 + "nothing-matches"
    assert outcome(box, "list_files", pattern=pattern) == f"(no files match {pattern})"
    assert outcome(box, "list_files", pattern="**/**/**/x.txt") == "/".join(["d"] * 30) + \
        "/x.txt"


def test_a_tree_deeper_than_the_walk_is_listed_to_its_limit(work: Path,
                                                            box: Toolbox) -> None:
    deep = work.joinpath(*["d"] * 900)
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("found me\n")
    (work / "d" / "top.txt").write_text("top\n")
    listed = outcome(box, "list_files")
    assert "d/top.txt" in listed and "bottom.txt" not in listed
    assert f"deeper than {MAX_DEPTH} levels" in listed
    assert "deeper than" in outcome(box, "grep", pattern="found")
    answer = outcome(box, "read_file", path="/".join(["d"] * 900) + "/bottom.txt")
    assert answer.startswith("ERROR: refused") and "deep" in answer
    assert run(box, "read_file", path="d/top.txt") == "top\n"


def test_one_huge_line_is_read_in_bounded_memory(work: Path) -> None:
    size = 64 * 1024 * 1024
    with open(work / "huge.txt", "wb") as f:
        f.truncate(size)  # sparse: a 64 MB file of NUL bytes after one 'a'...
        f.seek(0)
        f.write(b"a" * 100_000)
    box = Toolbox(work, ToolSettings())
    # not binary as far as the probe sees; the NULs further on are read as text
    tracemalloc.start()
    try:
        text = box._read_file({"path": "huge.txt"}, time.monotonic() + 60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "truncated at 256000 bytes" in text
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 256 KB answer"


def test_edits_and_writes_are_size_limited(work: Path) -> None:
    box = Toolbox(work, ToolSettings(max_file_bytes=1_000_000))
    (work / "small.txt").write_text("a" * 30_000)
    answer = outcome(box, "edit_file", path="small.txt", old_string="a",
                     new_string="b" * 250, replace_all=True)
    assert answer.startswith("ERROR: refused: the result would be 7500000 bytes")
    assert (work / "small.txt").read_text() == "a" * 30_000
    assert "refused" in outcome(box, "write_file", path="big.txt", content="x" * 1_000_001)
    assert not (work / "big.txt").exists()
    (work / "big_in.txt").write_text("y" * 1_000_001)
    assert "refused" in outcome(box, "edit_file", path="big_in.txt", old_string="y",
                                new_string="z")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, 0])
def test_a_shell_timeout_must_be_a_finite_positive_number(work: Path, timeout: float) -> None:
    box = Toolbox(work, ToolSettings(shell=True, shell_timeout=2))
    with pytest.raises(ToolError, match="positive number of seconds"):
        run(box, "shell", command="sleep 30", timeout=timeout)


def test_any_failure_inside_a_tool_is_a_tool_error(work: Path, box: Toolbox,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(box.jail, "walk", broken)
    answer = outcome(box, "list_files")
    assert answer == "ERROR: list_files failed: RecursionError: maximum recursion depth " \
        "exceeded"
    assert run(box, "read_file", path="inner.txt") == "hello\n"
