"""Retention periods and cut-offs (retention.policy.dates): pure calendar arithmetic, no database.

The rule (CONTRACT.md section 2): a row is due when ``align(after) + retain`` is at or before
the run's moment, on the wall clock of the policy file's time zone, with calendar months and
years. The database only sees one value per policy, the cut-off, and selects ``after <= cutoff``;
these tests prove that this predicate is exactly the rule, for the hand-picked calendar traps
and for a few thousand random events and moments.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
from zoneinfo import ZoneInfo

import pendulum
import pytest

from retention.policy.dates import Period, PeriodError, cutoff, expires_at, parse_as_of, parse_period

TZ = "Europe/Amsterdam"
ZONE = ZoneInfo(TZ)
US = dt.timedelta(microseconds=1)
SECOND = dt.timedelta(seconds=1)
END = (23, 59, 59, 999999)


def naive(*args: int) -> pendulum.DateTime:
    return pendulum.naive(*args)


def at(*args: int) -> pendulum.DateTime:
    """A run's moment, given as local wall-clock time in TZ."""
    return pendulum.datetime(*args, tz=TZ)


def wall(moment: pendulum.DateTime) -> pendulum.DateTime:
    """The local wall-clock time of an aware moment, naive (what timezone-less columns hold)."""
    m = moment.in_timezone(TZ)
    return naive(m.year, m.month, m.day, m.hour, m.minute, m.second, m.microsecond)


def due(event: dt.datetime | dt.date, period: Period, align: str, as_of: pendulum.DateTime) -> bool:
    """The rule itself: the row is due when its term has ended by the run's moment."""
    if isinstance(event, dt.datetime):
        event = naive(event.year, event.month, event.day, event.hour, event.minute, event.second, event.microsecond)
    return expires_at(event, period, align) <= wall(as_of)  # type: ignore[arg-type]


def selected(event: dt.datetime | dt.date, period: Period, align: str, as_of: pendulum.DateTime) -> bool:
    """What the database does: ``after <= cutoff`` or inside a month-end window (a DATE column
    against ``cutoff.date``)."""
    cut = cutoff(as_of, period, align, TZ)  # type: ignore[arg-type]
    if isinstance(event, dt.datetime):
        return cut.contains(dt.datetime(event.year, event.month, event.day, event.hour, event.minute,
                                        event.second, event.microsecond))
    return event <= cut.date


# --------------------------------------------------------------------------- parse_period


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24 months", Period(24, "months")),
        ("1 month", Period(1, "months")),
        ("1 year", Period(1, "years")),
        ("7 years", Period(7, "years")),
        ("90 days", Period(90, "days")),
        ("1 day", Period(1, "days")),
        ("2 weeks", Period(2, "weeks")),
        ("1 week", Period(1, "weeks")),
        ("  7 Years ", Period(7, "years")),
    ],
)
def test_parse_period_reads_n_and_a_singular_or_plural_unit(text: str, expected: Period) -> None:
    assert parse_period(text) == expected


@pytest.mark.parametrize(("period", "text"), [(Period(1, "years"), "1 year"), (Period(24, "months"), "24 months")])
def test_a_period_prints_as_it_is_written(period: Period, text: str) -> None:
    assert str(period) == text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("7 yeers", "unknown unit 'yeers'"),
        ("7 fortnights", "use one of: days, weeks, months, years"),
        ("-1 days", "must be positive"),
        ("0 days", "must be positive"),
        ("seven years", "expected a period like"),
        ("1.5 years", "expected a period like"),
        ("7", "expected a period like"),
        ("years", "expected a period like"),
        ("7 years ago", "expected a period like"),
        ("", "expected a period like"),
        (None, "expected a period like"),
        (7, "expected a period like"),
    ],
)
def test_parse_period_rejects_typos_zero_negatives_and_non_text(value: object, message: str) -> None:
    with pytest.raises(PeriodError, match=message):
        parse_period(value)


@pytest.mark.parametrize(
    ("retain", "minimum", "meets"),
    [
        ("7 years", "7 years", True),
        ("84 months", "7 years", True),
        ("83 months", "7 years", False),
        ("8 years", "96 months", True),
        ("2562 days", "7 years", True),  # 7 leap-heavy years are at most 2562 days
        ("2555 days", "7 years", False),  # 7 * 365: can fall short of 7 calendar years
        ("5 weeks", "1 month", True),
        ("4 weeks", "1 month", False),
        ("6 years", "7 years", False),
    ],
)
def test_a_statutory_minimum_is_only_met_when_the_period_can_never_be_shorter(
    retain: str, minimum: str, meets: bool
) -> None:
    assert parse_period(retain).at_least(parse_period(minimum)) is meets


# --------------------------------------------------------------------------- exact cut-offs

# (as_of wall-clock, period, align, the expected cut-off: the last due event moment)
CASES = [
    # Plain periods: the same wall-clock time, N units back.
    ((2026, 11, 24, 3), "24 months", "none", (2024, 11, 24, 3)),
    ((2026, 11, 24, 3), "2 years", "none", (2024, 11, 24, 3)),
    ((2026, 11, 24, 0), "90 days", "none", (2026, 8, 26, 0)),
    ((2026, 11, 24, 0), "2 weeks", "none", (2026, 11, 10, 0)),
    ((2026, 1, 1, 0), "1 day", "none", (2025, 12, 31, 0)),
    # 31 March - 1 month: 28 February, and every moment of that day + 1 month is 28 March.
    ((2026, 3, 31, 12), "1 month", "none", (2026, 2, 28, *END)),
    ((2028, 3, 31, 0), "1 month", "none", (2028, 2, 29, *END)),
    ((2026, 5, 31, 8), "1 month", "none", (2026, 4, 30, *END)),
    # 29 February of a leap year, one year on: 28 February of the next.
    ((2028, 2, 29, 12), "1 year", "none", (2027, 2, 28, *END)),
    # Now 28 February: the main range ends at 28 February two years back, at now's time;
    # 29 February (clamped onto today) is a separate window, see the 29 February tests.
    ((2026, 2, 28, 0), "24 months", "none", (2024, 2, 28, 0)),
    ((2026, 2, 28, 12), "24 months", "none", (2024, 2, 28, 12)),
    ((2026, 2, 28, *END), "24 months", "none", (2024, 2, 29, *END)),
    ((2026, 4, 30, *END), "1 month", "none", (2026, 3, 31, *END)),
    # End of year: 7 fiscal years count from 31 December 23:59:59.999999.
    ((2027, 1, 1, 0), "7 years", "end_of_year", (2019, 12, 31, *END)),
    ((2026, 12, 31, 23, 59, 59), "7 years", "end_of_year", (2018, 12, 31, *END)),
    ((2026, 11, 24, 3), "7 years", "end_of_year", (2018, 12, 31, *END)),
    # End of month: January's events count from 31 January 23:59:59.999999 (+1 month: 28 Feb).
    ((2026, 3, 1, 0), "1 month", "end_of_month", (2026, 1, 31, *END)),
    ((2026, 2, 28, 23, 59, 59), "1 month", "end_of_month", (2025, 12, 31, *END)),
    ((2026, 12, 1, 0), "1 month", "end_of_month", (2026, 10, 31, *END)),
    ((2026, 11, 24, 3), "90 days", "end_of_month", (2026, 7, 31, *END)),
]


@pytest.mark.parametrize(("as_of", "retain", "align", "expected"), CASES)
def test_the_cutoff_is_the_last_due_moment_and_one_microsecond_later_is_not_due(
    as_of: tuple[int, ...], retain: str, align: str, expected: tuple[int, ...]
) -> None:
    period = parse_period(retain)
    moment = at(*as_of)
    cut = cutoff(moment, period, align, TZ)  # type: ignore[arg-type]
    assert cut.local == dt.datetime(*expected)
    assert due(cut.local, period, align, moment), "an event exactly at the cut-off is due"
    assert not due(cut.local + US, period, align, moment), "one microsecond after the cut-off is not"
    assert not due(cut.local + SECOND, period, align, moment), "one second after the cut-off is not"
    assert due(cut.local - SECOND, period, align, moment)


def test_29_february_plus_24_months_is_28_february_for_a_date_column() -> None:
    period = parse_period("24 months")
    assert expires_at(dt.date(2024, 2, 29), period) == naive(2026, 2, 28)
    assert selected(dt.date(2024, 2, 29), period, "none", at(2026, 2, 28))
    assert due(dt.date(2024, 2, 29), period, "none", at(2026, 2, 28))
    assert not selected(dt.date(2024, 2, 29), period, "none", at(2026, 2, 27, *END))
    assert not due(dt.date(2024, 2, 29), period, "none", at(2026, 2, 27, *END))
    assert cutoff(at(2026, 2, 28), period, "none", TZ).date == dt.date(2024, 2, 29)
    assert cutoff(at(2026, 2, 27), period, "none", TZ).date == dt.date(2024, 2, 27)


def test_29_february_with_a_time_is_due_at_its_time_of_day_on_28_february() -> None:
    """CONTRACT.md exactly: 2024-02-29 10:15 + 24 months = 2026-02-28 10:15. At 10:15 it is due
    while 2024-02-28 13:00 is not yet (due at 13:00): the due set is a range plus a window."""
    period = parse_period("24 months")
    assert expires_at(naive(2024, 2, 29, 10, 15), period) == naive(2026, 2, 28, 10, 15)
    assert expires_at(naive(2024, 2, 28, 13, 0), period) == naive(2026, 2, 28, 13, 0)
    assert not selected(naive(2024, 2, 29, 10, 15), period, "none", at(2026, 2, 28, 10, 14, 59))
    assert selected(naive(2024, 2, 29, 10, 15), period, "none", at(2026, 2, 28, 10, 15))
    assert not selected(naive(2024, 2, 29, 10, 15, 0, 1), period, "none", at(2026, 2, 28, 10, 15))
    assert not selected(naive(2024, 2, 28, 13, 0), period, "none", at(2026, 2, 28, 12)), "never removed early"
    assert selected(naive(2024, 2, 28, 12, 0), period, "none", at(2026, 2, 28, 12))
    assert selected(naive(2024, 2, 29, 10, 15), period, "none", at(2026, 2, 28, 12))
    cut = cutoff(at(2026, 2, 28, 12), period, "none", TZ)
    assert cut.local == dt.datetime(2024, 2, 28, 12)
    assert cut.windows == ((dt.datetime(2024, 2, 29), dt.datetime(2024, 2, 29, 12)),)


def test_31_january_plus_1_month_windows_cover_29_30_and_31_january() -> None:
    """On 28 February, 29, 30 and 31 January (+1 month, clamped) are due up to now's time of day."""
    period = parse_period("1 month")
    cut = cutoff(at(2026, 2, 28, 9, 30), period, "none", TZ)
    assert cut.local == dt.datetime(2026, 1, 28, 9, 30)
    assert [lo.day for lo, _ in cut.windows] == [29, 30, 31]
    assert all(hi.time() == dt.time(9, 30) for _, hi in cut.windows)
    assert cut.date == dt.date(2026, 1, 31)
    assert selected(naive(2026, 1, 31, 9, 30), period, "none", at(2026, 2, 28, 9, 30))
    assert not selected(naive(2026, 1, 31, 9, 30, 1), period, "none", at(2026, 2, 28, 9, 30))
    assert not selected(naive(2026, 1, 28, 9, 30, 1), period, "none", at(2026, 2, 28, 9, 30))


def test_31_march_minus_1_month_clamps_to_the_last_day_of_february() -> None:
    period = parse_period("1 month")
    assert expires_at(naive(2026, 2, 28, 23, 0), period) == naive(2026, 3, 28, 23, 0)
    assert expires_at(naive(2026, 1, 31, 9, 0), period) == naive(2026, 2, 28, 9, 0)
    assert expires_at(dt.date(2026, 1, 31), period) == naive(2026, 2, 28)
    cut = cutoff(at(2026, 3, 31, 3), period, "none", TZ)
    assert cut.local == dt.datetime(2026, 2, 28, *END)
    assert not selected(naive(2026, 3, 1), period, "none", at(2026, 3, 31, 3))


@pytest.mark.parametrize(
    "event",
    [
        naive(2019, 12, 31, 23, 59, 59),
        naive(2019, 12, 31),
        naive(2019, 1, 1),
        dt.date(2019, 12, 31),
        dt.date(2019, 1, 1),
    ],
)
def test_end_of_year_7_years_a_2019_event_is_due_from_1_january_2027_not_a_second_before(
    event: dt.datetime | dt.date,
) -> None:
    period = parse_period("7 years")
    assert expires_at(event, period, "end_of_year") == naive(2026, 12, 31, *END)  # type: ignore[arg-type]
    assert due(event, period, "end_of_year", at(2027, 1, 1))
    assert selected(event, period, "end_of_year", at(2027, 1, 1))
    assert not due(event, period, "end_of_year", at(2026, 12, 31, 23, 59, 59))
    assert not selected(event, period, "end_of_year", at(2026, 12, 31, 23, 59, 59))


@pytest.mark.parametrize("event", [naive(2020, 1, 1), dt.date(2020, 1, 1)])
def test_end_of_year_7_years_a_1_january_2020_event_waits_for_2028(event: dt.datetime | dt.date) -> None:
    period = parse_period("7 years")
    assert not due(event, period, "end_of_year", at(2027, 1, 1))
    assert not selected(event, period, "end_of_year", at(2027, 1, 1))
    assert not selected(event, period, "end_of_year", at(2027, 12, 31, 23, 59, 59))
    assert selected(event, period, "end_of_year", at(2028, 1, 1))


@pytest.mark.parametrize(
    "event", [naive(2026, 1, 31, 23, 59, 59), naive(2026, 1, 1), dt.date(2026, 1, 31), dt.date(2026, 1, 1)]
)
def test_end_of_month_a_january_event_with_1_month_is_due_from_1_march(event: dt.datetime | dt.date) -> None:
    period = parse_period("1 month")
    assert expires_at(event, period, "end_of_month") == naive(2026, 2, 28, *END)  # type: ignore[arg-type]
    assert selected(event, period, "end_of_month", at(2026, 3, 1))
    assert not selected(event, period, "end_of_month", at(2026, 2, 28, 23, 59, 59))
    assert not selected(naive(2026, 2, 1), period, "end_of_month", at(2026, 3, 1))


# --------------------------------------------------------------------------- daylight saving time


def test_days_are_wall_clock_days_across_spring_forward() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: that "day" has 23 hours.
    as_of = pendulum.parse("2026-03-29T12:00:00+02:00")
    cut = cutoff(as_of, parse_period("1 day"), "none", TZ)
    assert cut.local == dt.datetime(2026, 3, 28, 12, 0)
    assert cut.instant == pendulum.parse("2026-03-28T12:00:00+01:00")
    assert as_of - cut.instant == dt.timedelta(hours=23)
    assert selected(naive(2026, 3, 28, 12), parse_period("1 day"), "none", as_of)
    assert not selected(naive(2026, 3, 28, 12, 0, 0, 1), parse_period("1 day"), "none", as_of)


def test_a_cutoff_inside_the_spring_forward_gap_is_the_instant_before_the_gap() -> None:
    # 2026-03-29 02:30 does not exist in Amsterdam; instants with a wall time up to 02:30 are
    # exactly those before 03:00 CEST.
    cut = cutoff(pendulum.parse("2026-03-30T02:30:00+02:00"), parse_period("1 day"), "none", TZ)
    assert cut.local == dt.datetime(2026, 3, 29, 2, 30)
    assert cut.instant == pendulum.parse("2026-03-29T01:59:59.999999+01:00")
    assert pendulum.parse("2026-03-29T03:00:00+02:00") > cut.instant


def test_days_are_wall_clock_days_across_fall_back() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: that "day" has 25 hours.
    as_of = pendulum.parse("2026-10-25T12:00:00+01:00")
    cut = cutoff(as_of, parse_period("1 day"), "none", TZ)
    assert cut.local == dt.datetime(2026, 10, 24, 12, 0)
    assert as_of - cut.instant == dt.timedelta(hours=25)
    cut90 = cutoff(as_of, parse_period("90 days"), "none", TZ)
    assert cut90.local == dt.datetime(2026, 7, 27, 12, 0)
    assert cut90.instant == pendulum.parse("2026-07-27T12:00:00+02:00")


def test_a_cutoff_in_the_repeated_hour_is_its_first_occurrence_so_nothing_goes_early() -> None:
    cut = cutoff(pendulum.parse("2026-10-26T02:30:00+01:00"), parse_period("1 day"), "none", TZ)
    assert cut.local == dt.datetime(2026, 10, 25, 2, 30)
    assert cut.instant.isoformat() == "2026-10-25T02:30:00+02:00"


def test_an_as_of_inside_the_fall_back_hour_counts_back_on_the_wall_clock() -> None:
    as_of = pendulum.parse("2026-10-25T02:30:00+01:00")  # the second 02:30
    cut = cutoff(as_of, parse_period("90 days"), "none", TZ)
    assert cut.local == dt.datetime(2026, 7, 27, 2, 30)


# --------------------------------------------------------------------------- the key invariant


def _random_wall(rng: random.Random) -> pendulum.DateTime:
    """A wall-clock moment that likes month ends, leap days, midnight and the last microsecond."""
    year = rng.randint(2016, 2030)
    month = rng.choice([1, 2, 2, 2, 3, 3, 4, 10, 12, 12, rng.randint(1, 12)])
    last = calendar.monthrange(year, month)[1]
    day = rng.choice([1, 28, 29 if last >= 29 else 28, last, last, last - 1, rng.randint(1, last)])
    kind = rng.random()
    if kind < 0.3:
        time = (0, 0, 0, 0)
    elif kind < 0.5:
        time = END
    else:
        time = (rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999999)]))
    return naive(year, month, day, *time)


def _random_period(rng: random.Random) -> Period:
    unit = rng.choice(["days", "weeks", "months", "months", "years", "years"])
    n = rng.choice([1, 2, 3, 7, 24, 30, 90]) if unit != "years" else rng.randint(1, 10)
    return Period(n, unit)  # type: ignore[arg-type]


def test_property_an_event_is_selected_by_the_cutoff_exactly_when_its_term_has_ended() -> None:
    """``cutoff.contains(event)`` iff ``expires_at(event) <= as_of`` (wall clock), and the same
    for DATE columns (``date <= cutoff.date``) and for instants (``instant <= cutoff.instant``)."""
    rng = random.Random(20261124)
    checked = 0
    for _ in range(4000):
        period = _random_period(rng)
        align = rng.choice(["none", "none", "end_of_month", "end_of_year"])
        as_of_wall = _random_wall(rng)
        as_of = pendulum.instance(dt.datetime(*as_of_wall.timetuple()[:6], as_of_wall.microsecond), tz=TZ)
        now = wall(as_of)
        cut = cutoff(as_of, period, align, TZ)  # type: ignore[arg-type]
        near = pendulum.instance(cut.local)
        events = [
            _random_wall(rng),
            _random_wall(rng),
            naive(*cut.local.timetuple()[:6], cut.local.microsecond),
            naive(*(cut.local + US).timetuple()[:6], (cut.local + US).microsecond),
            naive(*(cut.local - US).timetuple()[:6], (cut.local - US).microsecond),
            naive(near.year, near.month, near.day).add(days=rng.randint(-3, 3), hours=rng.randint(0, 23)),
        ]
        for event in events:
            expected = expires_at(event, period, align) <= now  # type: ignore[arg-type]
            assert cut.contains(_naive(event)) == expected, (event, period, align, now, cut)
            day = event.date()
            assert (day <= cut.date) == (expires_at(day, period, align) <= now), (day, period, align, now)  # type: ignore[arg-type]
            checked += 2
        # A column with a time zone: an instant is due exactly when its wall time is, except in
        # the hour that happens twice (each of its wall times stands for two instants).
        instant = dt.datetime(*_random_wall(rng).timetuple()[:6], tzinfo=dt.UTC)
        local = instant.astimezone(ZONE).replace(tzinfo=None)
        if local.replace(tzinfo=ZONE, fold=0).utcoffset() == local.replace(tzinfo=ZONE, fold=1).utcoffset():
            assert (instant <= cut.instant) == (local <= cut.local), (instant, local, cut)
            checked += 1
    assert checked > 40_000


def _naive(moment: pendulum.DateTime) -> dt.datetime:
    return dt.datetime(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
                       moment.microsecond)


def test_property_expiry_never_decreases_so_one_cutoff_can_be_exact() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        period = _random_period(rng)
        align = rng.choice(["none", "end_of_month", "end_of_year"])
        a, b = sorted([_random_wall(rng), _random_wall(rng)])
        assert expires_at(a, period, align) <= expires_at(b, period, align), (a, b, period, align)  # type: ignore[arg-type]
        assert expires_at(a, period, align) >= a  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parse_as_of


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24", "2026-11-24T00:00:00+01:00"),  # a date: the start of that day, local
        ("2026-07-01", "2026-07-01T00:00:00+02:00"),
        ("2026-11-24T03:00:00", "2026-11-24T03:00:00+01:00"),  # no offset: local wall time
        ("2026-11-24T03:00:00+00:00", "2026-11-24T04:00:00+01:00"),  # an offset: that instant
        ("2026-11-24T02:00:00Z", "2026-11-24T03:00:00+01:00"),
    ],
)
def test_parse_as_of_reads_a_date_as_the_start_of_its_local_day_and_keeps_an_offset(text: str, expected: str) -> None:
    moment = parse_as_of(text, TZ)
    assert moment == pendulum.parse(expected)
    assert moment.isoformat() == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "24-11-2026", "01/02/2026", "next friday", ""])
def test_parse_as_of_rejects_what_is_not_iso_8601_rather_than_guessing_day_and_month(text: str) -> None:
    with pytest.raises(PeriodError, match="--as-of"):
        parse_as_of(text, TZ)
