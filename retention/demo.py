"""A demo database shaped like a small Dutch web shop, so that `retention run` has real work.

Ten years of accounts, orders, invoices and customer-service tickets, with Faker ``nl_NL``
names and addresses. The shop grows over time (more recent activity than old), about a
third of its customers have deregistered, a few are under legal hold, and a set of
deliberate edge cases is always present (events on 29 February, on 31 December 23:59:59
and 1 January 00:00:00, exactly on a cut-off, deregistered customers whose invoices must
still be kept, deregistered customers with an open ticket, ...).

The output is deterministic for a given ``seed``, ``today`` and ``accounts``. Every
datetime is naive local wall-clock time (Europe/Amsterdam) before midnight at the start
of ``today``; no generated time falls in the hour that does not exist when summer time
starts (last Sunday of March, 02:00-03:00).

Speed: Faker is slow, so small pools of Faker values are made once and combined with a
``random.Random``; rows are inserted in chunks (executemany), never all held in memory.

Public API: :func:`shop_metadata`, :func:`create_shop`, :func:`build_demo`, :class:`DemoSummary`.
"""

from __future__ import annotations

import bisect
import calendar
import datetime
import math
import pathlib
import random
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from faker import Faker

from retention.errors import InvalidInput

__all__ = ["DemoSummary", "build_demo", "build_in", "create_shop", "shop_metadata", "TABLES"]

#: The shop's tables, parents before children (the order rows are inserted in).
TABLES: tuple[str, ...] = ("accounts", "orders", "invoices", "invoice_lines", "tickets", "ticket_messages")

#: Accounts generated (with all their rows) per insert chunk: ~4-8k rows per table per executemany.
CHUNK_ACCOUNTS = 4_000

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- schema


def shop_metadata(partitioned: bool = False) -> sa.MetaData:
    """The demo shop's tables, in a fresh MetaData on every call. ``partitioned``: ``orders``
    range-partitioned by ``ordered_at`` (PostgreSQL only; the partitions: :func:`_order_partitions`),
    whose key is then ``(id, ordered_at)``: PostgreSQL wants the partition column in it."""
    md = sa.MetaData()
    # Harmless elsewhere; on MySQL/MariaDB: transactional tables that enforce foreign keys, full UTF-8.
    kw: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
    sa.Table(
        "accounts",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("street", sa.String(200), nullable=True),
        sa.Column("postcode", sa.String(10), nullable=True),
        sa.Column("city", sa.String(100), nullable=True),
        sa.Column("birth_date", sa.Date, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("deregistered_at", sa.DateTime, nullable=True, index=True),
        sa.Column("legal_hold", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
        **kw,
    )
    sa.Table(
        "orders",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # Nullable, as in a real shop: guest orders have no account, and an order kept for its
        # own 7 years is detached from an account deleted after 24 months (on_referenced: detach).
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
        sa.Column("ordered_at", sa.DateTime, nullable=False, index=True, primary_key=partitioned),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total_cents", sa.Integer, nullable=False),
        sa.Column("shipping_street", sa.String(200)),
        sa.Column("shipping_postcode", sa.String(10)),
        sa.Column("shipping_city", sa.String(100)),
        **kw,
        **({"postgresql_partition_by": "RANGE (ordered_at)"} if partitioned else {}),
    )
    sa.Table(
        "invoices",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
        sa.Column("number", sa.String(20), nullable=False, unique=True),
        sa.Column("issued_at", sa.Date, nullable=False, index=True),
        sa.Column("customer_name", sa.String(200), nullable=False),
        sa.Column("billing_street", sa.String(200)),
        sa.Column("billing_postcode", sa.String(10)),
        sa.Column("billing_city", sa.String(100)),
        sa.Column("total_cents", sa.Integer, nullable=False),
        sa.Column("vat_cents", sa.Integer, nullable=False),
        **kw,
    )
    sa.Table(
        "invoice_lines",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("invoice_id", sa.Integer, sa.ForeignKey("invoices.id"), nullable=False, index=True),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price_cents", sa.Integer, nullable=False),
        sa.Column("vat_rate", sa.Integer, nullable=False),
        **kw,
    )
    sa.Table(
        "tickets",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("opened_at", sa.DateTime, nullable=False),
        sa.Column("closed_at", sa.DateTime, nullable=True, index=True),
        # The ticket's last activity: closing it, or its last message while open. The
        # correspondence term runs from here (policies.yaml): a ticket nobody touched for two
        # years is as handled as it will ever be.
        sa.Column("last_activity_at", sa.DateTime, nullable=False, index=True),
        sa.Column("legal_hold", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
        **kw,
    )
    sa.Table(
        "ticket_messages",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ticket_id", sa.Integer, sa.ForeignKey("tickets.id"), nullable=False, index=True),
        sa.Column("sent_at", sa.DateTime, nullable=False),
        sa.Column("sender", sa.String(20), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        **kw,
    )
    return md


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class DemoSummary:
    """What was built: where, from which seed and date, and how many rows per table."""

    url: str  # SQLAlchemy URL of the database, password hidden
    path: str | None  # the SQLite file (build_demo), else None
    seed: int
    today: datetime.date
    counts: dict[str, int] = field(default_factory=dict)  # rows per table, in TABLES order
    seconds: float = 0.0  # wall-clock build time

    @property
    def total_rows(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- calendar helpers

_DAY = 86_400


def _add_months(d: datetime.date, months: int) -> datetime.date:
    """Calendar month arithmetic, clamped to the month's last day (2024-02-29 + 24 months = 2026-02-28)."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return datetime.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _midnight(d: datetime.date) -> datetime.datetime:
    return datetime.datetime(d.year, d.month, d.day)


# --------------------------------------------------------------------------- fixed vocabulary

_EMAIL_DOMAINS = (
    "gmail.com", "hotmail.com", "outlook.com", "ziggo.nl", "kpnmail.nl",
    "live.nl", "xs4all.nl", "planet.nl", "icloud.com", "home.nl",
)  # fmt: skip

# (description, unit price excl. VAT in cents, VAT rate %)
_PRODUCTS = (
    ("Douchestoel verstelbaar", 4995, 21),
    ("Rollator lichtgewicht", 12900, 21),
    ("Toiletverhoger met armleuningen", 3995, 21),
    ("Grijptang 80 cm", 1295, 21),
    ("Medicijndoos weekoverzicht", 895, 21),
    ("Antislipmat badkuip", 1495, 21),
    ("Bedpapegaai", 5995, 21),
    ("Wandbeugel 60 cm", 2495, 21),
    ("Sokkenaantrekker", 1195, 21),
    ("Pillensnijder", 495, 21),
    ("Wandelstok opvouwbaar", 2295, 21),
    ("Leesloep met verlichting", 1895, 21),
    ("Telefoon met grote toetsen", 4995, 21),
    ("Valdetectie-alarm", 14900, 21),
    ("Boek: Langer thuis wonen", 2250, 9),
    ("Puzzelboek grote letters", 895, 9),
    ("Verzendkosten", 495, 21),
)

# (subject, customer's first message, agent's reply); {…} filled from the customer's data
_TOPICS = (
    ("Waar blijft mijn bestelling?",
     "Mijn bestelling is nog niet bezorgd op {street}, {postcode} {city}. Kunnen jullie kijken waar die blijft?",
     "Excuses voor het wachten. Je pakket is onderweg en wordt morgen bezorgd."),
    ("Retour aanvragen",
     "Het product past niet goed bij mijn situatie. Ik wil het graag retourneren.",
     "Dat kan kosteloos: je ontvangt het retourlabel op {email}."),
    ("Factuur opnieuw sturen",
     "Kunnen jullie de factuur nog een keer naar {email} sturen? Ik kan hem niet meer vinden.",
     "We hebben de factuur opnieuw verstuurd naar {email}."),
    ("Product beschadigd ontvangen",
     "Het pakket kwam beschadigd aan. Ik heb foto's gemaakt, waar kan ik die naartoe sturen?",
     "Vervelend! Je kunt de foto's als antwoord op deze e-mail sturen, dan sturen we een nieuw exemplaar."),
    ("Adreswijziging",
     "Ik ben verhuisd. Mijn nieuwe adres is {street}, {postcode} {city}.",
     "Bedankt, we hebben je adres aangepast in je account."),
    ("Vraag over garantie",
     "De rollator die ik vorig jaar kocht piept. Valt dat onder de garantie?",
     "Ja, dat valt onder de garantie. We nemen telefonisch contact op via {phone}."),
    ("Account opheffen",
     "Ik wil mijn account graag laten opheffen. Mijn e-mailadres is {email}.",
     "Je account wordt opgeheven. Facturen moeten we wettelijk 7 jaar bewaren."),
    ("Betaling niet gelukt",
     "Mijn iDEAL-betaling is mislukt maar het geld is wel afgeschreven.",
     "We zien de betaling inmiddels binnenkomen. Je bestelling wordt verzonden."),
    ("Vraag over product",
     "Is de douchestoel ook geschikt voor een kleine badkamer? Groet, {first_name} {last_name}",
     "Zeker, de douchestoel is inklapbaar en 45 cm breed."),
    ("Klacht over bezorger",
     "De bezorger heeft het pakket bij de buren op {street} afgegeven zonder briefje.",
     "Onze excuses, we hebben dit doorgegeven aan de vervoerder."),
)  # fmt: skip

_FOLLOW_UP_CUSTOMER = "Bedankt voor de snelle reactie!\n\nGroet,\n{first_name} {last_name}"
_FOLLOW_UP_AGENT = "Graag gedaan, {first_name}. Nog een fijne dag!"


def _cum(weights: tuple[float, ...]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return [c / total for c in out]


# Shape of the shop. Orders and tickets drawn past today or past a deregistration are not
# placed, so recent customers have fewer than these numbers say (about 1.1 orders on average).
_N_ORDERS = _cum((0.22, 0.30, 0.22, 0.13, 0.08, 0.05))  # 0..5 orders per account
_N_LINES = _cum((0.45, 0.30, 0.15, 0.10))  # 1..4 lines per invoice
_N_TICKETS = _cum((0.55, 0.33, 0.12))  # 0..2 tickets per account
_N_MESSAGES = _cum((0.20, 0.40, 0.25, 0.15))  # 1..4 messages per ticket
_QUANTITY = _cum((0.80, 0.15, 0.05))  # 1..3 of a product

P_DEREGISTERED = 0.35
P_LEGAL_HOLD = 0.01
P_OPEN_TICKET = 0.10
P_TICKET_HOLD = 0.003  # closed tickets kept for a dispute, besides those of held accounts
P_GUEST_TICKET = 0.03  # contact form without an account: tickets.account_id NULL
P_NO_PHONE = 0.20
P_NO_BIRTH_DATE = 0.15
P_OTHER_SHIPPING = 0.10
# Sign-ups grow exponentially, by e**GROWTH (~50%) a year. This also calibrates the demo for
# the shipped policies: at today, about 7% of accounts, 2% of invoices and 37% of tickets are
# past their term, below the default safety limit of half a table (tests/test_demo.py).
GROWTH = 0.4
P_FIRST_ORDER_AT_SIGNUP = 0.7  # most accounts are made while checking out
P_TICKET_ABOUT_ORDER = 0.7  # most questions are about an order, a few days after it
HORIZON_MIN, HORIZON_MAX = 1.0, 5.0  # years a customer stays active after signing up


# --------------------------------------------------------------------------- Faker pools


def _ascii_slug(text: str) -> str:
    norm = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in norm.lower() if ch.isalnum())


@dataclass
class _Pools:
    first_names: list[tuple[str, str]]  # (name, email slug)
    last_names: list[tuple[str, str]]
    streets: list[str]
    cities: list[str]
    landlines: list[str]
    agents: list[str]


def _make_pools(seed: int) -> _Pools:
    fake = Faker("nl_NL")
    fake.seed_instance(seed)
    first = [fake.first_name() for _ in range(1500)]
    last = [fake.last_name() for _ in range(2500)]
    return _Pools(
        first_names=[(n, _ascii_slug(n)) for n in first],
        last_names=[(n, _ascii_slug(n)) for n in last],
        streets=[fake.street_name() for _ in range(3000)],
        cities=[fake.city() for _ in range(1500)],
        landlines=[fake.phone_number() for _ in range(2000)],
        agents=[fake.first_name() for _ in range(25)],
    )


# --------------------------------------------------------------------------- edge cases


@dataclass
class _Edge:
    """A hand-made account: fixed dates, exactly these orders (each invoiced) and tickets."""

    created: datetime.datetime
    deregistered: datetime.datetime | None = None
    legal_hold: bool = False
    no_phone: bool = False
    no_birth_date: bool = False
    orders: list[datetime.datetime] = field(default_factory=list)
    # (opened_at, closed_at or None for an open ticket, legal_hold)
    tickets: list[tuple[datetime.datetime, datetime.datetime | None, bool]] = field(default_factory=list)


def _edge_cases(start: datetime.date, today: datetime.date) -> list[_Edge]:
    """The deliberate edge cases; they take the first account ids (fewer if accounts is small)."""
    t0 = _midnight(today)
    created = _midnight(start) + datetime.timedelta(days=1, hours=9)
    dt = datetime.datetime
    td = datetime.timedelta

    def months_ago(n: int, hour: int = 0, minute: int = 0) -> datetime.datetime:
        return _midnight(_add_months(today, -n)) + td(hours=hour, minutes=minute)

    edges: list[_Edge] = []
    # 29 February: a deregistration, an invoice and a ticket closing on the two latest leap days.
    leap_days = [
        datetime.date(y, 2, 29)
        for y in range(today.year, start.year - 1, -1)
        if calendar.isleap(y) and start + td(days=2) < datetime.date(y, 2, 29) < today
    ][:2]
    for leap in leap_days:
        ld = _midnight(leap)
        edges.append(_Edge(created, deregistered=ld + td(hours=10, minutes=15), orders=[ld + td(hours=9)]))
        edges.append(
            _Edge(
                created,
                orders=[ld + td(hours=12)],
                tickets=[(ld - td(days=2) + td(hours=11), ld + td(hours=16, minutes=45), False)],
            )
        )
    # Year ends: 31 December 23:59:59 and 1 January 00:00:00 around the 24-month and 2-year terms.
    for year in (today.year - 3, today.year - 2):
        new_year = dt(year + 1, 1, 1)
        if new_year >= t0:
            continue
        last_second = new_year - td(seconds=1)
        edges.append(
            _Edge(
                created,
                deregistered=last_second,
                orders=[dt(year, 12, 31, 20, 0)],
                tickets=[(dt(year, 12, 20, 10, 30), last_second, False)],
            )
        )
        edges.append(
            _Edge(
                created,
                deregistered=new_year,
                orders=[dt(year, 12, 30, 15, 0)],
                tickets=[(dt(year, 12, 28, 9, 0), new_year, False)],
            )
        )
    # Invoices on both sides of the 7-year book-year boundary: 31 Dec and 1 Jan.
    fiscal = today.year - 8
    edges.append(_Edge(created, orders=[dt(fiscal, 12, 31, 23, 59, 59), dt(fiscal + 1, 1, 1, 0, 0, 0)]))
    # Exactly on the cut-off (midnight 24 months before today).
    edges.append(_Edge(created, deregistered=months_ago(24), orders=[months_ago(40, 11)]))
    edges.append(_Edge(created, tickets=[(months_ago(24) - td(days=6) + td(hours=14), months_ago(24), False)]))
    # Deregistered more than 24 months ago with invoices that must be kept for 7 years:
    # their orders and invoices are detached from the account, which goes (on_referenced: detach).
    for n in (30, 40, 50):
        edges.append(
            _Edge(
                created,
                deregistered=months_ago(n, 14),
                orders=[months_ago(n + 8, 10, 5), months_ago(n + 2, 19, 40)],
                tickets=[(months_ago(n + 1, 9, 30) - td(days=12, hours=3), months_ago(n + 1, 9, 30), False)],
            )
        )
    # Deregistered customers with a ticket that is still open.
    edges.append(_Edge(created, deregistered=months_ago(36, 11), tickets=[(months_ago(37, 16), None, False)]))
    edges.append(
        _Edge(
            created,
            deregistered=months_ago(3, 11),
            orders=[months_ago(5, 13)],
            tickets=[(months_ago(4, 16), None, False)],
        )
    )
    # Legal holds: long deregistered (with a held ticket), active, and recently past the term.
    edges.append(
        _Edge(
            created,
            deregistered=months_ago(96, 10),
            legal_hold=True,
            orders=[months_ago(108, 15)],
            tickets=[(months_ago(97, 17) - td(days=25), months_ago(97, 17), True)],
        )
    )
    edges.append(
        _Edge(
            created,
            legal_hold=True,
            orders=[months_ago(70, 12)],
            tickets=[(months_ago(60, 12) - td(days=9), months_ago(60, 12), True)],
        )
    )
    edges.append(_Edge(created, deregistered=months_ago(30, 9), legal_hold=True, orders=[months_ago(33, 21)]))
    # A closed ticket under legal hold on an ordinary account.
    edges.append(_Edge(created, tickets=[(months_ago(48, 15) - td(days=3), months_ago(48, 15), True)]))
    # Missing optional data.
    edges.append(_Edge(created, deregistered=months_ago(26, 18), no_phone=True, no_birth_date=True))
    edges.append(_Edge(created, no_phone=True, no_birth_date=True, orders=[months_ago(2, 10)]))
    return edges


# --------------------------------------------------------------------------- generator

# Column order of the row tuples the generator makes (checked against shop_metadata()).
COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("id", "first_name", "last_name", "email", "phone", "street", "postcode", "city",
                 "birth_date", "created_at", "deregistered_at", "legal_hold"),
    "orders": ("id", "account_id", "ordered_at", "status", "total_cents",
               "shipping_street", "shipping_postcode", "shipping_city"),
    "invoices": ("id", "account_id", "number", "issued_at", "customer_name",
                 "billing_street", "billing_postcode", "billing_city", "total_cents", "vat_cents"),
    "invoice_lines": ("id", "invoice_id", "description", "quantity", "unit_price_cents", "vat_rate"),
    "tickets": ("id", "account_id", "subject", "status", "opened_at", "closed_at", "last_activity_at", "legal_hold"),
    "ticket_messages": ("id", "ticket_id", "sent_at", "sender", "body"),
}  # fmt: skip

_LETTERS = "ABCDEGHJKLMNPRSTVWXZ"  # letters used in Dutch postcodes
_POSTCODE_PAIRS = [a + b for a in _LETTERS for b in _LETTERS if a + b not in ("SA", "SD", "SS")]
_HOUSE_SUFFIXES = ("a", "b", "c", "-1", "-2", "-3", "-I", "-II", "-hs")

Rows = dict[str, list[tuple[Any, ...]]]
Person = tuple[str, str, str, str | None, str, str, str]  # first, last, email, phone, street, postcode, city


class _Generator:
    """Generates the shop chunk by chunk from one random stream: the output depends only on
    (accounts, seed, today). Times are kept as int seconds since ``base`` (midnight ten years
    before today) and encoded once per value: as ``datetime``/``date`` objects, or with
    ``text_times`` as the exact text SQLAlchemy stores on SQLite ('YYYY-MM-DD HH:MM:SS.ffffff')."""

    def __init__(self, accounts: int, seed: int, today: datetime.date, text_times: bool = False):
        self.n = accounts
        self.today = today
        self.start = _add_months(today, -120)
        self.base = _midnight(self.start)
        ndays = (today - self.start).days
        self.end = ndays * _DAY  # seconds from base to midnight at the start of today (exclusive)
        self.rng = random.Random(seed)
        self.pools = _make_pools(seed)
        self.edges = _edge_cases(self.start, today)[: max(accounts, 0)]
        self.text_times = text_times
        days = [self.start + datetime.timedelta(days=i) for i in range(ndays + 1)]
        self.day_year = [d.year for d in days]
        self.day_value: list[Any] = [d.isoformat() for d in days] if text_times else days
        self._hm = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
        self._ss = [f"{sec:02d}.000000" for sec in range(60)]
        # Days (from base) where 02:00-03:00 does not exist in Europe/Amsterdam (last Sunday of March).
        self.gap_days: set[int] = set()
        for year in range(self.start.year, today.year + 1):
            last = datetime.date(year, 3, 31)
            sunday = last - datetime.timedelta(days=(last.weekday() - 6) % 7)
            self.gap_days.add((sunday - self.start).days)
        # Inverse CDF of sign-ups growing like exp(GROWTH * years) over the ten years.
        self._growth_rate = GROWTH * 10
        self._growth_scale = math.expm1(self._growth_rate)
        self.last_id = dict.fromkeys(TABLES, 0)

    # -- time helpers (int seconds since base)
    def ts(self, s: int) -> Any:
        """The stored value of a DateTime column."""
        if self.text_times:
            d, sod = divmod(s, _DAY)
            m, sec = divmod(sod, 60)
            return f"{self.day_value[d]} {self._hm[m]}{self._ss[sec]}"
        return self.base + datetime.timedelta(seconds=s)

    def _date(self, d: datetime.date) -> Any:
        return d.isoformat() if self.text_times else d

    def _valid(self, s: int, lo: int, hi: int) -> int:
        """Moves a time out of the non-existent hour at the start of summer time, staying in [lo, hi)."""
        day, sod = divmod(s, _DAY)
        if 7200 <= sod < 10800 and day in self.gap_days:
            s = s + 3600 if s + 3600 < hi else s - 7200
            if s < lo:
                s = lo
        return s

    def _sec(self, d: datetime.datetime) -> int:
        return int((d - self.base).total_seconds())

    # -- people and addresses
    def _address(self) -> tuple[str, str, str]:
        r = self.rng.random
        p = self.pools
        x = r()
        suffix = _HOUSE_SUFFIXES[int(x * 75)] if x < 0.12 else ""
        street = f"{p.streets[int(r() * len(p.streets))]} {int(r() * 250) + 1}{suffix}"
        postcode = f"{int(r() * 9000) + 1000} {_POSTCODE_PAIRS[int(r() * len(_POSTCODE_PAIRS))]}"
        return street, postcode, p.cities[int(r() * len(p.cities))]

    def _person(self, number: int) -> Person:
        r = self.rng.random
        p = self.pools
        first, first_slug = p.first_names[int(r() * len(p.first_names))]
        last, last_slug = p.last_names[int(r() * len(p.last_names))]
        x = r()
        if x < 0.5:
            local = f"{first_slug}.{last_slug}{number}"
        elif x < 0.8:
            local = f"{first_slug[:1]}{last_slug}{number}"
        else:
            local = f"{first_slug}{number}"
        email = f"{local}@{_EMAIL_DOMAINS[int(r() * len(_EMAIL_DOMAINS))]}"
        mobile = r() < 0.7
        phone = f"06-{int(r() * 90_000_000) + 10_000_000}" if mobile else p.landlines[int(r() * len(p.landlines))]
        street, postcode, city = self._address()
        return first, last, email, phone, street, postcode, city

    def _birth_date(self, created: int) -> Any:
        days = created // _DAY - int(self.rng.random() * 68 * 365) - 18 * 365
        return self._date(self.start + datetime.timedelta(days=days))

    # -- orders, invoices, tickets
    def _status(self, t: int) -> str:
        age = self.end - t
        x = self.rng.random()
        if age < 3 * _DAY:
            return "pending" if x < 0.3 else "paid"
        if age < 14 * _DAY:
            return "paid" if x < 0.2 else ("shipped" if x < 0.6 else "delivered")
        return "delivered" if x < 0.85 else ("returned" if x < 0.91 else "cancelled")

    def _order(self, account_id: int, who: Person, t: int, status: str, out: Rows) -> None:
        r = self.rng.random
        ids = self.last_id
        ids["orders"] += 1
        order_id = ids["orders"]
        lines = []
        net = vat = 0
        for _ in range(bisect.bisect(_N_LINES, r()) + 1):
            desc, price, rate = _PRODUCTS[int(r() * len(_PRODUCTS))]
            qty = bisect.bisect(_QUANTITY, r()) + 1
            lines.append((desc, qty, price, rate))
            net += qty * price
            vat += (qty * price * rate + 50) // 100
        street, postcode, city = self._address() if r() < P_OTHER_SHIPPING else who[4:7]
        out["orders"].append((order_id, account_id, self.ts(t), status, net + vat, street, postcode, city))
        if status in ("cancelled", "pending"):
            return
        ids["invoices"] += 1
        invoice_id = ids["invoices"]
        day = t // _DAY
        out["invoices"].append(
            (
                invoice_id,
                account_id,
                f"F{self.day_year[day]}-{invoice_id:07d}",
                self.day_value[day],
                f"{who[0]} {who[1]}",
                who[4],
                who[5],
                who[6],
                net + vat,
                vat,
            )
        )
        append = out["invoice_lines"].append
        line_id = ids["invoice_lines"]
        for desc, qty, price, rate in lines:
            line_id += 1
            append((line_id, invoice_id, desc, qty, price, rate))
        ids["invoice_lines"] = line_id

    def _ticket(
        self, account_id: int | None, who: Person, opened: int, closed: int | None, hold: bool, out: Rows
    ) -> None:
        r = self.rng.random
        ids = self.last_id
        ids["tickets"] += 1
        ticket_id = ids["tickets"]
        subject, ask, answer = _TOPICS[int(r() * len(_TOPICS))]
        first, last, email, phone, street, postcode, city = who
        values = {
            "first_name": first,
            "last_name": last,
            "email": email,
            "phone": phone or "het bekende nummer",
            "street": street,
            "postcode": postcode,
            "city": city,
        }
        until = closed if closed is not None else min(opened + 20 * _DAY, self.end - 1)
        n = bisect.bisect(_N_MESSAGES, r()) + 1
        times = [opened] + sorted(self._valid(opened + int(r() * (until - opened + 1)), opened, until + 1)
                                  for _ in range(n - 1))  # fmt: skip
        agent = self.pools.agents[int(r() * len(self.pools.agents))]
        append = out["ticket_messages"].append
        message_id = ids["ticket_messages"]
        for i, t in enumerate(times):
            if i == 0:
                text = ask.format_map(values)
                body = f"Beste klantenservice,\n\n{text}\n\nMet vriendelijke groet,\n{first} {last}\n{email}"
            elif i == 1:
                text = answer.format_map(values)
                body = f"Beste {first},\n\n{text}\n\nMet vriendelijke groet,\n{agent}\nKlantenservice"
            else:
                body = (_FOLLOW_UP_CUSTOMER if i % 2 == 0 else _FOLLOW_UP_AGENT).format_map(values)
            message_id += 1
            append((message_id, ticket_id, self.ts(t), "customer" if i % 2 == 0 else "agent", body))
        ids["ticket_messages"] = message_id
        # Closing is a ticket's last activity; an open one's is its last message.
        out["tickets"].append((ticket_id, account_id, subject, "open" if closed is None else "closed",
                               self.ts(opened), None if closed is None else self.ts(closed),
                               self.ts(closed if closed is not None else times[-1]), hold))

    # -- accounts
    def _edge_account(self, edge: _Edge, out: Rows) -> None:
        self.last_id["accounts"] += 1
        account_id = self.last_id["accounts"]
        who = self._person(account_id)
        created = self._sec(edge.created)
        birth = None if edge.no_birth_date else self._birth_date(created)
        out["accounts"].append(
            (
                account_id,
                *who[:3],
                None if edge.no_phone else who[3],
                *who[4:],
                birth,
                self.ts(created),
                None if edge.deregistered is None else self.ts(self._sec(edge.deregistered)),
                edge.legal_hold,
            )
        )
        for when in edge.orders:
            self._order(account_id, who, self._sec(when), "delivered", out)
        for opened, closed, hold in edge.tickets:
            closed_s = None if closed is None else self._sec(closed)
            self._ticket(account_id, who, self._sec(opened), closed_s, hold, out)

    def _account(self, index: int, out: Rows) -> None:
        r = self.rng.random
        end = self.end
        self.last_id["accounts"] += 1
        account_id = self.last_id["accounts"]
        who = self._person(account_id)
        # Sign-ups grow over time; ids follow the sign-up order.
        u = (index + r()) / self.n
        created = self._valid(int(math.log1p(u * self._growth_scale) / self._growth_rate * (end - _DAY)), 0, end)
        deregistered = None
        if r() < P_DEREGISTERED:
            deregistered = self._valid(created + 3600 + int(r() * (end - created - 3600)), created, end)
        active_end = end if deregistered is None else deregistered
        hold = r() < P_LEGAL_HOLD
        phone = None if r() < P_NO_PHONE else who[3]
        birth = None if r() < P_NO_BIRTH_DATE else self._birth_date(created)
        out["accounts"].append(
            (
                account_id,
                *who[:3],
                phone,
                *who[4:],
                birth,
                self.ts(created),
                None if deregistered is None else self.ts(deregistered),
                hold,
            )
        )
        # A customer is active for a few years after signing up; orders and tickets that would
        # fall after deregistration or today are not placed (recent customers have fewer).
        horizon = int((HORIZON_MIN + r() * (HORIZON_MAX - HORIZON_MIN)) * 365 * _DAY)
        n_orders = bisect.bisect(_N_ORDERS, r())
        times = [created + int(r() * horizon) for _ in range(n_orders)]
        if times and r() < P_FIRST_ORDER_AT_SIGNUP:  # most accounts are made while checking out
            times[0] = created + int(r() * 3600)
        placed = []
        for t in sorted(times):
            if t < active_end:
                t = self._valid(t, created, active_end)
                placed.append(t)
                self._order(account_id, who, t, self._status(t), out)
        # Most questions are about an order, a few days after it.
        n_tickets = bisect.bisect(_N_TICKETS, r())
        times = [
            placed[int(r() * len(placed))] + int(r() * 14 * _DAY)
            if placed and r() < P_TICKET_ABOUT_ORDER
            else created + int(r() * horizon)
            for _ in range(n_tickets)
        ]
        for opened in sorted(times):
            if opened >= active_end:
                continue
            opened = self._valid(opened, created, active_end)
            if r() < P_OPEN_TICKET:
                closed = None
            else:
                closed = self._valid(min(opened + int(r() * 30 * _DAY), end - 1), opened, end)
            ticket_hold = closed is not None and (hold or r() < P_TICKET_HOLD)
            if r() < P_GUEST_TICKET:  # contact form without logging in
                self._ticket(None, self._person(int(r() * 1_000_000)), opened, closed, ticket_hold, out)
            else:
                self._ticket(account_id, who, opened, closed, ticket_hold, out)

    def chunks(self, size: int = CHUNK_ACCOUNTS) -> Iterator[tuple[int, Rows]]:
        """Yields (accounts done, row tuples per table) for consecutive chunks of accounts."""
        done = 0
        n_edges = len(self.edges)
        while done < self.n:
            out: Rows = {t: [] for t in TABLES}
            stop = min(done + size, self.n)
            for i in range(done, stop):
                if i < n_edges:
                    self._edge_account(self.edges[i], out)
                else:
                    self._account(i, out)
            done = stop
            yield done, out


# --------------------------------------------------------------------------- building


def _existing_rows(engine: sa.Engine, md: sa.MetaData) -> dict[str, int]:
    present = set(sa.inspect(engine).get_table_names())
    found: dict[str, int] = {}
    with engine.connect() as conn:
        for name in TABLES:
            if name in present:
                found[name] = conn.execute(sa.select(sa.func.count()).select_from(md.tables[name])).scalar_one()
    return found


def parse_today(text: str, now: datetime.date | None = None) -> datetime.date:
    """The day the demo data ends (``retention demo --as-of``): an ISO date, not in the future.

    A shop built up to an earlier day and enforced today holds the backlog of every term that
    passed in between, as on the first run in a shop that never enforced its terms.
    """
    try:
        day = datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"demo: --as-of {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2024-11-24") from None
    if day > (now or datetime.date.today()):
        raise InvalidInput(f"demo: --as-of {day} is in the future; the demo shop can only hold the past")
    return day


def create_shop(
    engine: sa.Engine,
    accounts: int = 10_000,
    seed: int = 42,
    today: datetime.date | None = None,
    progress: Progress | None = None,
    partitioned: bool = False,
) -> DemoSummary:
    """Creates the shop's tables in ``engine``'s database and fills them.

    Works on SQLite, PostgreSQL (psycopg 3) and MariaDB/MySQL (PyMySQL). Refuses
    (InvalidInput) when a shop table already exists and holds rows; empty existing tables
    are reused. Rows are committed per chunk of accounts; ``progress`` is called after each
    chunk with the number of accounts done so far. ``partitioned``: ``orders`` in a partition
    per year (PostgreSQL only, see :func:`shop_metadata`).
    """
    if accounts < 0:
        raise InvalidInput(f"demo: the number of accounts must be 0 or more, not {accounts}")
    if partitioned and engine.dialect.name != "postgresql":
        # MariaDB's partitioned tables can have no foreign keys, and the shop's promises follow
        # orders.account_id: the orders of an account under legal hold are kept, those of a
        # deleted account are detached. Without the key they would go with their partition.
        raise InvalidInput(
            f"demo: --partitioned needs PostgreSQL, not {_dialect_label(engine)}: partitioned orders keep their "
            "foreign key to accounts only there (MariaDB's partitioned tables have none, and the legal holds "
            "and detaching follow that key)"
        )
    started = time.perf_counter()
    today = today or datetime.date.today()
    md = shop_metadata(partitioned)
    non_empty = {name: n for name, n in _existing_rows(engine, md).items() if n}
    if non_empty:
        url = engine.url.render_as_string(hide_password=True)
        raise InvalidInput(
            f"demo: {url} already has shop data (rows in {', '.join(non_empty)}); "
            "use an empty database or drop the shop tables first"
        )
    md.create_all(engine)
    if partitioned:
        _order_partitions(engine, today)
    for name in TABLES:  # the generator's tuples must line up with the tables
        assert tuple(md.tables[name].columns.keys()) == COLUMNS[name], name
    sqlite = engine.dialect.name == "sqlite"
    gen = _Generator(accounts, seed, today, text_times=sqlite)
    # SQLite: the row tuples go straight to the driver's executemany, already holding the text
    # SQLAlchemy would store (half the build time is otherwise spent processing parameters).
    # Elsewhere: executemany of dicts through SQLAlchemy, with its own type handling.
    raw_sql = {name: str(md.tables[name].insert().compile(dialect=engine.dialect)) for name in TABLES}
    for done, rows in gen.chunks():
        with engine.begin() as conn:
            for name in TABLES:
                batch = rows[name]
                if not batch:
                    continue
                if sqlite:
                    conn.exec_driver_sql(raw_sql[name], batch)
                else:
                    cols = COLUMNS[name]
                    conn.execute(md.tables[name].insert(), [dict(zip(cols, row, strict=True)) for row in batch])
        if progress is not None:
            progress(done)
    if engine.dialect.name == "postgresql":
        # Explicit ids do not move the serial sequences; later inserts must not collide.
        with engine.begin() as conn:
            for name in TABLES:
                conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"coalesce(max(id), 1), max(id) IS NOT NULL) FROM {name}"
                    )
                )
    return DemoSummary(
        url=engine.url.render_as_string(hide_password=True),
        path=engine.url.database if engine.dialect.name == "sqlite" else None,
        seed=seed,
        today=today,
        counts=dict(gen.last_id),  # ids are 1..n per table
        seconds=time.perf_counter() - started,
    )


def _dialect_label(engine: sa.Engine) -> str:
    return {"sqlite": "SQLite", "mysql": "MariaDB/MySQL"}.get(engine.dialect.name, engine.dialect.name)


def _order_partitions(engine: sa.Engine, today: datetime.date) -> None:
    """A partition of ``orders`` per calendar year, from the shop's first year to the next one
    (the generator's orders lie in the ten years before ``today``; a live shop would add a year
    ahead each December), named ``orders_<year>``. The orders policy counts 7 years from the end
    of the year, so a year's partition is past its term as a whole on a New Year's Day."""
    with engine.begin() as conn:
        for year in range(_add_months(today, -120).year, today.year + 2):  # from _Generator.start
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS orders_{year} PARTITION OF orders "
                f"FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01')"
            )


def build_in(url: str, accounts: int = 10_000, seed: int = 42, today: datetime.date | None = None,
             partitioned: bool = False) -> DemoSummary:
    """Builds the demo shop in the (empty) database at ``url``; see :func:`create_shop`."""
    from retention.databases.dialects import create_engine
    from retention.errors import DatabaseUnreachable

    engine = create_engine(url, secure_delete=False, statement_timeout=0, name="demo")
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise DatabaseUnreachable(f"demo: cannot connect to {engine.url.render_as_string(hide_password=True)}: "
                                  f"{first[0] if first else type(exc).__name__}") from None
    try:
        return create_shop(engine, accounts=accounts, seed=seed, today=today, partitioned=partitioned)
    finally:
        engine.dispose()


def _sqlite_engine(path: pathlib.Path) -> sa.Engine:
    engine = sa.create_engine(sa.URL.create("sqlite", database=str(path)))

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def build_demo(
    path: pathlib.Path | str,
    accounts: int = 10_000,
    seed: int = 42,
    today: datetime.date | None = None,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> DemoSummary:
    """Builds the demo shop in the SQLite file ``path`` (parent directories are created).

    Refuses (InvalidInput) when ``path`` exists and is not empty, unless ``overwrite=True``,
    which replaces the file. A build that fails part-way removes the file it made.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise InvalidInput(f"demo: {path} is a directory; give the path of a database file")
    if path.exists() and path.stat().st_size > 0 and not overwrite:
        raise InvalidInput(
            f"demo: {path} already exists and is not empty; not overwriting it (choose another path or remove the file)"
        )
    files = [pathlib.Path(f"{path}{suffix}") for suffix in ("", "-journal", "-wal", "-shm")]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for f in files:  # the old database, or an empty file, and any leftover journal
            f.unlink(missing_ok=True)
    except OSError as exc:
        raise InvalidInput(f"demo: cannot create {path}: {exc.strerror or exc}") from exc
    engine = _sqlite_engine(path)
    try:
        summary = create_shop(engine, accounts=accounts, seed=seed, today=today, progress=progress)
    except BaseException:
        engine.dispose()
        for f in files:
            f.unlink(missing_ok=True)
        raise
    engine.dispose()
    return replace(summary, path=str(path))
