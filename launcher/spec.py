"""The swarm spec: YAML in, typed and validated models (launcher/spec_model.py) out.

Every mistake becomes a :class:`SpecError` whose text is one line naming the file, the
line and the field, e.g. ``swarm.yaml:7: pools.haiku.workers: must be >= 1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from launcher.spec_roles import role_problems
from launcher.spec_model import (  # noqa: F401 - the spec's names, importable from here
    NAME,
    Backoff,
    Heartbeat,
    Logs,
    Pool,
    PriceOverride,
    RateLimit,
    Restart,
    SwarmSpec,
    Tools,
    yaml_scalar,
    iter_worker_ids,
    json_schema,
    machine_host,
)

class SpecError(Exception):
    """A user's mistake in the spec; ``str()`` is the whole one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """Escape line breaks and other control characters so a message stays one line."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Loc = tuple[Any, ...]


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> SwarmSpec:
    """Read, expand and validate a spec file; relative paths are taken from its folder."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{label}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{label}: cannot read: {exc}") from None
    environ = os.environ if environ is None else environ
    data, lines = _read_yaml(text, label)
    data = _expand(data, (), lines, label, environ)
    try:
        spec = SwarmSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, lines, label) from None
    for loc, problem in role_problems(spec):
        raise SpecError(f"{label}:{_line_of(loc, lines)}: {_dotted(loc)}: {problem}")
    _resolve(spec, path, lines, label)
    if spec.host is None and environ.get("SWARM_HOST"):
        if not NAME.match(environ["SWARM_HOST"]):
            raise SpecError(f"SWARM_HOST: {environ['SWARM_HOST']!r} must be letters, "
                            "digits, '_', '.', '-' (at most 63)")
        spec._host = environ["SWARM_HOST"]
    return spec


def _resolve(spec: SwarmSpec, path: Path, lines: dict[Loc, int], label: str) -> None:
    from launcher.fence import fence_for, workdir_problem

    base = path.resolve().parent
    spec._source = path.resolve()
    spec.state_dir = (base / spec.state_dir).resolve()
    spec.logs.dir = (base / spec.logs.dir).resolve()
    fence = fence_for(spec)
    for name, pool in spec.pools.items():
        loc = ("pools", name, "workdir")
        pool.workdir = (base / pool.workdir).resolve()
        pool.tools.shell_paths = tuple((base / p).resolve() for p in pool.tools.shell_paths)
        if not pool.workdir.is_dir():
            problem: str | None = f"no such directory: {pool.workdir}"
        else:
            problem = workdir_problem(pool.workdir, fence)
        if problem:
            raise SpecError(f"{label}:{_line_of(loc, lines)}: {_dotted(loc)}: {problem}")


def _read_yaml(text: str, label: str) -> tuple[Any, dict[Loc, int]]:
    try:
        return _compose(text, label)
    except RecursionError:
        raise SpecError(f"{label}: invalid YAML: nested too deeply") from None


def _compose(text: str, label: str) -> tuple[Any, dict[Loc, int]]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow
        raise SpecError(f"{label}: invalid YAML: {exc}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{label}:1: the spec is empty")
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        _index_lines(node, (), lines, label)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(f"{label}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: invalid YAML: {exc}") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # a tagged scalar PyYAML cannot build (`!!int abc`), a 5000-digit number, ...
        raise SpecError(f"{label}: invalid YAML value: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(f"{label}:{lines[()]}: the spec must be a mapping of fields")
    return data, lines


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int], label: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise SpecError(f"{label}:{line}: {_dotted(loc)}: keys must be plain names")
            key = key_node.value
            if key in seen and key != "<<":
                line = key_node.start_mark.line + 1
                raise SpecError(f"{label}:{line}: {_dotted(loc + (key,))}: duplicate key")
            seen.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, loc + (key,), lines, label)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            _index_lines(item, loc + (index,), lines, label)


def _expand(value: Any, loc: Loc, lines: dict[Loc, int], label: str, environ: Any) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in every string value (not in keys)."""
    if isinstance(value, dict):
        return {k: _expand(v, loc + (k,), lines, label, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, loc + (i,), lines, label, environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found not in (None, ""):
            return str(found)
        if default is not None:
            return default
        line = _line_of(loc, lines)
        raise SpecError(f"{label}:{line}: {_dotted(loc)}: environment variable {name} is not set")

    return _VAR.sub(substitute, value)


def _first_error(exc: ValidationError, lines: dict[Loc, int], label: str) -> SpecError:
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        found.append((_line_of(loc, lines), _dotted(loc), _message(err)))
    found.sort(key=lambda item: item[0])
    line, field, message = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    where = f"{field}: " if field else ""
    return SpecError(f"{label}:{line}: {where}{message}{more}")


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int:
    """The line of the deepest known part of ``loc``. The index is keyed by each key's
    YAML text, the data by its value (``1`` for ``1:``), so compare as text."""
    while loc:
        for candidate in (loc, tuple(yaml_scalar(p) if not isinstance(p, str) else p
                                     for p in loc)):
            if candidate in lines:
                return lines[candidate]
        loc = loc[:-1]
    return lines[()]


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "path_type": "must be a path",
}


def _message(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx and kind.startswith(("greater", "less")):
            return f"must be {op} {ctx[bound]}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


