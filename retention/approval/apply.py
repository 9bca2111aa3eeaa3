"""Making a plan, approving it, and checking it before a run applies it.

The approval's proof is the audit log, not the plan file: ``plan.approved`` records the plan's
SHA-256 (over its content without approvals). A run with ``--plan`` recomputes that hash from
the file and refuses unless an approval of exactly it is in the log, so an edited key, count
or date is refused even when the file's own approvals list still says "approved".
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum

from retention import __version__
from retention.approval import PlanRefused
from retention.approval import plan as planfile
from retention.audit import log as audit
from retention.errors import UsageError
from retention.policy.model import PolicyFile

DEFAULT_MAX_AGE = pendulum.duration(days=7)


def make(model: PolicyFile, *, as_of: pendulum.DateTime | None = None, policy_names: Sequence[str] = (),
         database: str | None = None) -> dict[str, Any]:
    """The plan document for the selected policies at ``as_of`` (default: now), read-only."""
    from retention.engine import runner
    from retention.engine.validation import connect_and_check

    # A plan looks ahead like a preview; its run will only apply what is due by then.
    moment = runner.resolve_as_of(as_of, model.timezone, dry_run=True)
    selected = runner.select_policies(model, policy_names, database)
    connected = connect_and_check(model, selected, readonly=True)
    try:
        plans = runner.make_plans(model, selected, connected, moment)
        identities: dict[str, dict[str, Any]] = {}
        entries = []
        for plan in plans:
            engine = connected.engines[plan.database]
            with engine.connect() as conn:
                if plan.database not in identities:
                    identities[plan.database] = planfile.database_identity(engine, conn)
                counts = plan.count(conn, cascade=True)
                fates = planfile.walk_fates(conn, plan)
                entries.append(planfile.policy_entry(plan, counts, fates))
                conn.rollback()
    finally:
        connected.dispose()
    return planfile.document(model, moment, identities, entries)


def _run_id(prefix: str) -> str:
    return f"{prefix}-{pendulum.now('UTC').format('YYYYMMDD[T]HHmmss[Z]')}-{uuid.uuid4().hex[:8]}"


def summary_counts(doc: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per policy, how many keys of each fate: what an approval signs (never the keys themselves)."""
    return {p["name"]: {f: int(p["counts"][f]) for f in planfile.FATES} for p in doc["policies"]}


def approve(path: Path, doc: dict[str, Any], audit_paths: Sequence[Path], key: bytes | None, *,
            by: str, role: str | None, note: str | None) -> dict[str, Any]:
    """Record the approval in every audit log the plan's databases write to, then in the file."""
    check_consistent(path, doc)
    sha = planfile.content_sha256(doc)
    approval = {"by": by, "role": role, "note": note, "at": pendulum.now("UTC").isoformat(),
                "user": getpass.getuser(), "host": socket.gethostname()}
    run_id = _run_id("approve")
    for audit_path in audit_paths:
        with audit.AuditLog(audit_path, key).open() as log_:
            log_.append("plan.approved", run_id, plan=sha, plan_file=str(path), as_of=doc["as_of"],
                        created=doc["created"], policy_file_sha256=doc["policy_file_sha256"],
                        approver=by, role=role, note=note, user=approval["user"], host=approval["host"],
                        counts=summary_counts(doc), version=__version__)
    doc.setdefault("approvals", []).append(approval | {"plan": sha, "audit_run": run_id})
    planfile.write(path, doc)
    return approval | {"plan": sha}


def check_consistent(path: Path, doc: dict[str, Any]) -> None:
    """The counts a person reads must be the keys a run applies: refuse a file where they differ."""
    for pk in planfile.policies(doc, path):
        for fate in planfile.FATES:
            n = len(pk.fates[fate])
            if pk.entry["counts"].get(fate) != n or pk.entry["keys"][fate].get("count") != n:
                raise PlanRefused(f"plan {path}: policy {pk.name!r}: {fate} count "
                                  f"{pk.entry['counts'].get(fate)} but {n} keys listed: the file was edited; "
                                  "make a new plan (retention plan)")


def approvals_in_log(audit_path: Path, sha: str, key: bytes | None = None) -> list[dict[str, Any]]:
    """The ``plan.approved`` entries naming ``sha`` whose own hash is right (with the chain's
    key, when it is keyed: a line appended by someone without the key does not count)."""
    if not audit_path.exists():
        return []
    needle = sha.encode()
    found = []
    for _n, raw in audit.read_raw_lines(audit_path):
        if needle in raw and b'"plan.approved"' in raw:
            entry, problem = audit._check_line(raw, key)
            if (problem is None and entry is not None and entry.get("event") == "plan.approved"
                    and entry.get("plan") == sha):
                found.append(entry)
    return found


@dataclass
class ApprovedPlan:
    """A plan cleared for a run: its hash, approvals and, per policy, the keys it may change."""

    path: Path
    sha256: str
    doc: dict[str, Any]
    approvals: list[dict[str, Any]]
    keys: dict[str, list[Any]] = field(default_factory=dict)
    # Per policy, the keys the plan anonymises (of ``keys``); the others it deletes.
    anonymise: dict[str, set[Any]] = field(default_factory=dict)

    @property
    def policy_names(self) -> list[str]:
        return list(self.keys)


def parse_max_age(text: str) -> pendulum.Duration:
    """``7d``, ``36h``, ``90m``, ``0s``: how old a plan may be when it is applied."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise UsageError(f"--plan-max-age {text!r}: give a number and a unit, e.g. 7d, 36h, 90m")
    return pendulum.duration(**{units[text[-1]]: int(text[:-1])})


def load_for_run(path: Path, model: PolicyFile, audit_path: Path, *,
                 max_age: pendulum.Duration = DEFAULT_MAX_AGE, key: bytes | None = None) -> ApprovedPlan:
    """The plan at ``path``, if it may be applied with this policy file tonight; else PlanRefused."""
    doc = planfile.read(path)
    sha = planfile.content_sha256(doc)
    check_consistent(path, doc)
    approvals = approvals_in_log(audit_path, sha, key)
    if not approvals:
        listed = bool(doc.get("approvals"))
        raise PlanRefused(
            f"plan {path} ({sha[:12]}): " + (
                "its approvals list names no plan.approved entry of this content in the audit log "
                f"{audit_path}: the file was edited after approval; make a new plan" if listed else
                "not approved; approve it first: retention approve PLAN --by NAME"))
    created = pendulum.parse(doc["created"])
    age = pendulum.now("UTC") - created  # type: ignore[operator]
    if age > max_age:
        raise PlanRefused(f"plan {path}: made {doc['created']}, {age.in_words()} ago, older than the maximum "
                          f"age {max_age.in_words()} (--plan-max-age); make and approve a new plan")
    if doc["policy_file_sha256"] != model.source_sha256:
        raise PlanRefused(f"plan {path}: the policy file {model.source} changed since the plan was made "
                          f"(SHA-256 {model.source_sha256[:12]}, plan {doc['policy_file_sha256'][:12]}); "
                          "make and approve a new plan")
    by_name = {p.name: p for p in model.policies}
    keys: dict[str, list[Any]] = {}
    anonymise: dict[str, set[Any]] = {}
    for pk in planfile.policies(doc, path):
        policy = by_name.get(pk.name)
        if policy is None:
            raise PlanRefused(f"plan {path}: policy {pk.name!r} is no longer in the policy file")
        if pk.entry["rule_sha256"] != planfile.rule_sha256(policy) or pk.entry["rule"] != planfile.rule_of(policy):
            changed = [k for k, v in planfile.rule_of(policy).items() if pk.entry["rule"].get(k) != v]
            raise PlanRefused(f"plan {path}: policy {pk.name!r}: its rule changed since the plan "
                              f"({', '.join(changed) or 'digest'}); make and approve a new plan")
        keys[pk.name] = pk.to_apply
        # Only a delete policy has both fates (on_referenced: anonymise) to tell apart.
        anonymise[pk.name] = set(pk.fates["anonymise"]) if policy.action == "delete" else set()
    return ApprovedPlan(path, sha, doc, approvals, keys, anonymise)


def _ident(ident: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ident.items() if v is not None)


def check_databases(approved: ApprovedPlan, connected: Any) -> None:
    """Refuse a plan made on another database than the one the run connects to (same name in
    the policy file, another server or file: a copy's keys are not this database's rows)."""
    now: dict[str, dict[str, Any]] = {}
    for name, engine in connected.engines.items():
        with engine.connect() as conn:
            now[name] = planfile.database_identity(engine, conn)
            conn.rollback()
    for name, ident in approved.doc["databases"].items():
        here = now.get(name)
        # The URL's parts always; what the server says only where both times could ask it
        # (a plan made by a superuser, applied by a role that cannot read the system identifier).
        base = ("dialect", "host", "port", "database")
        if here is not None and any(here.get(k) != v for k, v in ident.items() if k in base or k in here):
            raise PlanRefused(f"plan {approved.path}: database {name!r} is not the one planned "
                              f"({_ident(ident)}; now {_ident(here)})")
