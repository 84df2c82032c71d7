"""The agent's tools, confined to one working directory.

Every path a tool is given is joined to the workdir and resolved with
``os.path.realpath`` (symlinks followed, also a dangling one and symlinked parent
folders); anything that lands outside the workdir is refused with a ``ToolError``.
Files are then opened by their resolved path with ``O_NOFOLLOW``, so a symlink swapped
in after the check is not followed either. ``list_files`` and ``grep`` walk the tree
without following symlinked folders and skip entries whose real path is outside.
The ``.git`` folder is never listed or searched.

File work runs in a thread (``asyncio.to_thread``) so a big grep never blocks the
worker's loop (and so never stops its heartbeat).

The ``shell`` tool is off by default and CANNOT be truly confined: it runs
``/bin/sh -c`` with the workdir as cwd, but the command can read and write anything
the worker's user can. It gets its own process group (killed entirely on timeout and
when the command exits), dies with the worker (PR_SET_PDEATHSIG), and does not
inherit the API key or the Redis URL from the worker's environment; that is all.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from workers.proc import preexec_die_with_parent

GREP_MAX_FILE_BYTES = 4_000_000
GREP_MAX_LINE_CHARS = 400
_BINARY_PROBE = 8192
_SKIP_DIRS = frozenset({".git"})
# Not handed to shell commands: the worker's own credentials.
_SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "SWARM_REDIS_URL",
               "REDISCLI_AUTH")


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
    max_read_bytes: int = 256_000
    max_output_chars: int = 20_000


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


def _cap(text: str, limit: int, what: str = "chars") -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    cut = cut if cut > 0 else limit
    return text[:cut] + f"\n[... truncated: {len(text) - cut} more {what}]"


# --- glob ------------------------------------------------------------------------------

def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated relative paths: ``**`` spans folders, ``*`` and ``?``
    do not cross '/', ``[...]`` is a character class."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body[0] in "!^" else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class Toolbox:
    """The tools of one task, acting inside ``workdir``."""

    def __init__(self, workdir: str | Path, settings: ToolSettings) -> None:
        self.root = os.path.realpath(workdir)
        self.settings = settings
        self.files_changed: set[str] = set()

    # --- public ------------------------------------------------------------------------

    def definitions(self) -> list[dict[str, Any]]:
        """Messages API tool definitions of the enabled tools."""
        return [{"name": name, "description": desc, "input_schema": schema}
                for name, (setting, desc, schema) in _DEFINITIONS.items()
                if getattr(self.settings, setting)]

    async def run(self, name: str, tool_input: dict[str, Any]) -> str:
        """Run one tool; the text for the model, or ``ToolError``."""
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
            sync: Callable[[dict[str, Any]], str] = getattr(self, "_" + name)
            return await asyncio.to_thread(sync, tool_input)
        except OSError as exc:
            raise ToolError(f"{name} failed: {exc.strerror or exc}") from None
        except ValueError as exc:  # e.g. a NUL byte or a lone surrogate in the input
            raise ToolError(f"{name} failed: {exc}") from None

    # --- confinement ---------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """The real absolute path of ``path``, or ``ToolError`` if it is outside."""
        if not path or "\0" in path:
            raise ToolError("refused: empty or invalid path")
        real = os.path.realpath(os.path.join(self.root, path))
        if not self._inside(real):
            raise ToolError(f"refused: path escapes the working directory: {path}")
        return real

    def _inside(self, real: str) -> bool:
        return os.path.commonpath([self.root, real]) == self.root

    def _rel(self, real: str) -> str:
        return Path(os.path.relpath(real, self.root)).as_posix()

    def _walk(self, pattern: str) -> Iterator[tuple[str, str]]:
        """(relative path, real path) of each regular file matching ``pattern``, sorted;
        symlinked folders are not entered, entries resolving outside are skipped."""
        if pattern.startswith("/") or ".." in pattern.replace("\\", "/").split("/"):
            raise ToolError(f"refused: glob pattern escapes the working directory: {pattern}")
        try:
            match = glob_regex(pattern or "**/*").match
        except re.error as exc:
            raise ToolError(f"bad glob pattern {pattern!r}: {exc}") from None
        found = []
        for top, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
            for name in files:
                rel = self._rel(os.path.join(top, name))
                if match(rel):
                    found.append(rel)
        for rel in sorted(found):
            real = os.path.realpath(os.path.join(self.root, rel))
            if self._inside(real) and os.path.isfile(real):
                yield rel, real

    # --- file tools (run in a thread) --------------------------------------------------

    def _read_file(self, args: dict[str, Any]) -> str:
        real = self.resolve(_arg(args, "path", str))
        offset, limit = _positive(args, "offset") or 1, _positive(args, "limit")
        cap = self.settings.max_read_bytes
        lines: list[bytes] = []
        size = total = 0
        with _open(real, os.O_RDONLY) as f:
            if b"\0" in f.peek(_BINARY_PROBE)[:_BINARY_PROBE]:
                raise ToolError(f"{args['path']} looks binary; not shown")
            for total, line in enumerate(f, 1):
                if total < offset:
                    continue
                if limit is not None and len(lines) >= limit:
                    break
                if size + len(line) > cap:
                    lines.append(line[: cap - size])
                    return _decode(lines) + (f"\n[... truncated at {cap} bytes; read on "
                                             f"with offset={total + 1}]")
                lines.append(line)
                size += len(line)
        if offset > max(total, 1):
            raise ToolError(f"offset {offset} is past the end ({total} lines)")
        return _decode(lines) or "(empty file)"

    def _write_file(self, args: dict[str, Any]) -> str:
        path, content = _arg(args, "path", str), _arg(args, "content", str)
        real = self.resolve(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        data = content.encode("utf-8")
        _write(real, data)
        self.files_changed.add(self._rel(real))
        return f"wrote {len(data)} bytes to {self._rel(real)}"

    def _edit_file(self, args: dict[str, Any]) -> str:
        path = _arg(args, "path", str)
        old, new = _arg(args, "old_string", str), _arg(args, "new_string", str)
        replace_all = _arg(args, "replace_all", bool, False)
        if old == new:
            raise ToolError("old_string and new_string are the same")
        if not old:
            raise ToolError("old_string is empty")
        real = self.resolve(path)
        with _open(real, os.O_RDONLY) as f:
            try:
                text = f.read().decode("utf-8")
            except UnicodeDecodeError:
                raise ToolError(f"{path} is not UTF-8 text") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old_string not found in {path}")
        if count > 1 and not replace_all:
            raise ToolError(f"old_string occurs {count} times in {path}; give more context "
                            "to make it unique, or set replace_all")
        _write(real, text.replace(old, new).encode("utf-8"), create=False)
        self.files_changed.add(self._rel(real))
        return f"replaced {count if replace_all else 1} occurrence(s) in {self._rel(real)}"

    def _list_files(self, args: dict[str, Any]) -> str:
        pattern = _arg(args, "pattern", str, "**/*")
        paths = [rel for rel, _ in self._walk(pattern)]
        if not paths:
            return f"(no files match {pattern})"
        return _cap("\n".join(paths), self.settings.max_output_chars)

    def _grep(self, args: dict[str, Any]) -> str:
        flags = re.IGNORECASE if _arg(args, "ignore_case", bool, False) else 0
        try:
            regex = re.compile(_arg(args, "pattern", str), flags)
        except re.error as exc:
            raise ToolError(f"bad regular expression: {exc}") from None
        out, size, cap = [], 0, self.settings.max_output_chars
        for rel, real in self._walk(_arg(args, "glob", str, "**/*")):
            for hit in _grep_file(regex, rel, real):
                out.append(hit)
                size += len(hit) + 1
                if size > cap:
                    return _cap("\n".join(out), cap, "chars; narrow the search")
        return "\n".join(out) or "(no matches)"

    # --- shell -------------------------------------------------------------------------

    async def _shell(self, args: dict[str, Any]) -> str:
        command = _arg(args, "command", str)
        limit = self.settings.shell_timeout
        timeout = min(float(_arg(args, "timeout", (int, float), limit)), limit)
        if timeout <= 0:
            raise ToolError("timeout must be positive")
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=self.root, env=_shell_env(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=preexec_die_with_parent(signal.SIGKILL))
        output = _Output(self.settings.max_output_chars)
        reading = asyncio.ensure_future(output.drain(proc.stdout))
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            _killpg(proc.pid)
            await _settle(reading, proc.wait())
            raise ToolError(f"timed out after {timeout:g}s: the command's process group "
                            f"was killed\n{output.text()}") from None
        finally:
            _killpg(proc.pid)  # also what it left running in the background
            await _settle(reading)
        return f"exit code: {code}\n{output.text() or '(no output)'}"


# --- helpers -----------------------------------------------------------------------------

def _open(real: str, flags: int) -> Any:
    if os.path.isdir(real):
        raise ToolError("is a folder, not a file")
    try:
        fd = os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ToolError("no such file") from None
    except IsADirectoryError:
        raise ToolError("is a folder, not a file") from None
    return os.fdopen(fd, "rb")


def _write(real: str, data: bytes, create: bool = True) -> None:
    flags = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(real, flags | (os.O_CREAT if create else 0), 0o644)
    except IsADirectoryError:
        raise ToolError("is a folder, not a file") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _decode(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")


def _grep_file(regex: re.Pattern[str], rel: str, real: str) -> Iterator[str]:
    try:
        if os.path.getsize(real) > GREP_MAX_FILE_BYTES:
            return
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError:
        return
    if b"\0" in data[:_BINARY_PROBE]:
        return
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if regex.search(line):
            yield f"{rel}:{lineno}: {line[:GREP_MAX_LINE_CHARS]}"


def _shell_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}


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
