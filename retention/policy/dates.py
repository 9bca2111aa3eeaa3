"""Retention periods and cut-offs: pure calendar arithmetic, no database, no package imports.

The rule (CONTRACT.md section 2): a row is due when ``align(after) + retain`` is at or
before the run's moment, computed on the wall clock of the policy file's time zone, with
calendar months and years (2024-02-29 + 24 months = 2026-02-28).

Databases cannot evaluate pendulum's calendar arithmetic, so each policy is turned into
a :class:`Cutoff`: the set of due event moments, as wall-clock ranges a database can test
with bound parameters.

Calendar arithmetic clamps at month ends, and with a time of day that makes it run
backwards: 2024-02-28 13:00 + 24 months is 2026-02-28 13:00, but 2024-02-29 10:00 + 24
months is 2026-02-28 10:00, earlier. At 2026-02-28 10:00 the due events are therefore
"everything up to 2024-02-28 10:00" *plus* "29 February 2024 from 00:00 to 10:00", not one
range. :func:`cutoff` returns the main range and those extra day windows, so the rule of
CONTRACT.md holds exactly: no row goes a microsecond early, none stays a microsecond late.

Plain subtraction (``now - retain``) is not the boundary at month ends either: on
2026-03-31, ``now - 1 month`` is 2026-02-28 at now's time, yet every moment of 28 February
+ 1 month is before now; :func:`cutoff` makes the whole of 28 February due.
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

# The calendar runs from year 1 to 9999 (datetime's range): a period must fit between any
# plausible run moment and its events both ways. `retain: 9999 years` passed validation and then
# every run died with ValueError: year out of range.
MAX_PERIOD_YEARS = 1000
# --as-of: the run's moment, with room for a MAX_PERIOD_YEARS period on either side.
AS_OF_YEARS = (1500, 8000)

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
    word = match["unit"].lower()
    unit = word if word in UNITS else word + "s"
    if unit not in UNITS:
        raise PeriodError(f"unknown unit {match['unit']!r} in {text!r}; use one of: days, weeks, months, years")
    digits = match["n"].lstrip("+-").lstrip("0")
    n = int(match["n"]) if len(digits) <= 9 else (-1 if match["n"].startswith("-") else 10**9)
    if n <= 0:
        raise PeriodError(f"a retention period must be positive, got {text!r}")
    period = Period(n, unit)  # type: ignore[arg-type]
    if period.approx_days() > MAX_PERIOD_YEARS * 365.2425:
        raise PeriodError(
            f"{text!r} is longer than {MAX_PERIOD_YEARS} years: it cannot be computed in the calendar "
            "(dates run from year 1 to 9999); rows to be kept for good belong in no policy"
        )
    return period


# How far past an event each alignment can start its term, at most: the event may be at the
# very start of its month or year. In months (exact for month/year periods) and in days
# (the longest case, for days and weeks).
_ALIGN_ORDER = {"none": 0, "end_of_month": 1, "end_of_year": 2}
_ALIGN_GAP_MONTHS = {("none", "end_of_month"): 1, ("none", "end_of_year"): 12, ("end_of_month", "end_of_year"): 11}
_ALIGN_GAP_DAYS = {("none", "end_of_month"): 31, ("none", "end_of_year"): 366, ("end_of_month", "end_of_year"): 335}
_SHORTEST_DAYS = {"days": 1, "weeks": 7, "months": 28, "years": 365}
_LONGEST_DAYS = {"days": 1, "weeks": 7, "months": 31, "years": 366}
_MONTHS = {"months": 1, "years": 12}


def floor_shortfall(retain: Period, align: Align, minimum: Period, minimum_align: Align = "none") -> str | None:
    """Why ``align(event) + retain`` can come before ``minimum_align(event) + minimum`` for some
    event, or None when it never can (the statutory floor holds for every event).

    When the term counts from the same or a later moment than the floor (``align`` at least as
    coarse as ``minimum_align``), the floor holds exactly when ``retain`` is never shorter than
    ``minimum`` (:meth:`Period.at_least`): an aligned start is the last moment of its month
    or year, so adding the same months to it never lands earlier, and at the very end of a year
    every alignment starts at the same moment. When the term starts earlier (``align: none``
    against ``minimum_align: end_of_year``), an event on 1 January starts it almost a year
    before the floor's count does, so ``retain`` must also cover that gap: in months exactly
    (``minimum`` + 12 months), with days or weeks by the shortest ``retain`` against the longest
    ``minimum`` plus the longest gap.
    """
    gap = (align, minimum_align)
    if _ALIGN_ORDER[align] >= _ALIGN_ORDER[minimum_align]:
        return None if retain.at_least(minimum) else f"{retain} is shorter than the statutory minimum of {minimum}"
    if retain.unit in _MONTHS and minimum.unit in _MONTHS:
        need = minimum.n * _MONTHS[minimum.unit] + _ALIGN_GAP_MONTHS[gap]
        if retain.n * _MONTHS[retain.unit] >= need:
            return None
        needed = Period(need // 12, "years") if need % 12 == 0 else Period(need, "months")
    else:
        need = minimum.n * _LONGEST_DAYS[minimum.unit] + _ALIGN_GAP_DAYS[gap]
        if retain.n * _SHORTEST_DAYS[retain.unit] >= need:
            return None
        needed = Period(need, "days")
    start = {"none": "the event", "end_of_month": "the end of its month", "end_of_year": "the end of its year"}
    return (f"{retain} from {start[align]} (align: {align}) can end before the statutory minimum of {minimum} "
            f"from {start[minimum_align]} (minimum_align: {minimum_align}); use align: {minimum_align}, "
            f"or retain at least {needed}")


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
    """When a row whose event happened at ``event`` becomes due: ``align(event) + period``.

    This is the definition the cut-off implements. ``event`` is a local wall-clock date-time,
    or a date (a DATE column: the start of that day). Month and year arithmetic clamps:
    2024-02-29 10:00 + 24 months = 2026-02-28 10:00.
    """
    if not isinstance(event, dt.datetime):
        event = pendulum.naive(event.year, event.month, event.day)
    elif not isinstance(event, pendulum.DateTime):
        event = pendulum.instance(event) if event.tzinfo is not None else pendulum.naive(
            event.year, event.month, event.day, event.hour, event.minute, event.second, event.microsecond
        )
    return period.add_to(align_event(event, align))


def _naive(moment: pendulum.DateTime) -> dt.datetime:
    return dt.datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond
    )


Window = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True)
class Cutoff:
    """The due event moments of one policy at one moment.

    An event (local wall-clock, naive) is due when it is at or before ``local``, or inside one
    of the ``windows`` (inclusive ranges; only at month ends, see the module docstring).
    ``instant`` and :meth:`instant_windows` are the same for columns that carry a time zone;
    :attr:`date` is the last due day of a DATE column (a date counts from the start of its day,
    and the window days follow ``local``'s day without a gap).
    """

    local: dt.datetime
    instant: pendulum.DateTime
    timezone: str
    windows: tuple[Window, ...] = ()

    @property
    def date(self) -> dt.date:
        return self.windows[-1][0].date() if self.windows else self.local.date()

    def contains(self, event: dt.datetime) -> bool:
        """Whether an event at this wall-clock moment is due (what the SQL predicate tests)."""
        return event <= self.local or any(lo <= event <= hi for lo, hi in self.windows)

    def instant_windows(self) -> tuple[tuple[pendulum.DateTime, pendulum.DateTime], ...]:
        return tuple((_instant(lo, self.timezone), _instant(hi, self.timezone)) for lo, hi in self.windows)

    def isoformat(self) -> str:
        return self.instant.isoformat()

    def in_zone(self, zone: str) -> Cutoff:
        """The same due events for a column of naive wall-clock times of another zone
        (``after_timezone``): its values are read in ``zone``, aligned in ``timezone``.

        The main range ends at the last wall time in ``zone`` all of whose instants are at or
        before :attr:`instant`, and each window starts at the first wall time all of whose
        instants are at or after the window's: a wall time that occurs twice (the autumn
        clock change in ``zone``) is due only when both of its instants are.
        """
        if zone == self.timezone:
            return self
        windows = tuple((_wall_from(lo, zone), _wall_until(hi, zone)) for lo, hi in self.instant_windows())
        return Cutoff(local=_wall_until(self.instant, zone), instant=self.instant, timezone=zone,
                      windows=tuple((lo, hi) for lo, hi in windows if lo <= hi))


def _months(period: Period) -> int:
    return period.n * (12 if period.unit == "years" else 1)


def _shift_month(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def cutoff(as_of: pendulum.DateTime, period: Period, align: Align, timezone: str) -> Cutoff:
    """The due event moments at ``as_of``, as a :class:`Cutoff`.

    The arithmetic runs on the naive wall clock of ``timezone`` (that is what timezone-less
    columns hold), so a daylight-saving gap cannot move the boundary by an hour.
    """
    now = as_of.in_timezone(timezone)
    wall = pendulum.naive(now.year, now.month, now.day, now.hour, now.minute, now.second, now.microsecond)
    windows: list[Window] = []
    if align != "none":
        local = _aligned_cutoff(wall, period, align)
    elif period.unit in ("days", "weeks"):
        local = _naive(wall.subtract(**{period.unit: period.n}))
    else:
        # Events of month M (= now's month - k) land in now's month; earlier months are due,
        # later ones are not. Within M, day d lands on min(d, last day of now's month).
        year, month = _shift_month(wall.year, wall.month, -_months(period))
        last_m = _days_in_month(year, month)
        last_now = _days_in_month(wall.year, wall.month)
        if wall.day > last_m:
            # 31 Mar - 1 month: all of February lands before 31 March.
            local = dt.datetime.combine(dt.date(year, month, last_m), END_OF_DAY)
        else:
            local = dt.datetime(year, month, wall.day, wall.hour, wall.minute, wall.second, wall.microsecond)
            if wall.day == last_now:
                # Now is a month's last day: the later days of M clamp onto today, so each of
                # them is due up to now's time of day.
                for day in range(wall.day + 1, last_m + 1):
                    lo = dt.datetime(year, month, day)
                    windows.append((lo, dt.datetime.combine(lo.date(), local.time())))
    # A window that touches the main range (now is the last microsecond of a day) extends it.
    while windows and windows[0][0] - local <= dt.timedelta(microseconds=1):
        local = max(local, windows.pop(0)[1])
    return Cutoff(local=local, instant=_instant(local, timezone), timezone=timezone, windows=tuple(windows))


def _aligned_cutoff(wall: pendulum.DateTime, period: Period, align: Align) -> dt.datetime:
    """The end of the last month/year whose end + period is at or before now.

    ``align(x) + period`` never decreases from one month (year) to the next, so the due events
    are all those of the periods up to that one: a single range.
    """
    unit = "month" if align == "end_of_month" else "year"
    guess = wall.subtract(**{period.unit: period.n}).add(**{f"{unit}s": 1})
    end = align_event(guess, align)
    while expires_at(end, period) > wall:
        end = align_event(end.start_of(unit).subtract(microseconds=1), align)
    return _naive(end)


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


def _instants(wall: dt.datetime, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """The earliest and the latest instant (UTC) a wall time in ``zone`` can stand for."""
    a, b = (wall.replace(tzinfo=zone, fold=f).astimezone(dt.UTC) for f in (0, 1))
    return min(a, b), max(a, b)


_STEP = dt.timedelta(microseconds=1)


def _plain_wall(instant: dt.datetime, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """``instant`` as a plain UTC datetime, and its naive wall time in ``zone`` (no pendulum types)."""
    u = instant.astimezone(dt.UTC)
    plain = dt.datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=dt.UTC)
    return plain, plain.astimezone(zone).replace(tzinfo=None, fold=0)


def _wall_until(instant: dt.datetime, timezone: str) -> dt.datetime:
    """The last wall time in ``timezone`` whose every instant is at or before ``instant``."""
    zone = ZoneInfo(timezone)
    instant, wall = _plain_wall(instant, zone)
    if _instants(wall, zone)[1] <= instant:
        return wall
    # ``instant`` is the first of a repeated wall time: the repetition starts at most a day
    # earlier, and wall times before it are due.
    lo, hi = wall - dt.timedelta(days=1), wall
    while hi - lo > _STEP:
        mid = lo + (hi - lo) // 2
        if _instants(mid, zone)[1] <= instant:
            lo = mid
        else:
            hi = mid
    return lo


def _wall_from(instant: dt.datetime, timezone: str) -> dt.datetime:
    """The first wall time in ``timezone`` whose every instant is at or after ``instant``."""
    zone = ZoneInfo(timezone)
    instant, wall = _plain_wall(instant, zone)
    if _instants(wall, zone)[0] >= instant:
        return wall
    lo, hi = wall, wall + dt.timedelta(days=1)
    while hi - lo > _STEP:
        mid = lo + (hi - lo) // 2
        if _instants(mid, zone)[0] >= instant:
            hi = mid
        else:
            lo = mid
    return hi


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
    if not AS_OF_YEARS[0] <= parsed.year <= AS_OF_YEARS[1]:
        raise PeriodError(f"--as-of: year {parsed.year} is out of range ({AS_OF_YEARS[0]} to {AS_OF_YEARS[1]}): "
                          "the policies' periods could not be computed from it")
    return parsed.in_timezone(timezone)


def now(timezone: str) -> pendulum.DateTime:
    return pendulum.now(timezone)
