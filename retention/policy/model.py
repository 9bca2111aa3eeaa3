"""The policy file's model (CONTRACT.md section 2), validated with pydantic.

Pure: no YAML, no database, no environment. :mod:`retention.policy.loader` reads the file,
expands ``${VAR}`` and turns pydantic's error locations into ``file:line`` messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from retention.policy.dates import ALIGNMENTS, Period, PeriodError, floor_shortfall, parse_period

ACTIONS: tuple[str, ...] = ("delete", "anonymise")
PURGE_LEVELS: tuple[str, ...] = ("none", "standard", "thorough")
ON_REFERENCED: tuple[str, ...] = ("defer", "anonymise", "detach")
# linked: a row held by another policy's `exclude` also holds the rows of this policy linked to
# it by a foreign key (either way); own: only this policy's own `exclude` holds its rows.
HOLDS: tuple[str, ...] = ("linked", "own")
REIDENTIFICATION: tuple[str, ...] = ("enforce", "warn")
# required: a real run applies the policy only from a plan a person approved (retention plan /
# approve / run --plan); without one the policy waits, status `awaiting approval`.
APPROVAL: tuple[str, ...] = ("none", "required")

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _period(value: Any) -> Period:
    if isinstance(value, Period):
        return value
    try:
        return parse_period(value)
    except PeriodError as exc:
        raise ValueError(str(exc)) from None


# Keys that take one word of a fixed list: (the valid words, the name an error uses for the key).
_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "reidentification": (REIDENTIFICATION, "reidentification"),
    "align": (ALIGNMENTS, "align"),
    "minimum_align": (ALIGNMENTS, "align"),
    "action": (ACTIONS, "action"),
    "on_referenced": (ON_REFERENCED, "on_referenced"),
    "approval": (APPROVAL, "approval"),
    "holds": (HOLDS, "holds"),
}


def _one_of(value: Any, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def _maybe_period(value: Any) -> Period | None:
    try:
        return _period(value)
    except ValueError:
        return None


def consistency_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems between the keys of one policy, as (key, message).

    Works on raw (unvalidated) values too, so that the loader can report them next to a
    policy's other mistakes: a value that is itself invalid is skipped here (it has its own
    error).
    """
    out: list[tuple[str, str]] = []
    retain, minimum = _maybe_period(values.get("retain")), _maybe_period(values.get("minimum"))
    align, minimum_align = values.get("align", "none"), values.get("minimum_align", "none")
    if minimum is None and minimum_align not in (None, "none"):
        out.append(("minimum_align", "is the alignment of `minimum`, and there is no `minimum`"))
    if retain is not None and minimum is not None and align in ALIGNMENTS and minimum_align in ALIGNMENTS:
        shortfall = floor_shortfall(retain, align, minimum, minimum_align)
        if shortfall:
            # A term that starts before the floor's count is align's mistake; else retain is too short.
            starts_earlier = ALIGNMENTS.index(align) < ALIGNMENTS.index(minimum_align)
            out.append(("align" if starts_earlier else "retain", shortfall))
    action = values.get("action")
    fields = values.get("fields")
    on_referenced = values.get("on_referenced", "defer")
    cascade = values.get("cascade") or []
    if action == "anonymise" and not fields:
        out.append(("fields", "an anonymise policy needs `fields` (column: strategy)"))
    if action == "delete" and fields and on_referenced != "anonymise":
        out.append(("fields", "a delete policy takes no `fields` (they are only used with on_referenced: anonymise)"))
    if action == "delete" and on_referenced == "anonymise" and not fields:
        out.append(("fields", "on_referenced: anonymise needs `fields` to anonymise with"))
    if action == "anonymise" and on_referenced == "detach":
        out.append(("on_referenced", "detach deletes the row after detaching what references it: "
                                     "only a delete policy detaches"))
    if action == "anonymise" and cascade:
        out.append(("cascade", "only a delete policy deletes child rows"))
    anonymises = action == "anonymise" or on_referenced == "anonymise"
    for key in ("keep", "k_anonymity", "reidentification"):
        if values.get(key) is not None and not anonymises:
            out.append((key, "only a policy that anonymises (action: anonymise, or on_referenced: anonymise) "
                             "takes it"))
    keep = values.get("keep")
    if isinstance(keep, Mapping) and isinstance(fields, Mapping):
        both = [str(c) for c in keep if c in fields]
        if both:
            out.append(("keep", f"{', '.join(map(repr, both))} also in `fields`: a column is either anonymised "
                                "or kept"))
    marker = values.get("marker")
    if isinstance(marker, str):
        if marker == values.get("after"):
            out.append(("marker", f"'{marker}' is the `after` column; the marker needs a column of its own, "
                                  "set when a row is anonymised"))
        elif isinstance(fields, Mapping) and marker in fields:
            out.append(("marker", f"'{marker}' is also in `fields`; the marker needs a column of its own"))
    table = values.get("table")
    if isinstance(table, str) and isinstance(cascade, list) and table in cascade:
        out.append(("cascade", f"the policy's own table {table!r} cannot be its own child"))
    return out


def _zone(value: str) -> str:
    import pendulum

    try:
        pendulum.timezone(value)
    except Exception:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Amsterdam)") from None
    return value


def _reasons(value: Any) -> Any:
    """``keep``: column -> a one-line reason, so the file says why a column survives anonymisation."""
    if not isinstance(value, Mapping):
        return value  # pydantic reports "should be a valid dictionary"
    for column, reason in value.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{column}: give the reason the column is kept, as text "
                             f"(e.g. {column}: \"statistics, generalised to the month\"), got {reason!r}")
    return value


def _single_values(value: Any) -> Any:
    """``exclude`` / ``where``: column -> one value (text, number, true/false or null)."""
    if not isinstance(value, Mapping):
        return value  # pydantic reports "should be a valid dictionary"
    for column, item in value.items():
        if isinstance(item, (Mapping, list, tuple, set)):
            raise ValueError(
                f"{column}: expects a single value per column (text, number, true/false or null), "
                f"got {item!r}; rows match when the column equals it"
            )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# Bounded waits (docs/safety.md, "Timeouts"), in seconds. A server that accepted TCP and never
# answered hung `validate` and `run` for good on PostgreSQL, ~40 s on MariaDB. The lock and
# statement limits are far above any legitimate batch (100,000 rows with cascades take seconds
# to a minute): they stop a night stuck behind a forgotten transaction, not a slow one.
CONNECT_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 300.0
STATEMENT_TIMEOUT_S = 4 * 3600.0


class Database(_Strict):
    url: str
    purge: str = "thorough"
    connect_timeout: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = CONNECT_TIMEOUT_S
    # 0: not set by retention, the server's own setting applies (normally: no limit).
    lock_timeout: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = LOCK_TIMEOUT_S
    statement_timeout: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = STATEMENT_TIMEOUT_S

    def timeouts(self) -> dict[str, float]:
        return {"connect_timeout": self.connect_timeout, "lock_timeout": self.lock_timeout,
                "statement_timeout": self.statement_timeout}

    @field_validator("purge", mode="before")
    @classmethod
    def _purge(cls, v: Any) -> str:
        return _one_of(v, PURGE_LEVELS, "purge level")


class Audit(_Strict):
    path: str = "var/audit/retention.jsonl"
    key_env: str | None = None


class Monitor(_Strict):
    url: str | None = None


class Policy(_Strict):
    name: str
    description: str | None = None
    basis: str | None = None
    database: str | None = None
    table: str
    key: str | None = None
    after: str
    # Extension: the zone whose wall clock a naive `after` column holds (e.g. UTC for
    # WooCommerce's *_gmt columns); default: the file's `timezone`. Aligned in `timezone`.
    after_timezone: str | None = None
    retain: Period
    minimum: Period | None = None
    align: str = "none"
    # Extension: where the statutory `minimum` counts from (e.g. the end of the book year),
    # checked against `retain` + `align` so that no row can be due before the law allows.
    minimum_align: str = "none"
    action: str
    fields: dict[str, str | None] | None = None
    exclude: dict[str, Any] = Field(default_factory=dict)
    where: dict[str, Any] = Field(default_factory=dict)
    cascade: list[str] = Field(default_factory=list)
    on_referenced: str = "defer"
    # Extension: whether holds of other policies (their `exclude`) reach this policy's rows
    # through foreign keys ("linked", the default) or only its own `exclude` holds ("own").
    holds: str = "linked"
    # Extension: a column set to the run's moment when a row is anonymised, so that it is not
    # selected again. Without it, the `redact`/`null` fields tell an anonymised row apart.
    marker: str | None = None
    # Anonymise only: columns left as they are, each with the reason (every column must be
    # accounted for), and the re-identification check's threshold and what failing it does.
    keep: dict[str, str] = Field(default_factory=dict)
    k_anonymity: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    reidentification: str = "enforce"
    max_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    # Extension: batches are sized to take about this long each (adaptive, 1,000-100,000 rows,
    # never more than an explicit `batch_size`); 0: always `batch_size` rows.
    batch_target_ms: Annotated[int, Field(ge=0, le=600_000)] = 500
    approval: str = "none"

    @field_validator("max_fraction", mode="before")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        # pydantic's own words for .nan ("greater than 0") send a reader looking in the wrong place.
        if isinstance(v, bool):
            raise ValueError(f"expected a share of the table between 0 and 1, like 0.5, got {str(v).lower()}")
        if isinstance(v, float) and math.isnan(v):
            raise ValueError("is not a number (.nan); give a share of the table between 0 and 1, like 0.5")
        if isinstance(v, float) and math.isinf(v):
            raise ValueError("is infinite; give a share of the table between 0 and 1, like 0.5")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(f"policy names are letters, digits, '_', '-' and '.', got {v!r}")
        return v

    @field_validator("retain", "minimum", mode="before")
    @classmethod
    def _periods(cls, v: Any) -> Period | None:
        return None if v is None else _period(v)

    @field_validator("after_timezone")
    @classmethod
    def _after_timezone(cls, v: str | None) -> str | None:
        return None if v is None else _zone(v)

    @field_validator("exclude", "where", mode="before")
    @classmethod
    def _conditions(cls, v: Any) -> Any:
        return _single_values(v)

    @field_validator("keep", mode="before")
    @classmethod
    def _keep(cls, v: Any) -> Any:
        return _reasons(v)

    @field_validator("reidentification", "align", "minimum_align", "action", "on_referenced", "approval", "holds",
                     mode="before")
    @classmethod
    def _choice(cls, v: Any, info: ValidationInfo) -> str:
        valid, what = _CHOICES[info.field_name]
        return _one_of(v, valid, what)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        # The loader reports every one of these itself (config.load); this guards code that
        # builds a Policy directly.
        # Only the keys given: a default (k_anonymity 5) is not "given on a delete policy".
        problems = consistency_problems({k: v for k, v in self.__dict__.items() if k in self.model_fields_set})
        if problems:
            key, message = problems[0]
            raise ValueError(f"{key}: {message}")
        return self

    @property
    def anonymises(self) -> bool:
        """Whether any row of this policy may be anonymised (the action, or on_referenced)."""
        return self.action == "anonymise" or self.on_referenced == "anonymise"


class PolicyFile(_Strict):
    version: Literal[1]

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if v != 1 or isinstance(v, bool):
            raise ValueError(f"unsupported version {v!r}: this retention reads policy files of version 1")
        return v
    timezone: str = "Europe/Amsterdam"
    locale: str = "nl_NL"
    databases: dict[str, Database]
    audit: Audit = Field(default_factory=Audit)
    monitor: Monitor = Field(default_factory=Monitor)
    policies: list[Policy]
    # Columns holding personal data in tables no anonymising policy names them for (an invoice's
    # name and address): table -> columns. The re-identification check counts links to them.
    personal: dict[str, list[str]] = Field(default_factory=dict)
    # Filled in by the loader, not read from the file.
    source: str = ""
    source_sha256: str = ""
    # "policy.key" -> line in the file, so database checks can point at the line too.
    locations: dict[str, int] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        return _zone(v)

    @field_validator("databases")
    @classmethod
    def _some_databases(cls, v: dict[str, Database]) -> dict[str, Database]:
        if not v:
            raise ValueError("at least one database is needed")
        return v

    @field_validator("policies")
    @classmethod
    def _some_policies(cls, v: list[Policy]) -> list[Policy]:
        if not v:
            raise ValueError("at least one policy is needed")
        return v

    def personal_columns(self, database: str, table: str) -> list[str]:
        """Columns of ``table`` that hold personal data: the file's ``personal`` list and every
        column an anonymising policy of the same database names in ``fields``."""
        cols = list(self.personal.get(table, []))
        for p in self.policies:
            if p.table == table and self.database_of(p) == database and p.anonymises:
                cols += [c for c in (p.fields or {}) if c != p.after]
        return list(dict.fromkeys(cols))

    def policy(self, name: str) -> Policy:
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)

    def database_of(self, policy: Policy) -> str:
        if policy.database:
            return policy.database
        return next(iter(self.databases))
