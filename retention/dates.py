"""Retention periods and cut-offs: pure calendar arithmetic, no database, no package imports.

The rule (CONTRACT.md section 2): a row is due when ``align(after) + retain`` is at or
before the run's moment, computed on the wall clock of the policy file's time zone, with
calendar months and years (2024-02-29 + 24 months = 2026-02-28).

Databases cannot evaluate pendulum's calendar arithmetic, so each policy is turned into
one *cut-off*: the latest local wall-clock moment ``c`` such that every event at or before
``c`` is due and every event after it is not, and the SQL predicate is just ``after <= c``.

That needs ``x -> expires_at(x)`` never to decrease, and clamped calendar arithmetic with a
time of day does decrease: 2024-02-28 13:00 + 24 months is 2026-02-28 13:00, but
2024-02-29 10:00 + 24 months would be 2026-02-28 10:00, earlier. So for a date-time whose
day does not exist in the target month (29 Feb, 31 Apr, ...) the term ends at the *end* of
that month's last day (2026-02-28 23:59:59.999999): never before the term of any earlier
event, so no row is ever removed early, and at most a day later than plain arithmetic.

DATE columns hold whole days (each the start of its day), on which calendar arithmetic
never decreases, so they are exact: 2024-02-29 + 24 months = 2026-02-28, due from the start
of 2026-02-28. :attr:`Cutoff.date` is their cut-off.

Plain subtraction (``now - retain``) is *not* the cut-off at month ends: on 2026-03-31,
``now - 1 month`` is 2026-02-28 at now's time, yet every moment of 28 February + 1 month
is before now. :func:`cutoff` corrects for that clamping, so a row is never kept past its term.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

import pendulum

Unit = Literal["days", "weeks", "months", "years"]
Align = Literal["none", "end_of_month", "end_of_year"]

ALIGNMENTS: tuple[str, ...] = ("none", "end_of_month", "end_of_year")
UNITS: tuple[str, ...] = ("days", "weeks", "months", "years")

# The last representable instant of a day: aligned periods start "at the end of" a month or
# year, i.e. at 23:59:59.999999 on its last day, so any event inside it counts from there.
END_OF_DAY = dt.time(23, 59, 59, 999999)

_PERIOD = re.compile(r"^\s*(?P<n>[+-]?\d+)\s+(?P<unit>[A-Za-z]+)\s*$")


class PeriodError(ValueError):
    """A retention period that cannot be read (its message is meant for the user)."""


@dataclass(frozen=True, order=True)
class Period:
    """A positive calendar period: ``N days|weeks|months|years``."""

    n: int
    unit: Unit

    def __str__(self) -> str:
        word = self.unit if self.n != 1 else self.unit[:-1]
        return f"{self.n} {word}"

    def approx_days(self) -> float:
        """Length in days, only for comparing periods of different units (statutory minimums)."""
        return self.n * {"days": 1, "weeks": 7, "months": 365.2425 / 12, "years": 365.2425}[self.unit]

    def at_least(self, other: Period) -> bool:
        """True when this period is never shorter than ``other``.

        Same units compare exactly; across units, months and years are compared in months, and
        days/weeks against months/years by their shortest possible length (28-day months,
        365-day years), so a minimum is never declared met when it could fall short.
        """
        if self.unit == other.unit:
            return self.n >= other.n
        months = {"months": 1, "years": 12}
        if self.unit in months and other.unit in months:
            return self.n * months[self.unit] >= other.n * months[other.unit]
        shortest = {"days": 1, "weeks": 7, "months": 28, "years": 365}
        longest = {"days": 1, "weeks": 7, "months": 31, "years": 366}
        return self.n * shortest[self.unit] >= other.n * longest[other.unit]

    def add_to(self, moment: pendulum.DateTime) -> pendulum.DateTime:
        return moment.add(**{self.unit: self.n})

    def subtract_from(self, moment: pendulum.DateTime) -> pendulum.DateTime:
        return moment.subtract(**{self.unit: self.n})


def parse_period(text: object) -> Period:
    """Read ``"24 months"``, ``"1 year"``, ``"90 days"``; reject zero, negatives and typos."""
    if not isinstance(text, str):
        raise PeriodError(f"expected a period like '24 months', got {text!r}")
    match = _PERIOD.match(text)
    if not match:
        raise PeriodError(f"expected a period like '24 months' or '7 years', got {text!r}")
    n = int(match["n"])
    word = match["unit"].lower()
    unit = word if word in UNITS else word + "s"
    if unit not in UNITS:
        raise PeriodError(f"unknown unit {match['unit']!r} in {text!r}; use one of: days, weeks, months, years")
    if n <= 0:
        raise PeriodError(f"a retention period must be positive, got {text!r}")
    return Period(n, unit)  # type: ignore[arg-type]


def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def align_event(event: pendulum.DateTime, align: Align) -> pendulum.DateTime:
    """The moment a period starts counting for an event at ``event`` (local wall-clock)."""
    if align == "none":
        return event
    if align == "end_of_month":
        last = _days_in_month(event.year, event.month)
        return event.set(day=last, hour=23, minute=59, second=59, microsecond=999999)
    if align == "end_of_year":
        return event.set(month=12, day=31, hour=23, minute=59, second=59, microsecond=999999)
    raise ValueError(f"unknown align {align!r}")


def expires_at(
    event: pendulum.DateTime | dt.date, period: Period, align: Align = "none"
) -> pendulum.DateTime:
    """When a row whose event happened at ``event`` becomes due (the definition the cut-off inverts).

    ``event`` is a local wall-clock date-time, or a date (a DATE column: the start of that day).
    A date-time whose day does not exist in the target month (2024-02-29 10:00 + 24 months)
    expires at the end of that month's last day (2026-02-28 23:59:59.999999), so that no
    earlier event ever expires later (see the module docstring); a date expires at the start
    of the clamped day (2024-02-29 + 24 months: 2026-02-28 00:00).
    """
    if not isinstance(event, dt.datetime):
        return period.add_to(align_event(pendulum.naive(event.year, event.month, event.day), align))
    if not isinstance(event, pendulum.DateTime):
        event = pendulum.instance(event) if event.tzinfo is not None else pendulum.naive(
            event.year, event.month, event.day, event.hour, event.minute, event.second, event.microsecond
        )
    start = align_event(event, align)
    end = period.add_to(start)
    if period.unit in ("months", "years") and end.day < start.day:
        end = end.set(hour=23, minute=59, second=59, microsecond=999999)
    return end


def _naive(moment: pendulum.DateTime) -> dt.datetime:
    return dt.datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond
    )


@dataclass(frozen=True)
class Cutoff:
    """The boundary of one policy at one moment.

    ``local`` is a naive wall-clock datetime in the policy file's time zone: the value to
    compare a timezone-less column against (``after <= local``). ``instant`` is the last
    instant whose wall time is at or before ``local``, for columns that carry a time zone.
    ``date`` is for DATE columns (``after <= date``): a date counts from the start of its day,
    which at month ends can make one more day due than ``local.date()`` (see expires_at).
    """

    local: dt.datetime
    instant: pendulum.DateTime
    timezone: str
    # The last due day of a DATE column, when it differs from ``local.date()`` (month ends).
    last_date: dt.date | None = None

    @property
    def date(self) -> dt.date:
        return self.last_date if self.last_date is not None else self.local.date()

    def isoformat(self) -> str:
        return self.instant.isoformat()


def cutoff(as_of: pendulum.DateTime, period: Period, align: Align, timezone: str) -> Cutoff:
    """The latest event moment that is due at ``as_of`` (inclusive), as a :class:`Cutoff`.

    The arithmetic runs on the naive wall clock of ``timezone`` (that is what timezone-less
    columns hold), so a daylight-saving gap cannot move the boundary by an hour.
    """
    now = as_of.in_timezone(timezone)
    wall = pendulum.naive(now.year, now.month, now.day, now.hour, now.minute, now.second, now.microsecond)
    start = wall.subtract(**{period.unit: period.n})
    if period.unit in ("months", "years"):
        last = _days_in_month(start.year, start.month)
        if start.day < now.day:
            # Subtraction clamped (31 Mar - 1 month = 28 Feb): every moment of that last day,
            # plus the period, lands on 28 Mar, before now. The whole day is due.
            start = start.set(hour=23, minute=59, second=59, microsecond=999999)
        elif now.day == _days_in_month(now.year, now.month) and start.day < last and wall.time() == END_OF_DAY:
            # Now is the very end of a month's last day (28 Feb): the later days of the earlier
            # month (29 Feb) expire at the end of now's day (see expires_at), so they are due.
            # Before that moment they are not, and neither is anything after ``start``.
            start = start.set(day=last)
    if align != "none":
        unit = "month" if align == "end_of_month" else "year"
        # Events count from the end of their month/year: only periods that ended by ``start`` are due.
        if align_event(start, align) > start:  # type: ignore[arg-type]
            start = start.start_of(unit).subtract(microseconds=1)
    local = _naive(start)  # type: ignore[arg-type]
    instant = _instant(local, timezone)
    return Cutoff(local=local, instant=instant, timezone=timezone,
                  last_date=_last_due_date(wall, period, align, local.date()))


def _instant(local: dt.datetime, timezone: str) -> pendulum.DateTime:
    """The last instant whose wall-clock time in ``timezone`` is at or before ``local``.

    For columns with a time zone. A wall time that occurs twice (autumn) is its first
    occurrence; one that does not exist (the spring-forward gap) is the instant just before
    the gap: every later instant shows a later wall time. Never a moment later than the wall
    clock allows, so an instant is never due before its local time is.
    """
    zone = ZoneInfo(timezone)
    utc = local.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if utc.astimezone(zone).replace(tzinfo=None) != local:
        # In a gap: fold=1 reads it with the offset after the transition, an instant whose wall
        # time is before ``local``; fold=0 gives one after it. The transition lies in between.
        lo = local.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
        hi = utc
        while hi - lo > dt.timedelta(microseconds=1):
            mid = lo + (hi - lo) // 2
            if mid.astimezone(zone).replace(tzinfo=None) <= local:
                lo = mid
            else:
                hi = mid
        utc = lo
    return pendulum.instance(utc).in_timezone(timezone)


def _last_due_date(wall: pendulum.DateTime, period: Period, align: Align, default: dt.date) -> dt.date | None:
    """The last due day of a DATE column (its start + period <= now), if not ``default``.

    Differs from the date-time cut-off's day only at month ends without alignment: on
    2026-02-28 a DATE 2024-02-29 is 24 months old, while a date-time 2024-02-29 10:00 is not
    yet (it expires at the end of 2026-02-28).
    """
    if align != "none" or period.unit not in ("months", "years"):
        return None
    today = wall.date()
    day = pendulum.date(today.year, today.month, today.day).subtract(**{period.unit: period.n})
    last = _days_in_month(day.year, day.month)
    if day.day == today.day and today.day == _days_in_month(today.year, today.month) and day.day < last:
        # Today is a month's last day: the later days of the earlier month clamp onto today.
        day = day.set(day=last)
    result = dt.date(day.year, day.month, day.day)
    return None if result == default else result


def parse_as_of(text: str, timezone: str) -> pendulum.DateTime:
    """An ``--as-of`` value: a date (its start, local) or a date-time (local unless it has an offset)."""
    try:
        parsed = pendulum.parse(text, tz=timezone, strict=True)
    except Exception as exc:  # pendulum raises several types for bad input
        raise PeriodError(f"--as-of: expected an ISO 8601 date or date-time, got {text!r}") from exc
    if isinstance(parsed, pendulum.Date) and not isinstance(parsed, pendulum.DateTime):
        parsed = pendulum.datetime(parsed.year, parsed.month, parsed.day, tz=timezone)
    if not isinstance(parsed, pendulum.DateTime):
        raise PeriodError(f"--as-of: expected an ISO 8601 date or date-time, got {text!r}")
    return parsed.in_timezone(timezone)


def now(timezone: str) -> pendulum.DateTime:
    return pendulum.now(timezone)
