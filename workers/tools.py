"""The agent's tools, and what keeps them inside the pool's workdir.

The file tools reach files only through :class:`workers.jail.Jail`: every path is walked
from the workdir one descriptor at a time, so no symlink, ``..``, race or hard link leads
outside, only regular files are opened, and swarm's own files are hidden or read-only.
Reads, writes and edits have size limits and stream, so memory stays bounded whatever a
file looks like. Regular expressions (``grep``, globs) run on the ``regex`` package with a
time limit and without holding the GIL, walks are iterative and bounded, and the file
tools run on a thread pool of their own with a time limit: nothing a tool is asked to do
stops the worker's event loop (its heartbeat and its other tasks), and any failure is a
``ToolError`` the model reads.

The ``shell`` tool (off by default) runs ``/bin/sh -c`` in a sandbox of Linux namespaces
(:mod:`workers.sandbox`): the workdir writable, swarm's own places in it hidden or
read-only, the system read-only, no network unless allowed, no view of other processes,
an environment from an allow-list, and everything it started killed when it ends. A pool
may opt out (``shell_sandbox: false``); the command then runs as the worker's user.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import regex

from workers import sandbox
from workers.jail import VENV_MARK, Entry, Fence, Jail, PathError, Walk

log = logging.getLogger("swarm.tools")

GREP_MAX_LINE_CHARS = 400
MAX_LIST_ENTRIES = 200_000  # entries a listing or a grep looks at, at most
_CHUNK = 65536
_BINARY_PROBE = 8192
# What a shell command's environment may hold besides what the spec names.
SHELL_BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# Never handed to a shell command, even when a spec names them.
SECRET_ENV = frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "SWARM_REDIS_URL",
                        "REDISCLI_AUTH"})
_SANDBOX_FAILED = 125  # workers/_sandbox_init.py: the sandbox could not be built
_executor: ThreadPoolExecutor | None = None


class ToolError(Exception):
    """A refusal or failure; its message is shown to the model as an error result."""


@dataclass(frozen=True)
class ToolSettings:
    read: bool = True
    write: bool = True
    edit: bool = True
    list: bool = True
    grep: bool = True
    shell: bool = False
    shell_timeout: float = 30.0
    shell_sandbox: bool = True
    shell_network: bool = False
    shell_env: tuple[str, ...] = ()  # names passed from the worker's environment
    shell_paths: tuple[str, ...] = ()  # more of the system the sandbox shows, read-only
    max_read_bytes: int = 256_000
    max_output_chars: int = 20_000
    max_file_bytes: int = 4_000_000  # the largest file edit or grep takes, or write makes
    tool_timeout: float = 30.0  # a file tool's time, at most

    @classmethod
    def of(cls, settings: dict[str, Any]) -> ToolSettings:
        """From a spec's ``tools`` mapping (lists become tuples)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in settings.items()}
        return cls(**values)


# --- tool definitions (Messages API) ---------------------------------------------------

def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


_STR = {"type": "string"}
_PATH = {"type": "string", "description": "path relative to the working directory"}

_DEFINITIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (setting, description, input_schema)
    "read_file": ("read", "Read a text file. Optionally from line `offset` (1-based), "
                  "at most `limit` lines. Long files are truncated.",
                  _schema({"path": _PATH,
                           "offset": {"type": "integer", "minimum": 1},
                           "limit": {"type": "integer", "minimum": 1}}, ["path"])),
    "write_file": ("write", "Create or overwrite a file with `content` "
                   "(parent folders are created).",
                   _schema({"path": _PATH, "content": _STR}, ["path", "content"])),
    "edit_file": ("edit", "Replace the exact text `old_string` with `new_string` in a file. "
                  "`old_string` must occur exactly once unless `replace_all` is true.",
                  _schema({"path": _PATH, "old_string": _STR, "new_string": _STR,
                           "replace_all": {"type": "boolean", "default": False}},
                          ["path", "old_string", "new_string"])),
    "list_files": ("list", "List files (sorted relative paths) matching a glob such as "
                   "`**/*.py` (default `**/*`).",
                   _schema({"pattern": {"type": "string", "default": "**/*"}}, [])),
    "grep": ("grep", "Search files for a Python regular expression; prints "
             "`path:line: text` for each matching line.",
             _schema({"pattern": _STR, "glob": {"type": "string", "default": "**/*"},
                      "ignore_case": {"type": "boolean", "default": False}}, ["pattern"])),
    "shell": ("shell", "Run a shell command (/bin/sh -c) in the working directory; "
              "returns its exit code and combined output.",
              _schema({"command": _STR,
                       "timeout": {"type": "number", "description": "seconds"}},
                      ["command"])),
}


# --- argument checks -------------------------------------------------------------------

def _arg(args: dict[str, Any], key: str, kind: type | tuple[type, ...],
         default: Any = ...) -> Any:
    if key not in args or args[key] is None:
        if default is ...:
            raise ToolError(f"missing required argument: {key}")
        return default
    value = args[key]
    bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or bad_bool:
        raise ToolError(f"argument {key} has the wrong type: {type(value).__name__}")
    return value


def _positive(args: dict[str, Any], key: str) -> int | None:
    value = _arg(args, key, int, None)
    if value is not None and value < 1:
        raise ToolError(f"argument {key} must be at least 1")
    return value


def _seconds(args: dict[str, Any], key: str, default: float) -> float:
    value = float(_arg(args, key, (int, float), default))
    if not math.isfinite(value) or value <= 0:
        raise ToolError(f"argument {key} must be a positive number of seconds")
    return value


def _cap(text: str, limit: int, what: str = "chars") -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    cut = cut if cut > 0 else limit
    return text[:cut] + f"\n[... truncated: {len(text) - cut} more {what}]"


# --- glob ------------------------------------------------------------------------------

def glob_regex(pattern: str) -> regex.Pattern[str]:
    """A glob over '/'-separated relative paths: ``**`` spans folders, ``*`` and ``?``
    do not cross '/', ``[...]`` is a character class. Repeats that mean nothing more
    (``**/**/``, ``**``) are folded, so a pattern cannot be made to backtrack on them."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            token, i = "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            token, i = ".*", i + 2
        elif pattern[i] in "*?":
            token, i = ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end].replace("\\", "\\\\")
            token = "[^" + body[1:] + "]" if body[0] in "!^" else "[" + body + "]"
            i = end + 1
        else:
            token, i = regex.escape(pattern[i]), i + 1
        if token in ("(?:.*/)?", ".*", "[^/]*") and out and out[-1] == token:
            continue
        out.append(token)
    return regex.compile("".join(out) + r"\Z", regex.DOTALL)


class Toolbox:
    """The tools of one task, acting inside a workdir (a :class:`Jail`, shared by the
    worker's tasks, or a path)."""

    def __init__(self, workdir: Jail | str | Path, settings: ToolSettings,
                 fence: Fence = Fence()) -> None:
        self.jail = workdir if isinstance(workdir, Jail) else Jail(workdir, fence)
        self.fence = self.jail.fence
        self.root = self.jail.root
        self.settings = settings
        self.files_changed: set[str] = set()

    # --- public ------------------------------------------------------------------------

    def definitions(self) -> list[dict[str, Any]]:
        """Messages API tool definitions of the enabled tools."""
        return [{"name": name, "description": desc, "input_schema": schema}
                for name, (setting, desc, schema) in _DEFINITIONS.items()
                if getattr(self.settings, setting)]

    async def run(self, name: str, tool_input: dict[str, Any]) -> str:
        """Run one tool; the text for the model, or ``ToolError``. Nothing a tool meets
        escapes as another exception."""
        if name == "shell" and not self.settings.shell:
            raise ToolError("refused: the shell tool is off for this pool")
        if name not in _DEFINITIONS:
            raise ToolError(f"unknown tool: {name}")
        if not getattr(self.settings, _DEFINITIONS[name][0]):
            raise ToolError(f"refused: the {name} tool is off for this pool")
        if not isinstance(tool_input, dict):
            raise ToolError("tool input must be an object")
        try:
            if name == "shell":
                return await self._shell(tool_input)
            return await self._in_thread(name, tool_input)
        except ToolError:
            raise
        except PathError as exc:
            raise ToolError(str(exc)) from None
        except OSError as exc:
            raise ToolError(f"{name} failed: {exc.strerror or exc}") from None
        except ValueError as exc:  # e.g. a NUL byte or a lone surrogate in the input
            raise ToolError(f"{name} failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not end the task
            log.exception("tool %s failed", name)
            raise ToolError(f"{name} failed: {type(exc).__name__}: {exc}") from None

    async def _in_thread(self, name: str, tool_input: dict[str, Any]) -> str:
        """A file tool on the tools' own threads, within ``tool_timeout``: the tool is
        given the deadline and stops itself; if it cannot, the model hears so anyway."""
        timeout = self.settings.tool_timeout
        deadline = time.monotonic() + timeout
        sync: Callable[[dict[str, Any], float], str] = getattr(self, "_" + name)
        future = asyncio.get_running_loop().run_in_executor(
            _tool_threads(), sync, tool_input, deadline)
        try:
            return await asyncio.wait_for(future, timeout + 1.0)
        except asyncio.TimeoutError:
            raise ToolError(f"{name} took longer than {timeout:g}s and was abandoned")

    # --- file tools (on the tools' threads) ----------------------------------------------

    def _read_file(self, args: dict[str, Any], deadline: float) -> str:
        path = _arg(args, "path", str)
        offset, limit = _positive(args, "offset") or 1, _positive(args, "limit")
        fd, _ = self.jail.open_read(path)
        with io.BufferedReader(io.FileIO(fd, "rb"), _CHUNK) as f:
            if b"\0" in f.peek(_BINARY_PROBE)[:_BINARY_PROBE]:
                raise ToolError(f"{path} looks binary; not shown")
            text, lines = _read_lines(f, offset, limit, self.settings.max_read_bytes, deadline)
        if text is None:
            raise ToolError(f"offset {offset} is past the end ({lines} lines)")
        return text or "(empty file)"

    def _write_file(self, args: dict[str, Any], deadline: float) -> str:
        path, content = _arg(args, "path", str), _arg(args, "content", str)
        data = content.encode("utf-8")
        self._check_size(len(data), "content")
        rel = self.jail.write(path, data)
        self.files_changed.add(rel)
        return f"wrote {len(data)} bytes to {rel}"

    def _edit_file(self, args: dict[str, Any], deadline: float) -> str:
        path = _arg(args, "path", str)
        old, new = _arg(args, "old_string", str), _arg(args, "new_string", str)
        replace_all = _arg(args, "replace_all", bool, False)
        if old == new:
            raise ToolError("old_string and new_string are the same")
        if not old:
            raise ToolError("old_string is empty")
        fd, _ = self.jail.open_read(path)
        with os.fdopen(fd, "rb") as f:
            self._check_size(os.fstat(fd).st_size, path)
            data = f.read(self.settings.max_file_bytes + 1)
        self._check_size(len(data), path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{path} is not UTF-8 text") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old_string not found in {path}")
        if count > 1 and not replace_all:
            raise ToolError(f"old_string occurs {count} times in {path}; give more context "
                            "to make it unique, or set replace_all")
        grows = len(new.encode("utf-8")) - len(old.encode("utf-8"))
        self._check_size(len(data) + (count if replace_all else 1) * grows, "the result")
        rel = self.jail.write(path, text.replace(old, new, -1 if replace_all else 1)
                              .encode("utf-8"), create=False)
        self.files_changed.add(rel)
        return f"replaced {count if replace_all else 1} occurrence(s) in {rel}"

    def _list_files(self, args: dict[str, Any], deadline: float) -> str:
        pattern = _arg(args, "pattern", str, "**/*")
        paths: list[str] = []
        with self.jail.walk(MAX_LIST_ENTRIES) as walk:
            for entry in self._matching(walk, pattern, deadline):
                paths.append(entry.rel)
        note = _stopped(walk.stopped)
        if not paths:
            return f"(no files match {pattern})" + note
        return _cap("\n".join(paths), self.settings.max_output_chars) + note

    def _grep(self, args: dict[str, Any], deadline: float) -> str:
        flags = regex.IGNORECASE if _arg(args, "ignore_case", bool, False) else 0
        text = _arg(args, "pattern", str)
        try:
            search = _LineSearch(regex.compile(text, flags), text, flags)
        except regex.error as exc:
            raise ToolError(f"bad regular expression: {exc}") from None
        out: list[str] = []
        size, cap = 0, self.settings.max_output_chars
        with self.jail.walk(MAX_LIST_ENTRIES) as walk:
            for entry in self._matching(walk, _arg(args, "glob", str, "**/*"), deadline):
                for hit in self._grep_file(search, entry, deadline):
                    out.append(hit)
                    size += len(hit) + 1
                    if size > cap:
                        return _cap("\n".join(out), cap, "chars; narrow the search")
        return ("\n".join(out) or "(no matches)") + _stopped(walk.stopped)

    def _matching(self, walk: Walk, pattern: str, deadline: float) -> Iterator[Entry]:
        """The walk's files whose path matches the glob ``pattern`` (symlinks only when
        they lead to a regular file inside)."""
        if pattern.startswith("/") or ".." in pattern.replace("\\", "/").split("/"):
            raise ToolError(f"refused: glob pattern escapes the working directory: {pattern}")
        try:
            match = glob_regex(pattern or "**/*").match
        except regex.error as exc:
            raise ToolError(f"bad glob pattern {pattern!r}: {exc}") from None
        for entry in walk:
            if not match(entry.rel, timeout=_left(deadline, "the glob"), concurrent=True):
                continue
            if entry.symlink and not self._leads_to_file(entry):
                continue
            yield entry

    def _leads_to_file(self, entry: Entry) -> bool:
        try:
            os.close(self.jail.open_entry(entry))
        except (PathError, OSError):
            return False
        return True

    def _grep_file(self, search: _LineSearch, entry: Entry,
                   deadline: float) -> Iterator[str]:
        try:
            fd = self.jail.open_entry(entry)
        except (PathError, OSError):
            return
        with os.fdopen(fd, "rb") as f:
            if os.fstat(fd).st_size > self.settings.max_file_bytes:
                return
            data = f.read(self.settings.max_file_bytes + 1)
        if len(data) > self.settings.max_file_bytes or b"\0" in data[:_BINARY_PROBE]:
            return
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        try:
            for lineno, line in search.lines(text, deadline):
                yield f"{entry.rel}:{lineno}: {line[:GREP_MAX_LINE_CHARS]}"
        except TimeoutError:
            raise ToolError(f"grep stopped: the regular expression took too long in "
                            f"{entry.rel} (it may backtrack without end; simplify it)") from None

    def _check_size(self, size: int, what: str) -> None:
        limit = self.settings.max_file_bytes
        if size > limit:
            raise ToolError(f"refused: {what} would be {size} bytes; files here are "
                            f"limited to {limit} bytes")

    # --- shell -------------------------------------------------------------------------

    async def _shell(self, args: dict[str, Any]) -> str:
        command = _arg(args, "command", str)
        limit = self.settings.shell_timeout
        timeout = min(_seconds(args, "timeout", limit), limit)
        if "\0" in command:
            raise ToolError("the command holds a NUL byte")
        argv = ["/bin/sh", "-c", command]
        env = self._shell_env()
        if self.settings.shell_sandbox:
            argv = sandbox.command(self._sandbox_spec(env), argv)
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.root, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        output = _Output(self.settings.max_output_chars)
        reading = asyncio.ensure_future(output.drain(proc.stdout))
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            _killpg(proc.pid)
            await _settle(reading, proc.wait())
            raise ToolError(f"timed out after {timeout:g}s: the command and everything "
                            f"it started were killed\n{output.text()}") from None
        finally:
            _killpg(proc.pid)  # also what it left running in the background
            await _settle(reading)
        text = output.text()
        if self.settings.shell_sandbox and code == _SANDBOX_FAILED and \
                text.startswith("sandbox:"):
            raise ToolError(f"the shell's sandbox could not be built: {text.strip()}")
        return f"exit code: {code}\n{text or '(no output)'}"

    def _shell_env(self) -> dict[str, str]:
        """The command's whole environment: a few harmless basics and the names the
        spec allows, never swarm's secrets."""
        names = (*SHELL_BASE_ENV, *self.settings.shell_env)
        env = {k: os.environ[k] for k in names if k in os.environ and k not in SECRET_ENV}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = "/tmp" if self.settings.shell_sandbox else self.root
        env["TERM"] = "dumb"
        return env

    def _sandbox_spec(self, env: dict[str, str]) -> sandbox.SandboxSpec:
        inside = [p for p in (*self.fence.readonly, *self.fence.import_dirs)
                  if _within(p, self.root) and p != self.root]
        inside += _top_level_protected(self.root)
        outside = [p for p in (sys.base_prefix, sys.prefix, *self.settings.shell_paths)
                   if os.path.exists(p) and not _within(p, self.root)]
        hidden = list(self.fence.hidden)  # masked wherever the sandbox would show them
        return sandbox.SandboxSpec(
            workdir=self.root, hidden=tuple(dict.fromkeys(hidden)),
            readonly=tuple(dict.fromkeys(inside + outside)),
            network=self.settings.shell_network, env=env)


# --- helpers -----------------------------------------------------------------------------

class _LineSearch:
    """A pattern searched line by line, as grep does, each search with a time limit and
    the GIL released.

    A search call costs about 3 µs with a time limit, so a file is not searched a line
    at a time: the whole text is searched (``^`` and ``$`` at line ends), each line
    where a match starts is then checked alone, and the search goes on from the next
    line. No line is missed: a match a line has alone also starts there in the whole
    text, unless the pattern can look beyond the line (lookarounds, atomic groups,
    possessive quantifiers, ``\\A \\Z \\G \\K``); such a pattern is searched line by
    line."""

    _LOOKS_BEYOND = regex.compile(r"\(\?[<=!>]|\\[AZGK]|[*+?}]\+")

    def __init__(self, pattern: regex.Pattern[str], text: str, flags: int) -> None:
        self.pattern = pattern
        self.whole = None if self._LOOKS_BEYOND.search(text) else \
            regex.compile(text, flags | regex.MULTILINE)

    def lines(self, text: str, deadline: float) -> Iterator[tuple[int, str]]:
        """(line number, line) of each line of ``text`` the pattern matches."""
        if self.whole is None:
            for lineno, line in enumerate(_split_lines(text), 1):
                if self._matches(line, deadline):
                    yield lineno, line
            return
        pos, lineno, counted = 0, 1, 0
        while pos <= len(text):
            found = self.whole.search(text, pos, timeout=_time_left(deadline),
                                      concurrent=True)
            if found is None:
                return
            start = text.rfind("\n", 0, found.start()) + 1
            end = text.find("\n", found.start())
            end = len(text) if end < 0 else end
            lineno += text.count("\n", counted, start)
            counted = start
            line = text[start:end]
            if (start < end or end < len(text)) and self._matches(line, deadline):
                yield lineno, line
            pos = end + 1

    def _matches(self, line: str, deadline: float) -> bool:
        return self.pattern.search(line, timeout=_time_left(deadline),
                                   concurrent=True) is not None


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline``; ``TimeoutError`` if it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _tool_threads() -> ThreadPoolExecutor:
    """The file tools' own threads (made on first use, in the worker), so that slow
    tools never starve the loop's default executor."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tool")
    return _executor


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ToolError(f"{what} ran out of time; narrow it down")
    return left


def _read_lines(f: io.BufferedReader[io.FileIO], offset: int, limit: int | None, cap: int,
                deadline: float) -> tuple[str | None, int]:
    """Lines ``offset``.. (at most ``limit``) of a file, at most ``cap`` bytes, read in
    pieces so that memory stays bounded whatever the lines' length. (None, line count)
    if ``offset`` is past the end."""
    taken = bytearray()
    lineno, wanted = 1, 0  # the line being read; lines taken so far
    line_started = False
    while True:
        piece = f.readline(_CHUNK)
        if not piece:
            break
        if time.monotonic() > deadline:
            raise ToolError("read_file ran out of time")
        line_started = True
        if lineno >= offset:
            if limit is not None and wanted >= limit:
                break
            if len(taken) + len(piece) > cap:
                taken += piece[: cap - len(taken)]
                return (_decode(taken) + f"\n[... truncated at {cap} bytes; read on with "
                        f"offset={lineno + 1}]"), lineno
            taken += piece
        if piece.endswith(b"\n"):
            if lineno >= offset:
                wanted += 1
            lineno += 1
            line_started = False
    total = lineno if line_started else lineno - 1
    if offset > max(total, 1):
        return None, total
    return _decode(taken), total


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _stopped(reasons: list[str]) -> str:
    return "".join(f"\n[... {reason}]" for reason in reasons)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _top_level_protected(root: str) -> list[str]:
    """``.git`` and the virtual environments at the top of the workdir: read-only in the
    sandbox as they are to the file tools."""
    found = []
    try:
        with os.scandir(root) as listing:
            for item in listing:
                if not item.is_dir(follow_symlinks=False):
                    continue
                if item.name == ".git" or os.path.lexists(os.path.join(item.path, VENV_MARK)):
                    found.append(item.path)
    except OSError:
        pass
    return found


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _settle(*aws: Awaitable[Any], timeout: float = 2.0) -> None:
    """Wait briefly for cleanup awaitables; never raise."""
    try:
        await asyncio.wait_for(asyncio.gather(*aws, return_exceptions=True), timeout)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001
        pass


class _Output:
    """Combined output of a command, bounded: its head and tail are kept."""

    def __init__(self, max_chars: int) -> None:
        self.half = max(1, max_chars // 2)
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        while stream is not None and (chunk := await stream.read(65536)):
            room = self.half - len(self.head)
            self.head += chunk[:room]
            self.tail += chunk[max(room, 0):]
            if len(self.tail) > self.half:
                self.dropped += len(self.tail) - self.half
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        gap = f"\n[... {self.dropped} bytes of output cut ...]\n" if self.dropped else ""
        return head + gap + tail
