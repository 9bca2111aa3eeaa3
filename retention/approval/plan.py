"""The plan file: what a run would change, key by key, for a person to approve.

A plan is one JSON document (gzip'd when its name ends in ``.gz``)::

    {"format": "retention-plan/1", "created": ..., "as_of": ..., "policy_file": ...,
     "policy_file_sha256": ..., "databases": {name: identity}, "policies": [...],
     "approvals": [...]}

Its SHA-256 is over the canonical JSON of everything but ``approvals``: approving adds to the
file without changing what was approved, and any other edit (a key, a count, a date) gives
another hash, which no ``plan.approved`` entry of the audit log names.

Integer keys are stored as runs: ``[start, length, gap, length, gap, length, ...]`` where a
gap is the distance from the end of the previous run (1M keys in order: a few bytes; 1M keys
scattered over a table: ~5 bytes each before gzip). Other keys are a plain sorted list.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa

from retention.databases import dialects
from retention.engine.planning import Plan, _jsonable
from retention.errors import InvalidInput
from retention.policy.model import Policy, PolicyFile

FORMAT = "retention-plan/1"
# The fates a plan gives a due key; a run applies only the first two.
FATES = ("delete", "anonymise", "defer")
APPLIED_FATES = ("delete", "anonymise")
# What decides which keys a policy selects and what happens to them: any change refuses the plan.
RULE_KEYS = ("table", "key", "after", "after_timezone", "retain", "align", "minimum", "minimum_align",
             "where", "exclude", "action", "on_referenced", "cascade", "holds", "fields", "marker",
             "max_fraction", "approval")
WALK_CHUNK = 50_000


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_sha256(doc: dict[str, Any]) -> str:
    """The plan's identity: everything but the approvals."""
    return hashlib.sha256(canonical({k: v for k, v in doc.items() if k != "approvals"})).hexdigest()


def rule_of(policy: Policy) -> dict[str, Any]:
    """A policy's effective rule (defaults filled in), as JSON values."""
    out: dict[str, Any] = {}
    for name in RULE_KEYS:
        value = getattr(policy, name)
        out[name] = value if value is None or isinstance(value, (str, int, float, bool, list, dict)) else str(value)
    return out


def rule_sha256(policy: Policy) -> str:
    return hashlib.sha256(canonical(rule_of(policy))).hexdigest()


# -- keys ------------------------------------------------------------------------------------
def encode_keys(keys: Sequence[Any]) -> dict[str, Any]:
    """Sorted keys, compact: integer runs when every key is an integer, else the list."""
    if keys and all(type(k) is int for k in keys):
        runs: list[int] = []
        start = prev = keys[0]
        end_before = 0
        for k in [*keys[1:], None]:
            if k is not None and k == prev + 1:
                prev = k
                continue
            runs += [start if not runs else start - end_before, prev - start + 1]
            end_before = prev + 1
            if k is not None:
                start = prev = k
        return {"count": len(keys), "int_runs": runs}
    return {"count": len(keys), "values": [_jsonable(k) for k in keys]}


def decode_keys(encoded: dict[str, Any]) -> list[Any]:
    if "int_runs" in encoded:
        runs = encoded["int_runs"]
        if len(runs) % 2 or not all(type(v) is int for v in runs):
            raise ValueError("int_runs must be pairs of integers")
        out: list[int] = []
        at = 0
        for i in range(0, len(runs), 2):
            start = runs[i] if i == 0 else at + runs[i]
            if runs[i + 1] < 1 or (i and runs[i] < 1):
                raise ValueError("int_runs must be ascending runs of at least one key")
            out.extend(range(start, start + runs[i + 1]))
            at = start + runs[i + 1]
        return out
    values = encoded.get("values")
    if not isinstance(values, list):
        raise ValueError("keys need int_runs or values")
    return values


# -- making a plan -----------------------------------------------------------------------------
def walk_fates(conn: sa.Connection, plan: Plan) -> dict[str, list[Any]]:
    """Every due key of the policy with the fate tonight's run would give it, by the same SQL as
    the Executor (``Plan.due`` walked by key, ``Plan.blocked_among`` per chunk)."""
    t, dialect = plan.table, conn.dialect.name
    fates: dict[str, list[Any]] = {f: [] for f in FATES}
    last: Any = None
    while True:
        query = sa.select(plan.key).where(plan.due(t))
        if last is not None:
            query = query.where(plan.key > last)
        keys = [r[0] for r in conn.execute(query.order_by(plan.key).limit(WALK_CHUNK))]
        if not keys:
            return fates
        last = keys[-1]
        if plan.policy.action == "anonymise":
            fates["anonymise"] += keys
        elif plan.detaches:  # every due row goes, after what points at it is detached
            fates["delete"] += keys
        else:
            blocked = plan.blocked_among(conn, keys, functools.partial(dialects.key_in, keys=keys, dialect=dialect))
            anonymise = plan.policy.on_referenced == "anonymise"
            for k in keys:
                if k not in blocked:
                    fates["delete"].append(k)
                elif anonymise and blocked[k]:
                    fates["anonymise"].append(k)
                else:
                    fates["defer"].append(k)


def database_identity(engine: sa.Engine, conn: sa.Connection) -> dict[str, Any]:
    url = engine.url
    ident: dict[str, Any] = {"dialect": engine.dialect.name, "host": url.host, "port": url.port,
                             "database": url.database}
    if engine.dialect.name == "sqlite" and url.database:
        ident["database"] = str(Path(url.database).resolve())
    return ident | dialects.server_identity(conn)


def policy_entry(plan: Plan, counts: Any, fates: dict[str, list[Any]]) -> dict[str, Any]:
    p = plan.policy
    return {
        "name": p.name, "database": plan.database, "table": p.table, "key_column": plan.key.name,
        "action": p.action, "cutoff": plan.cutoff.isoformat(), "basis": p.basis,
        "rule": rule_of(p), "rule_sha256": rule_sha256(p),
        "counts": {"table_rows": counts.total, "due": counts.due, "held": counts.held,
                   "unreadable": counts.unreadable, "deferred": counts.deferred,
                   **{f: len(fates[f]) for f in FATES},
                   "cascaded": dict(counts.cascaded), "detached": counts.detached,
                   "detached_columns": dict(counts.detached_columns),
                   "held_reasons": dict(counts.held_reasons), "deferred_reasons": dict(counts.reasons)},
        "keys": {f: encode_keys(fates[f]) for f in FATES},
    }


def document(model: PolicyFile, moment: pendulum.DateTime, databases: dict[str, dict[str, Any]],
             policies: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created": pendulum.now("UTC").isoformat(),
        "as_of": moment.isoformat(),
        "timezone": model.timezone,
        "policy_file": model.source,
        "policy_file_sha256": model.source_sha256,
        "databases": databases,
        "policies": policies,
        "approvals": [],
    }


# -- the file ------------------------------------------------------------------------------------
def write(path: Path, doc: dict[str, Any]) -> None:
    """Written whole to a temporary file and renamed: an approval never leaves half a plan."""
    # Compact: `retention plan show` is how a person reads it.
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"plan {path}: cannot read ({exc.strerror})") from None
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        doc = json.loads(data)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"plan {path}: not a plan file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidInput(f"plan {path}: not a plan file (format is not {FORMAT!r})")
    for name in ("as_of", "created", "policy_file_sha256", "policies", "databases"):
        if name not in doc:
            raise InvalidInput(f"plan {path}: `{name}` missing")
    return doc


@dataclass
class PolicyKeys:
    """One policy of a plan, its keys decoded."""

    entry: dict[str, Any]
    fates: dict[str, list[Any]]

    @property
    def name(self) -> str:
        return str(self.entry["name"])

    @property
    def to_apply(self) -> list[Any]:
        """The keys a run may change for this policy (delete or anonymise), sorted."""
        keys = [k for f in APPLIED_FATES for k in self.fates[f]]
        return sorted(keys) if self.fates["delete"] and self.fates["anonymise"] else keys


def policies(doc: dict[str, Any], path: Path) -> Iterator[PolicyKeys]:
    for entry in doc["policies"]:
        try:
            fates = {f: decode_keys(entry["keys"][f]) for f in FATES}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"plan {path}: policy {entry.get('name')!r}: unreadable keys ({exc})") from None
        yield PolicyKeys(entry, fates)
