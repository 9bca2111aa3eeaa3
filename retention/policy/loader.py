"""Reading a policy file: safe YAML, ``${VAR}`` expansion, and located error messages.

Every problem of a file is collected and reported at once as ``file:line: policy 'x',
key 'y': what is wrong``, so that a DPO fixing a file does not have to re-run once per
mistake. Nothing here touches a database.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url

from retention.anonymisation import strategies
from retention.errors import PolicyFileError
from retention.policy.model import Audit, Database, Monitor, Policy, PolicyFile, consistency_problems

Loc = tuple[str | int, ...]

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
# Filled in by the loader: a file may not set them.
_INTERNAL = ("source", "source_sha256", "locations")
# Only these parts of the file are expanded: they are where secrets and per-host paths live.
_EXPANDED = ("databases", "audit", "monitor")

# Limits on what a policy file may make the loader do (docs/safety.md, "Hostile policy files").
# A real file is a few kB, 4-5 levels deep, a few hundred nodes; these are 50-100 times that.
# Without them a 1 kB "billion laughs" file took 23.8 GB and 7 minutes, and 5,000 nested
# brackets ended in RecursionError.
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


def default_policy_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("RETENTION_POLICIES") or "policies.yaml")


class _Located:
    """Line numbers of every key and item, by their path in the document."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[Loc, int]] = []

    def walk(self, node: yaml.Node, loc: Loc = ()) -> None:
        # Bounded by _GuardedLoader: at most MAX_DEPTH deep and MAX_NODES nodes, aliases expanded.
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                # A collection as a key (`? [a, b]`) is refused when constructed; name it meanwhile.
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
                if key in seen:
                    self.duplicates.append((loc + (key,), key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[loc + (key,)] = key_node.start_mark.line + 1
                self.walk(value_node, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, loc + (i,))

    def line(self, loc: Loc) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())


class _Problems:
    def __init__(self, path: Path, located: _Located, data: Any) -> None:
        self.path, self.located, self.data = path, located, data
        self.items: list[tuple[int, str]] = []

    def policy_name(self, loc: Loc) -> str | None:
        if len(loc) >= 2 and loc[0] == "policies" and isinstance(loc[1], int):
            try:
                name = self.data["policies"][loc[1]].get("name")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = None
            return str(name) if name is not None else f"#{loc[1] + 1}"
        return None

    def add(self, loc: Loc, message: str, line: int | None = None) -> None:
        line = line if line is not None else self.located.line(loc)
        where = f"{self.path}:{line}" if line else str(self.path)
        policy = self.policy_name(loc)
        key_path = [str(k) for k in (loc[2:] if policy is not None else loc) if not isinstance(k, int)]
        parts = []
        if policy is not None:
            parts.append(f"policy '{policy}'")
        if key_path:
            parts.append(f"key '{'.'.join(key_path)}'")
        subject = ", ".join(parts)
        self.items.append((line or 0, f"{where}: {subject}: {message}" if subject else f"{where}: {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            self.items.sort(key=lambda item: item[0])
            raise PolicyFileError([text for _, text in self.items])


class _Refused(Exception):
    """A policy file the loader will not finish reading (too big, too deep, aliases that explode)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _GuardedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounded depth, bounded alias expansion and no stray exceptions.

    The composer is recursive (5,000 nested brackets: RecursionError) and shares aliased nodes,
    so everything that walks the composed tree afterwards (line numbers, ``${VAR}`` expansion,
    pydantic) does the work of the *expanded* document: each node's expanded size and depth is
    counted once, as it is composed, and the file refused as soon as they pass the limits.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # The scanner looks ahead through nested brackets for a possible key, re-checking every
        # open one per token: 5,000 '[' took seconds before the composer saw any depth.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(self.line + 1, f"nested more than {MAX_DEPTH} levels deep")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._size:
                raise _Refused(event.start_mark.line + 1,
                               f"YAML alias *{event.anchor} refers to the node it is inside (a recursive alias)")
        line = self.peek_event().start_mark.line + 1  # of an alias: where it is used
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep")
            node = super().compose_node(parent, index)
            if id(node) not in self._size:
                children: list[yaml.Node] = []
                if isinstance(node, yaml.SequenceNode):
                    children = list(node.value)
                elif isinstance(node, yaml.MappingNode):
                    children = [n for pair in node.value for n in pair]
                sizes = [self._size[id(c)] for c in children]
                self._size[id(node)] = (1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0))
            nodes, depth = self._size[id(node)]
            if nodes > MAX_NODES:
                raise _Refused(line,
                               f"more than {MAX_NODES} values once YAML aliases are expanded "
                               "(an alias bomb, \"billion laughs\"?)")
            if self._depth - 1 + depth > MAX_DEPTH:
                raise _Refused(line,
                               f"nested more than {MAX_DEPTH} levels deep once YAML aliases are expanded")
            return node
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError) as exc:
            # A plain scalar that looks like a date but is none (2024-99-99), an integer of
            # 5,000 digits: PyYAML lets Python's own error through, without a line.
            text = str(exc).split(";")[0]
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value ({text})",
                                                    node.start_mark) from None


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: _Problems) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, loc + (k,), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, loc + (i,), env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        # Name the variable only: the rest of the value may be a URL with credentials.
        problems.add(loc, f"environment variable ${{{name}}} is not set and has no default")
        return ""

    return _VAR.sub(substitute, value)


def _keys_at(loc: Loc) -> list[str]:
    """The keys the file may use in the mapping at ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = None
    if len(loc) == 0:
        model = PolicyFile
    elif len(loc) == 2 and loc[0] == "policies" and isinstance(loc[1], int):
        model = Policy
    elif len(loc) == 2 and loc[0] == "databases":
        model = Database
    elif loc == ("audit",):
        model = Audit
    elif loc == ("monitor",):
        model = Monitor
    return [k for k in model.model_fields if k not in _INTERNAL] if model else []


def _unknown_key(loc: Loc) -> str:
    valid = _keys_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; valid: {', '.join(valid)}" if valid else "unknown key"


def _pydantic_problems(exc: ValidationError, problems: _Problems) -> None:
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        if loc and loc[0] in _INTERNAL:
            continue  # reported as an unknown key by _cross_checks
        if kind == "extra_forbidden":
            problems.add(loc, _unknown_key(loc))
            continue
        if kind == "missing":
            problems.add(loc, "is required")
            continue
        if kind == "value_error" and len(loc) == 2 and loc[0] == "policies" and isinstance(loc[1], int):
            continue  # a policy's cross-key check: reported by _cross_checks, with all the others
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        # Model-level checks name their key in the message ("retain: ..."): move it into the loc.
        if kind == "value_error" and ": " in msg and msg.split(": ", 1)[0].isidentifier():
            key, msg = msg.split(": ", 1)
            loc = loc + (key,)
        problems.add(loc, msg)


def _cross_checks(data: dict[str, Any], problems: _Problems) -> None:
    """Checks across keys and policies, on the raw data: they run even where the model did not
    validate, so that every mistake of a file is reported at once."""
    for key in _INTERNAL:
        if key in data:
            problems.add((key,), _unknown_key((key,)))
    locale = data.get("locale", "nl_NL")
    if isinstance(locale, str):
        try:
            strategies.check_locale(locale)  # first: fake.<provider> is checked in this locale
        except ValueError as exc:
            problems.add(("locale",), str(exc))
    personal = data.get("personal")
    if isinstance(personal, dict):
        for table, cols in personal.items():
            if isinstance(cols, list) and not cols:
                problems.add(("personal", table), "list the table's personal columns, e.g. [customer_name, "
                                                  "billing_street], or leave the table out")
    databases = data.get("databases")
    names = [str(n) for n in databases] if isinstance(databases, dict) else None
    policies = data.get("policies")
    if not isinstance(policies, list):
        return
    seen: dict[str, int] = {}
    for i, policy in enumerate(policies):
        if not isinstance(policy, dict):
            continue
        loc: Loc = ("policies", i)
        name = policy.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.add(loc + ("name",), f"duplicate policy name (also policy #{seen[name] + 1})")
            seen.setdefault(name, i)
        database = policy.get("database")
        if names:
            if database is None and len(names) > 1:
                problems.add(loc + ("database",), "is required when the file names several databases")
            elif isinstance(database, str) and database not in names:
                problems.add(loc + ("database",), f"unknown database {database!r}; defined: {', '.join(names)}")
        fields = policy.get("fields")
        if isinstance(fields, dict):
            for column, strategy in fields.items():
                if strategy is None or isinstance(strategy, str):
                    error = strategies.check_name(strategy)
                    if error:
                        problems.add(loc + ("fields", column), error)
        for key, message in consistency_problems(policy):
            problems.add(loc + (key,), message)


def _resolve_paths(model: PolicyFile, base: Path) -> PolicyFile:
    """Relative paths in the file are relative to the file, so cron's working directory doesn't matter."""
    databases = {}
    for name, db in model.databases.items():
        url = db.url
        try:
            parsed = make_url(url)
        except Exception:
            parsed = None
        if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database:
            if parsed.database != ":memory:" and not Path(parsed.database).is_absolute():
                url = parsed.set(database=str(base / parsed.database)).render_as_string(hide_password=False)
        databases[name] = db.model_copy(update={"url": url})
    audit_path = Path(model.audit.path)
    audit = model.audit.model_copy(
        update={"path": str(audit_path if audit_path.is_absolute() else base / audit_path)}
    )
    return model.model_copy(update={"databases": databases, "audit": audit})


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refused by size before anything parses them."""
    with path.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise PolicyFileError([
            f"{path}: refused: larger than {MAX_BYTES // 1024} kB (a policy file is a few kB; "
            "this is not one, or it was overwritten)"
        ])
    return raw


def _read(path: Path) -> tuple[bytes, Any, _Located]:
    """The file's bytes, its YAML document and where each key is; PolicyFileError if unreadable."""
    try:
        raw = _read_bounded(path)
    except FileNotFoundError:
        raise PolicyFileError([f"{path}: policy file not found (set --policies or $RETENTION_POLICIES)"]) from None
    except OSError as exc:
        raise PolicyFileError([f"{path}: cannot read the policy file: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None

    located = _Located()
    try:
        loader = _GuardedLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                located.walk(node)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _Refused as exc:
        raise PolicyFileError([f"{path}:{exc.line}: refused: {exc.message}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = f"invalid YAML: {exc.problem or 'cannot be read'}"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in (exc.problem or ""):
            problem = f"{exc.problem}: only plain YAML is allowed (no !!python or custom tags)"
        elif exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != mark.line:
            # The mistake is often where the construct began (an unclosed '['), not where it was noticed.
            problem += f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
        raise PolicyFileError([f"{path}{line}: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError([f"{path}: invalid YAML: {exc}"]) from None

    return raw, data, located


def load(path: Path | str, env: Mapping[str, str] | None = None) -> PolicyFile:
    """Read, expand and validate a policy file; raise :class:`PolicyFileError` with every problem."""
    path = Path(path)
    env = os.environ if env is None else env
    raw, data, located = _read(path)
    problems = _Problems(path, located, data)
    if not isinstance(data, dict):
        problems.add((), "expected a mapping with version, databases and policies")
        problems.raise_if_any()
    for loc, line in located.duplicates:
        problems.add(loc, "appears twice in the same mapping", line=line)

    expanded = dict(data)
    for section in _EXPANDED:
        if section in expanded:
            expanded[section] = _expand(expanded[section], (section,), env, problems)

    model: PolicyFile | None = None
    try:
        model = PolicyFile.model_validate(expanded)
    except ValidationError as exc:
        _pydantic_problems(exc, problems)
    _cross_checks(expanded, problems)
    problems.raise_if_any()
    assert model is not None
    model = _resolve_paths(model, path.resolve().parent)
    locations = {
        ".".join(str(k) for k in (model.policies[loc[1]].name, *loc[2:])): line
        for loc, line in located.lines.items()
        if len(loc) >= 3 and loc[0] == "policies" and isinstance(loc[1], int)
    }
    for i, policy in enumerate(model.policies):
        locations.setdefault(policy.name, located.line(("policies", i)) or 0)
    # '#' cannot start a policy name, so these never collide with a policy's keys.
    locations.update({
        "#personal." + ".".join(str(k) for k in loc[1:2]): line
        for loc, line in located.lines.items() if len(loc) == 2 and loc[0] == "personal"
    })
    return model.model_copy(
        update={"source": str(path), "source_sha256": hashlib.sha256(raw).hexdigest(), "locations": locations}
    )


def load_audit(path: Path | str, env: Mapping[str, str] | None = None) -> Audit:
    """Only the ``audit`` section, for the `audit` commands: they read the log, never a
    database, so the databases' ``${VAR}`` (URLs with credentials) need not be set, and a
    mistake elsewhere in the file does not keep an inspector from checking the log."""
    path = Path(path)
    env = os.environ if env is None else env
    _raw, data, located = _read(path)
    problems = _Problems(path, located, data)
    if not isinstance(data, dict):
        problems.add((), "expected a mapping with version, databases and policies")
        problems.raise_if_any()
    section = _expand(data.get("audit") or {}, ("audit",), env, problems)
    audit: Audit | None = None
    try:
        audit = Audit.model_validate(section)
    except ValidationError as exc:
        for err in exc.errors():
            loc: Loc = ("audit", *err["loc"])
            problems.add(loc, _unknown_key(loc) if err["type"] == "extra_forbidden" else err["msg"])
    problems.raise_if_any()
    assert audit is not None
    audit_path = Path(audit.path)
    if not audit_path.is_absolute():
        audit_path = path.resolve().parent / audit_path
    return audit.model_copy(update={"path": str(audit_path)})


def monitor_url(path: Path | str, env: Mapping[str, str] | None = None) -> str | None:
    """``monitor.url`` of a file that did not load, read from its raw YAML when that parses at all.

    So that a broken file (exit 2) still reaches the dead-man's switch that night, instead of
    leaving it to notice a missing ping when its grace period ends. None when there is no
    readable URL; never raises.
    """
    path = Path(path)
    env = os.environ if env is None else env
    try:
        loader = _GuardedLoader(_read_bounded(path).decode("utf-8"))
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except Exception:
        return None
    monitor = data.get("monitor") if isinstance(data, dict) else None
    url = monitor.get("url") if isinstance(monitor, dict) else None
    if not isinstance(url, str):
        return None
    problems = _Problems(path, _Located(), data)
    url = _expand(url, ("monitor", "url"), env, problems)
    return url if url and not problems.items else None
