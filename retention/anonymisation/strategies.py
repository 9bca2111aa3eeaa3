"""Anonymisation strategies, registered by name (``null``, ``redact``, ``fake.<provider>``,
``generalise.year|month|day|postcode``, ``generalise.band:N``).

Anonymisation must be irreversible, so no strategy derives its value from the old value in
a way that could be reversed or matched: constants, fresh random fakes (Faker seeded from
the operating system's randomness, sampled with a :class:`random.Random` seeded from ``os.urandom``), or a coarser
value (a year, a postcode's digits) that many people share. There is deliberately no hash.

Three kinds, because they are applied differently:
- ``constant``: one value for every row: a single set-based ``UPDATE``.
- ``expression``: computed by the database from the column itself (truncating a date):
  still one set-based ``UPDATE``; the dialect supplies the SQL.
- ``per_row``: a different fake value per row, drawn from a pool generated once per run and
  written in bulk (see :mod:`retention.databases.dialects`).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa

Kind = Literal["constant", "expression", "per_row"]
DEFAULT_REDACTION = "[verwijderd]"
POOL_SIZE = 4096


def _is_date(col: sa.Column[Any]) -> bool:
    return isinstance(col.type, (sa.Date, sa.DateTime))


def _is_text(col: sa.Column[Any]) -> bool:
    return isinstance(col.type, sa.String)


def _length(col: sa.Column[Any]) -> int | None:
    return getattr(col.type, "length", None)


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: Kind

    def check(self, col: sa.Column[Any]) -> str | None:
        """Why this strategy does not fit the column, or None when it does."""
        return None

    def value(self, col: sa.Column[Any]) -> Any:
        """The constant value (``constant`` kind)."""
        raise NotImplementedError

    def anonymised(self, col: sa.Column[Any]) -> sa.ColumnElement[bool] | None:
        """SQL that is true for a row this strategy has already anonymised, when it can tell."""
        return None


@dataclass(frozen=True)
class Null(Strategy):
    def check(self, col: sa.Column[Any]) -> str | None:
        if not col.nullable:
            return f"column '{col.name}' is NOT NULL, so strategy 'null' cannot be used; try 'redact' or a fake"
        return None

    def value(self, col: sa.Column[Any]) -> Any:
        return None

    def anonymised(self, col: sa.Column[Any]) -> sa.ColumnElement[bool]:
        return col.is_(None)


@dataclass(frozen=True)
class Redact(Strategy):
    text: str = DEFAULT_REDACTION

    def check(self, col: sa.Column[Any]) -> str | None:
        if not _is_text(col):
            return f"strategy 'redact' needs a text column; '{col.name}' is {col.type}"
        length = _length(col)
        if length is not None and len(self.text) > length:
            return f"the redaction text {self.text!r} is longer than column '{col.name}' ({length})"
        return None

    def value(self, col: sa.Column[Any]) -> Any:
        return self.text

    def anonymised(self, col: sa.Column[Any]) -> sa.ColumnElement[bool]:
        return col == self.text


@dataclass(frozen=True)
class Generalise(Strategy):
    """A coarser value that many people share: a date truncated to its year, month or day, a
    postcode cut to its four digits, a whole number floored to a multiple of ``step`` (a band).
    Each is idempotent (generalising twice changes nothing), which the re-identification check
    relies on to compute the future values of rows anonymised before and tonight alike."""

    grain: Literal["year", "month", "day", "postcode", "band"] = "year"
    step: int = 0

    def check(self, col: sa.Column[Any]) -> str | None:
        if self.grain == "postcode":
            if not _is_text(col):
                return f"strategy '{self.name}' needs a text column; '{col.name}' is {col.type}"
        elif self.grain == "band":
            if not isinstance(col.type, sa.Integer):
                return f"strategy '{self.name}' needs an integer column; '{col.name}' is {col.type}"
        elif not _is_date(col):
            return f"strategy '{self.name}' needs a date or datetime column; '{col.name}' is {col.type}"
        return None


@dataclass(frozen=True)
class Fake(Strategy):
    provider: str = ""

    def check(self, col: sa.Column[Any]) -> str | None:
        # The type of the provider's values: known for the common ones, else from a sample.
        kind = _KNOWN_FAKES.get(self.provider) or type(fake_sample(self.provider))
        gives = f"fake.{self.provider} gives {kind.__name__} values, column '{col.name}'"
        if isinstance(col.type, sa.String):
            if not issubclass(kind, str):
                return f"{gives} is text"
        elif isinstance(col.type, sa.DateTime):
            if not issubclass(kind, dt.datetime):
                return f"{gives} is a datetime"
        elif isinstance(col.type, sa.Date):
            if not issubclass(kind, dt.date):
                return f"{gives} is a date"
        elif isinstance(col.type, sa.Integer):
            if not issubclass(kind, int) or issubclass(kind, bool):
                return f"{gives} is an integer"
        return None


_REGISTRY: dict[str, Callable[[str], Strategy]] = {
    "null": lambda spec: Null("null", "constant"),
    "redact": lambda spec: Redact("redact", "constant", _redaction_text(spec)),
    "generalise.year": lambda spec: Generalise("generalise.year", "expression", "year"),
    "generalise.month": lambda spec: Generalise("generalise.month", "expression", "month"),
    "generalise.day": lambda spec: Generalise("generalise.day", "expression", "day"),
    "generalise.postcode": lambda spec: Generalise("generalise.postcode", "expression", "postcode"),
    "generalise.band:N": lambda spec: Generalise(spec, "expression", "band", _band_step(spec) or 0),
    "fake.<provider>": lambda spec: Fake(spec, "per_row", spec.split(".", 1)[1]),
}

_locale = "nl_NL"


def _redaction_text(spec: str) -> str:
    _, _, text = spec.partition(":")
    return text.strip() or DEFAULT_REDACTION


def _band_step(spec: str) -> int | None:
    """N of ``generalise.band:N`` (a whole number from 2), or None."""
    text = spec.partition(":")[2].strip()
    return int(text) if text.isdigit() and int(text) >= 2 else None


def _registry_key(spec: str | None) -> str | None:
    if spec is None or spec == "null":
        return "null"
    if spec.startswith("generalise.band:"):
        return "generalise.band:N" if _band_step(spec) else None
    if spec == "redact" or spec.startswith("redact:"):
        return "redact"
    if spec.startswith("fake.") and len(spec) > 5:
        return "fake.<provider>"
    return spec if spec in _REGISTRY else None


def witnesses(fields: dict[str, str | None]) -> dict[str, Strategy] | None:
    """The fields that show whether a row was already anonymised, or None when none can.

    A ``redact`` field is a reliable witness: it is always set to its marker text. With only
    ``null`` fields, a row whose fields are all NULL is done. Fakes and generalisations leave
    values that look like any other, so they witness nothing.
    """
    specs = {column: resolve(spec) for column, spec in fields.items()}
    redacts = {column: s for column, s in specs.items() if s.name == "redact"}
    if redacts:
        return redacts
    if specs and all(s.name == "null" for s in specs.values()):
        return specs
    return None


def names() -> list[str]:
    return list(_REGISTRY)


def check_name(spec: str | None) -> str | None:
    """Why ``spec`` names no strategy (listing the valid ones), or None."""
    key = _registry_key(spec)
    if key is None and isinstance(spec, str) and spec.startswith("generalise.band"):
        return f"strategy {spec!r}: write generalise.band:N with N a whole number from 2 (e.g. generalise.band:1000)"
    if key is None:
        return f"unknown strategy {spec!r}; valid: {', '.join(names())}, or 'redact: TEXT'"
    if key == "fake.<provider>":
        provider = spec.split(".", 1)[1]  # type: ignore[union-attr]
        if provider.startswith("_"):
            return f"unknown Faker provider {provider!r} for locale {_locale} (e.g. fake.email, fake.name)"
        if provider in _KNOWN_FAKES:
            return None
        if not callable(getattr(_faker(_locale), provider, None)):
            return f"unknown Faker provider {provider!r} for locale {_locale} (e.g. fake.email, fake.name)"
    return None


def resolve(spec: str | None) -> Strategy:
    key = _registry_key(spec)
    if key is None:
        raise ValueError(check_name(spec))
    return _REGISTRY[key](spec or "null")


def check_locale(locale: str) -> None:
    """Accept a Faker locale (and use it for provider checks), or raise ValueError."""
    global _locale
    if not _faker_has_locale(locale):
        raise ValueError(f"unknown Faker locale {locale!r} (e.g. nl_NL, de_DE, en_GB)")
    _locale = locale


def _faker_has_locale(locale: str) -> bool:
    """Whether some Faker provider has the locale: the same set as ``faker.config.AVAILABLE_LOCALES``
    (tests/test_startup_imports.py compares them), read from Faker's package directory instead
    of importing every provider (~50 ms at every start, for a file that may use no fakes)."""
    import importlib.util
    from pathlib import Path

    if not re.fullmatch(r"[A-Za-z]{2,3}(_[A-Za-z0-9]+)*", locale):
        return False
    spec = importlib.util.find_spec("faker")
    if spec is None or spec.origin is None:
        return False
    return any((Path(spec.origin).parent / "providers").glob(f"*/{locale}/__init__.py"))


# The providers policies fake personal data with, and the type of their values, known without
# importing Faker (~60 ms, and a Faker instance, at every start, where the run may have no row to
# fake). tests/test_startup_imports.py asks Faker about each of them in every locale it has:
# present, no error, this type. Any other provider is checked by Faker itself, as it always was
# (phone_number is not here: three locales have none).
_KNOWN_FAKES: dict[str, type] = {
    **dict.fromkeys(
        ["first_name", "first_name_male", "first_name_female", "last_name", "last_name_male", "last_name_female",
         "name", "prefix", "suffix", "email", "free_email", "safe_email", "company_email", "user_name", "url",
         "street_address", "street_name", "street_suffix", "building_number", "address", "city", "postcode",
         "country", "company", "job", "iban", "bban", "swift", "ssn", "license_plate", "ipv4", "ipv6",
         "mac_address", "user_agent", "uuid4", "word", "sentence"], str),
    "random_int": int,
    "date_of_birth": dt.date,
    "date_time": dt.datetime,
}


@lru_cache(maxsize=8)
def _faker(locale: str) -> Any:
    from faker import Faker

    return Faker(locale)


def fake_sample(provider: str) -> Any:
    return getattr(_faker(_locale), provider)()


def _is_unique(col: sa.Column[Any]) -> bool:
    """Whether the column is part of a primary key, unique index or unique constraint."""
    if col.primary_key or col.unique:
        return True
    table = col.table
    if any(ix.unique and col.name in ix.columns for ix in getattr(table, "indexes", ())):
        return True
    return any(
        isinstance(con, sa.UniqueConstraint) and col.name in con.columns for con in getattr(table, "constraints", ())
    )


def _with_digits(value: str, rng: random.Random) -> str:
    digits = str(rng.randrange(10, 100_000))
    local, at, domain = value.partition("@")
    return f"{local}{digits}@{domain}" if at else f"{value}{digits}"


class FakePool:
    """Fake values generated once per run and sampled per row.

    Faker is slow (~17k rows/s for a handful of fields); a pool of a few thousand values per
    strategy costs nothing per row. The pool is sampled with a :class:`random.Random` seeded
    once per run from ``os.urandom(32)`` (Faker itself from ``os.urandom(16)``): the values
    depend on nothing but fresh operating-system randomness, so they carry nothing of the row
    they replace, and no value can be matched back to an old one. Faker is only loaded when a
    fake value is first needed.
    """

    def __init__(self, locale: str, size: int = POOL_SIZE) -> None:
        self._locale = locale
        self._faker_instance: Any = None
        self._size = size
        self._pools: dict[tuple[str, str], list[Any]] = {}
        self._used: dict[tuple[str, str], set[Any]] = {}
        self._random = random.Random(os.urandom(32))

    @property
    def _faker(self) -> Any:
        if self._faker_instance is None:
            from faker import Faker

            self._faker_instance = Faker(self._locale)
            self._faker_instance.seed_instance(int.from_bytes(os.urandom(16), "big"))
        return self._faker_instance

    def _pool(self, provider: str, col: sa.Column[Any]) -> list[Any]:
        key = (provider, f"{col.table.name}.{col.name}")
        if key not in self._pools:
            make = getattr(self._faker, provider)
            length = _length(col)
            values = []
            for _ in range(self._size):
                value = make()
                if isinstance(value, str) and length is not None:
                    value = value[:length]
                values.append(value)
            self._pools[key] = values
        return self._pools[key]

    def draw(self, provider: str, col: sa.Column[Any], count: int) -> list[Any]:
        if _is_unique(col):
            return self._distinct(provider, col, count)
        pool = self._pool(provider, col)
        return self._random.choices(pool, k=count)

    def _distinct(self, provider: str, col: sa.Column[Any], count: int) -> list[Any]:
        """Fresh values never handed out before in this run, for a column under a unique constraint.

        Sampling the pool with replacement would repeat values (a birthday collision is near
        certain within a few hundred rows) and the batch would fail on the constraint. When Faker
        runs short of new values, random digits are added (before the ``@`` of an address).
        """
        key = (provider, f"{col.table.name}.{col.name}")
        used = self._used.setdefault(key, set())
        make = getattr(self._faker, provider)
        length = _length(col)

        def fit(value: Any) -> Any:
            return value[:length] if isinstance(value, str) and length is not None else value

        out: list[Any] = []
        misses = 0
        while len(out) < count:
            value = fit(make())
            if value in used and isinstance(value, str):
                value = fit(_with_digits(value, self._random))
            if value in used:
                misses += 1
                if misses > 100 * (count + 10):
                    raise ValueError(
                        f"fake.{provider} gives too few different values for the unique column "
                        f"'{col.table.name}.{col.name}'"
                    )
                continue
            used.add(value)
            out.append(value)
        return out
