"""The agent's tools: what they do inside the workdir, and that nothing gets out."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import tools
from workers.tools import Toolbox, ToolError, ToolSettings, glob_regex


def run(box: Toolbox, name: str, **args: Any) -> str:
    return asyncio.run(box.run(name, args))


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file contents, or the target of a symlink."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = os.readlink(path) if path.is_symlink() else (
            path.read_bytes() if path.is_file() else "dir")
    return found


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """tmp/work (the workdir, with symlinks that lead out) beside tmp/outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET sentinel\n")
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    (work / "a" / "inner.txt").write_text("hello\n")
    (work / "link_file").symlink_to(outside / "secret.txt")
    (work / "link_dir").symlink_to(outside)
    (work / "dangling").symlink_to(outside / "new.txt")
    (work / "rel_link").symlink_to("../outside/secret.txt")
    return work


@pytest.fixture
def box(work: Path) -> Toolbox:
    return Toolbox(work, ToolSettings())


def _escapes(outside: str) -> list[tuple[str, dict[str, Any]]]:
    secret = f"{outside}/secret.txt"
    return [
        ("read_file", {"path": secret}),
        ("read_file", {"path": "/etc/passwd"}),
        ("read_file", {"path": "../outside/secret.txt"}),
        ("read_file", {"path": "a/../../outside/secret.txt"}),
        ("read_file", {"path": "link_file"}),
        ("read_file", {"path": "rel_link"}),
        ("read_file", {"path": "link_dir/secret.txt"}),
        ("write_file", {"path": f"{outside}/new.txt", "content": "x"}),
        ("write_file", {"path": "../outside/secret.txt", "content": "x"}),
        ("write_file", {"path": "a/../../outside/new.txt", "content": "x"}),
        ("write_file", {"path": "link_file", "content": "x"}),
        ("write_file", {"path": "link_dir/new.txt", "content": "x"}),
        ("write_file", {"path": "link_dir/sub/new.txt", "content": "x"}),
        ("write_file", {"path": "dangling", "content": "x"}),
        ("edit_file", {"path": "link_file", "old_string": "SECRET", "new_string": "x"}),
        ("edit_file", {"path": secret, "old_string": "SECRET", "new_string": "x"}),
        ("edit_file", {"path": "link_dir/secret.txt", "old_string": "SECRET",
                       "new_string": "x"}),
        ("list_files", {"pattern": "../*"}),
        ("list_files", {"pattern": "../outside/**"}),
        ("list_files", {"pattern": "/etc/*"}),
        ("list_files", {"pattern": "a/../../*"}),
        ("grep", {"pattern": "SECRET", "glob": "../*"}),
        ("grep", {"pattern": "root", "glob": "/etc/*"}),
        ("grep", {"pattern": "SECRET", "glob": "../outside/*"}),
        ("shell", {"command": f"cat {secret}; rm -f {secret}"}),
    ]


@pytest.mark.parametrize("case", range(len(_escapes("/o"))),
                         ids=[f"{n}:{next(iter(a.values()))}" for n, a in _escapes("/o")])
def test_escape_attempts_are_refused_and_touch_nothing(work: Path, box: Toolbox,
                                                       case: int) -> None:
    outside = work.parent / "outside"
    before = snapshot(outside)
    name, args = _escapes(str(outside))[case]
    with pytest.raises(ToolError, match="refused"):
        run(box, name, **args)
    assert snapshot(outside) == before
    assert box.files_changed == set()


def test_escape_messages_are_clear(box: Toolbox) -> None:
    with pytest.raises(ToolError) as err:
        run(box, "read_file", path="../x")
    assert str(err.value) == "refused: path escapes the working directory: ../x"
    with pytest.raises(ToolError) as err:
        run(box, "shell", command="true")
    assert str(err.value) == "refused: the shell tool is off for this pool"


def test_walks_never_return_what_symlinks_lead_to(work: Path, box: Toolbox) -> None:
    assert run(box, "list_files") == "a/inner.txt"
    assert run(box, "grep", pattern="SECRET") == "(no matches)"
    assert run(box, "grep", pattern=".", glob="link_dir/*") == "(no matches)"


def test_symlinks_that_stay_inside_are_fine(work: Path, box: Toolbox) -> None:
    (work / "alias").symlink_to(work / "a" / "inner.txt")
    assert run(box, "read_file", path="alias") == "hello\n"
    assert run(box, "list_files", pattern="alias") == "alias"
    run(box, "edit_file", path="alias", old_string="hello", new_string="bye")
    assert (work / "a" / "inner.txt").read_text() == "bye\n"
    assert box.files_changed == {"a/inner.txt"}


def test_absolute_paths_inside_are_allowed(work: Path, box: Toolbox) -> None:
    assert run(box, "read_file", path=str(work / "a" / "inner.txt")) == "hello\n"
    run(box, "write_file", path=str(work / "b.txt"), content="b")
    assert box.files_changed == {"b.txt"}


# --- definitions and dispatch ------------------------------------------------------------

def test_definitions_offer_only_enabled_tools(work: Path) -> None:
    names = [d["name"] for d in Toolbox(work, ToolSettings()).definitions()]
    assert names == ["read_file", "write_file", "edit_file", "list_files", "grep", "hand_back"]
    some = Toolbox(work, ToolSettings(write=False, edit=False, grep=False, shell=True,
                                      hand_back=False))
    assert [d["name"] for d in some.definitions()] == ["read_file", "list_files", "shell"]
    with pytest.raises(ToolError, match="refused: the hand_back tool is off"):
        run(some, "hand_back", reason="too hard")
    for definition in some.definitions():
        assert set(definition) == {"name", "description", "input_schema"}
        assert definition["input_schema"]["type"] == "object"
    with pytest.raises(ToolError, match="refused: the write_file tool is off"):
        run(some, "write_file", path="x", content="y")
    assert not (work / "x").exists()


@pytest.mark.parametrize("name,args,message", [
    ("nope", {}, "unknown tool: nope"),
    ("read_file", {}, "missing required argument: path"),
    ("read_file", {"path": 3}, "wrong type"),
    ("read_file", {"path": "a/inner.txt", "offset": 0}, "at least 1"),
    ("read_file", {"path": "a/inner.txt", "limit": True}, "wrong type"),
    ("read_file", {"path": ""}, "refused"),
    ("read_file", {"path": "a/\0x"}, "refused"),
    ("read_file", {"path": "missing.txt"}, "no such file"),
    ("read_file", {"path": "a"}, "folder"),
    ("write_file", {"path": "a", "content": "x"}, "folder"),
    ("write_file", {"path": "x.txt"}, "missing required argument: content"),
    ("write_file", {"path": "x.txt", "content": "\ud800"}, "failed"),
    ("grep", {"pattern": "("}, "bad regular expression"),
])
def test_bad_input_is_a_tool_error(box: Toolbox, name: str, args: dict[str, Any],
                                   message: str) -> None:
    with pytest.raises(ToolError, match=message):
        run(box, name, **args)
    assert box.files_changed == set()


# --- read / write / edit -----------------------------------------------------------------

def test_write_creates_folders_and_read_reads_back(work: Path, box: Toolbox) -> None:
    assert run(box, "write_file", path="x/y/z.txt", content="one\ntwo\n") == \
        "wrote 8 bytes to x/y/z.txt"
    assert (work / "x" / "y" / "z.txt").read_text() == "one\ntwo\n"
    assert run(box, "read_file", path="x/y/z.txt") == "one\ntwo\n"
    run(box, "write_file", path="./x/../top.txt", content="")
    assert run(box, "read_file", path="top.txt") == "(empty file)"
    assert box.files_changed == {"x/y/z.txt", "top.txt"}


def test_read_offset_and_limit(work: Path, box: Toolbox) -> None:
    (work / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    assert run(box, "read_file", path="n.txt", offset=3, limit=2) == "line 3\nline 4\n"
    assert run(box, "read_file", path="n.txt", offset=10) == "line 10\n"
    assert run(box, "read_file", path="n.txt", limit=1) == "line 1\n"
    assert run(box, "read_file", path="n.txt", offset=9, limit=50) == "line 9\nline 10\n"
    with pytest.raises(ToolError, match="past the end"):
        run(box, "read_file", path="n.txt", offset=11)


def test_read_is_capped_and_refuses_binary(work: Path) -> None:
    box = Toolbox(work, ToolSettings(max_read_bytes=100))
    (work / "big.txt").write_text("x" * 30 + "\n" + "y" * 500 + "\n" + "z\n")
    out = run(box, "read_file", path="big.txt")
    assert out.startswith("x" * 30 + "\n" + "y" * 69 + "\n[... truncated at 100 bytes")
    assert "offset=3" in out
    (work / "bin").write_bytes(b"\x7fELF\0\0\1")
    with pytest.raises(ToolError, match="binary"):
        run(box, "read_file", path="bin")


def test_edit_replaces_a_unique_string(work: Path, box: Toolbox) -> None:
    (work / "f.py").write_text("a = 1\nb = 2\na = 1\n")
    with pytest.raises(ToolError, match="occurs 2 times"):
        run(box, "edit_file", path="f.py", old_string="a = 1", new_string="a = 3")
    with pytest.raises(ToolError, match="not found"):
        run(box, "edit_file", path="f.py", old_string="c = 1", new_string="c = 3")
    with pytest.raises(ToolError, match="same"):
        run(box, "edit_file", path="f.py", old_string="b = 2", new_string="b = 2")
    assert box.files_changed == set()
    run(box, "edit_file", path="f.py", old_string="b = 2", new_string="b = 5")
    assert (work / "f.py").read_text() == "a = 1\nb = 5\na = 1\n"
    out = run(box, "edit_file", path="f.py", old_string="a = 1", new_string="a = 0",
              replace_all=True)
    assert out == "replaced 2 occurrence(s) in f.py"
    assert (work / "f.py").read_text() == "a = 0\nb = 5\na = 0\n"
    assert box.files_changed == {"f.py"}


def test_edit_keeps_the_file_mode(work: Path, box: Toolbox) -> None:
    script = work / "run.sh"
    script.write_text("echo old\n")
    script.chmod(0o755)
    run(box, "edit_file", path="run.sh", old_string="old", new_string="new")
    assert script.stat().st_mode & 0o777 == 0o755


# --- list / grep -------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,path,matches", [
    ("**/*", "a.py", True), ("**/*", "a/b/c.py", True), ("*.py", "a.py", True),
    ("*.py", "a/b.py", False), ("**/*.py", "a/b/c.py", True), ("**/*.py", "c.py", True),
    ("a/**", "a/b/c", True), ("a/**", "b/c", False), ("src/*/x.txt", "src/q/x.txt", True),
    ("src/*/x.txt", "src/q/r/x.txt", False), ("?.md", "a.md", True), ("?.md", "ab.md", False),
    ("[ab].txt", "b.txt", True), ("[!ab].txt", "b.txt", False), ("a+b.txt", "a+b.txt", True),
])
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


def test_list_files_sorted_files_only(work: Path, box: Toolbox) -> None:
    for rel in ("z.py", "b/c.py", "b/d.txt", ".git/HEAD", ".hidden"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    (work / "empty_dir").mkdir()
    assert run(box, "list_files").split("\n") == [
        ".hidden", "a/inner.txt", "b/c.py", "b/d.txt", "z.py"]
    assert run(box, "list_files", pattern="*.py") == "z.py"
    assert run(box, "list_files", pattern="**/*.py") == "b/c.py\nz.py"
    assert run(box, "list_files", pattern="nothing*") == "(no files match nothing*)"


def test_list_files_is_capped(work: Path) -> None:
    box = Toolbox(work, ToolSettings(max_output_chars=100))
    for i in range(50):
        (work / f"file_{i:03d}.txt").write_text("")
    out = run(box, "list_files", pattern="file_*")
    lines = out.split("\n")
    assert lines[0] == "file_000.txt" and lines[-1].startswith("[... truncated")
    assert len(out) < 200


def test_grep_finds_lines(work: Path, box: Toolbox) -> None:
    (work / "src").mkdir()
    (work / "src" / "m.py").write_text("import os\ndef Main():\n    pass\n")
    (work / "notes.md").write_text("main idea\r\nother\n")
    (work / "blob.bin").write_bytes(b"main\0\0\0")
    assert run(box, "grep", pattern="main") == "notes.md:1: main idea"
    assert run(box, "grep", pattern="main", ignore_case=True) == \
        "notes.md:1: main idea\nsrc/m.py:2: def Main():"
    assert run(box, "grep", pattern=r"^\s+pass$", glob="**/*.py") == "src/m.py:3:     pass"
    assert run(box, "grep", pattern="zzz") == "(no matches)"


def test_grep_skips_big_files_and_is_capped(work: Path) -> None:
    (work / "big.txt").write_text("needle\n" * 1000)
    (work / "small.txt").write_text("needle\n" * 100)
    box = Toolbox(work, ToolSettings(max_output_chars=300, max_file_bytes=1000))
    out = run(box, "grep", pattern="needle")
    assert "big.txt" not in out
    assert out.startswith("small.txt:1: needle\nsmall.txt:2: needle\n")
    assert "truncated" in out.split("\n")[-1] and len(out) < 400


# --- shell -------------------------------------------------------------------------------

@pytest.fixture(params=[True, False], ids=["sandboxed", "unsandboxed"])
def shell_box(work: Path, request: pytest.FixtureRequest) -> Toolbox:
    return Toolbox(work, ToolSettings(shell=True, shell_timeout=2.0,
                                      shell_sandbox=request.param,
                                      shell_env=("SWARM_TOOLS_TEST",)))


def test_shell_reports_exit_code_and_output(work: Path, shell_box: Toolbox) -> None:
    assert run(shell_box, "shell", command="echo out; echo err >&2; exit 3") == \
        "exit code: 3\nout\nerr\n"
    assert run(shell_box, "shell", command="pwd") == f"exit code: 0\n{work}\n"
    assert run(shell_box, "shell", command="true") == "exit code: 0\n(no output)"


def test_shell_timeout_kills_everything_it_started(work: Path, shell_box: Toolbox) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out after 0.5s") as err:
        run(shell_box, "shell", command="echo begun; sleep 3071.5 & wait", timeout=0.5)
    assert time.monotonic() - started < 5
    assert "begun" in str(err.value)
    assert_none_left("3071.5")


def test_shell_timeout_is_capped_by_the_settings(shell_box: Toolbox) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out after 2s"):
        run(shell_box, "shell", command="sleep 30", timeout=1000)
    assert time.monotonic() - started < 6


def test_shell_leaves_nothing_running_behind(shell_box: Toolbox) -> None:
    out = run(shell_box, "shell", command="sleep 3072.5 >/dev/null 2>&1 &")
    assert out == "exit code: 0\n(no output)"
    assert_none_left("3072.5")


def test_the_sandboxed_shell_leaves_not_even_a_new_session_behind(work: Path) -> None:
    box = Toolbox(work, ToolSettings(shell=True))
    out = run(box, "shell", command="setsid sleep 3073.5 >/dev/null 2>&1 & "
                                    "(setsid sh -c 'sleep 3073.5 &' &) ; echo started")
    assert out == "exit code: 0\nstarted\n"
    assert_none_left("3073.5")


def test_shell_output_is_capped_and_keeps_head_and_tail(work: Path) -> None:
    box = Toolbox(work, ToolSettings(shell=True, max_output_chars=100))
    out = run(box, "shell", command="echo START; head -c 100000 /dev/zero | tr '\\0' x; "
                                    "echo; echo END")
    assert out.startswith("exit code: 0\nSTART\n") and out.endswith("END\n")
    assert "bytes of output cut" in out and len(out) < 250


def test_shell_gets_only_the_environment_the_spec_names(shell_box: Toolbox,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    monkeypatch.setenv("SWARM_TOOLS_TEST", "visible")
    monkeypatch.setenv("SOMETHING_ELSE", "not named")
    out = run(shell_box, "shell", command='echo "[$ANTHROPIC_API_KEY][$SWARM_TOOLS_TEST]'
                                          '[$SOMETHING_ELSE]"')
    assert out == "exit code: 0\n[][visible][]\n"


def test_the_sandbox_shows_more_folders_read_only_when_the_spec_asks(work: Path) -> None:
    more = work.parent / "toolchain"
    more.mkdir()
    (more / "tool.txt").write_text("a tool\n")
    hidden = Toolbox(work, ToolSettings(shell=True))
    assert run(hidden, "shell", command=f"cat {more}/tool.txt").startswith("exit code: 1")
    shown = Toolbox(work, ToolSettings(shell=True, shell_paths=(str(more),)))
    assert run(shown, "shell", command=f"cat {more}/tool.txt") == "exit code: 0\na tool\n"
    out = run(shown, "shell", command=f"echo x > {more}/tool.txt")
    assert not out.startswith("exit code: 0") and (more / "tool.txt").read_text() == "a tool\n"


def assert_none_left(marker: str) -> None:
    """No process is left whose command line is ``sleep <marker>``."""
    def left() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["cmdline"] == ["sleep", marker] and \
                    proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        return found

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left(), f"still running: sleep {marker}"


@pytest.mark.parametrize("pattern", [
    r"^b", r"b$", r"^$", r"\s*y", r"x\s*", r"a\nb", r"(?<!a)b", r"(?<![\s])b", r"\Ab",
    r"b\Z", r"(?>\s*)$", r"\s*+$", r"[^x]+", r"\bb\b", r"(?s).b", r"", r"^\s+$",
])
def test_grep_finds_each_line_a_line_by_line_search_finds(work: Path, box: Toolbox,
                                                           pattern: str) -> None:
    """grep searches a file whole first: it must report exactly the lines a search of
    each line alone reports, whatever the pattern."""
    import regex

    text = "ab\nb\n\n  \ny\nay\nx\n\nxb\r\nb b\n  b\n"
    (work / "f.txt").write_bytes(text.encode())
    lines = text.replace("\r\n", "\n").split("\n")[:-1]
    expected = [f"f.txt:{n}: {line}" for n, line in enumerate(lines, 1)
                if regex.search(pattern, line)]
    assert run(box, "grep", pattern=pattern, glob="f.txt") == \
        ("\n".join(expected) or "(no matches)")


_TOKENS = ["a", "b", " ", r"\s", "^", "$", ".", "*", "+", "?", r"\n", "[ab]", "[^a]",
           "(a|b)", r"\b", "(?m)", "{2}"]


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=6),
       text=st.text(alphabet="ab \n\r", max_size=40))
def test_grep_agrees_with_a_search_of_each_line(tokens: list[str], text: str,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    import regex

    pattern = "".join(tokens)
    try:
        regex.compile(pattern)
    except regex.error:
        return
    work = tmp_path_factory.mktemp("grep")
    (work / "f.txt").write_bytes(text.encode())
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    expected = [f"f.txt:{n}: {line}" for n, line in enumerate(lines, 1)
                if regex.search(pattern, line)]
    box = Toolbox(work, ToolSettings())
    try:
        assert run(box, "grep", pattern=pattern, glob="f.txt") == \
            ("\n".join(expected) or "(no matches)")
    finally:
        box.jail.close()
