"""`minimum` protects the real earliest moment (issue 11, item 4): the statutory floor is
checked against `retain` *and* `align`, and may count from its own `minimum_align`.

:func:`floor_shortfall` is pure; it is checked here against the definition itself
(:func:`expires_at` for both terms) over events at the edges of months and years, leap days
included: whenever it lets a policy through, no event's term ends before its floor; and for
month/year periods, whenever it refuses one, some event's term does.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from retention.policy.dates import ALIGNMENTS, expires_at, floor_shortfall, parse_period
from retention.policy.model import consistency_problems


# The moments where an alignment moves a start furthest: first and last moments of months and
# years, month ends of every length, 29 February, in a leap year and the year before.
def _events() -> list[dt.datetime]:
    out = []
    for year in (2019, 2020):
        for month in range(1, 13):
            for day in (1, 28, 29, 30, 31):
                try:
                    date = dt.date(year, month, day)
                except ValueError:
                    continue
                out += [dt.datetime.combine(date, dt.time()), dt.datetime.combine(date, dt.time(23, 59, 59, 999999))]
    return out


EVENTS = _events()


def violated(retain: str, align: str, minimum: str, minimum_align: str) -> dt.datetime | None:
    """The first event whose term ends before its floor, by the definition itself."""
    r, m = parse_period(retain), parse_period(minimum)
    for event in EVENTS:
        if expires_at(event, r, align) < expires_at(event, m, minimum_align):  # type: ignore[arg-type]
            return event
    return None


RETAINS = ["1 month", "2 months", "11 months", "12 months", "13 months", "7 years", "8 years", "95 months",
           "96 months", "31 days", "62 days", "2562 days", "2928 days", "5 weeks"]
MINIMUMS = ["1 month", "1 year", "7 years", "30 days"]


@pytest.mark.parametrize(("align", "minimum_align"), list(itertools.product(ALIGNMENTS, ALIGNMENTS)))
def test_a_policy_let_through_never_has_a_term_ending_before_its_floor(align: str, minimum_align: str) -> None:
    """Soundness, every pair of alignments: no accepted policy has an event due before its floor;
    with months and years the check is exact (a refused policy has such an event)."""
    for retain, minimum in itertools.product(RETAINS, MINIMUMS):
        said = floor_shortfall(parse_period(retain), align, parse_period(minimum), minimum_align)  # type: ignore[arg-type]
        found = violated(retain, align, minimum, minimum_align)
        if said is None:
            assert found is None, (retain, align, minimum, minimum_align, found)
        elif all(parse_period(p).unit in ("months", "years") for p in (retain, minimum)):
            assert found is not None, (retain, align, minimum, minimum_align, said)


@pytest.mark.parametrize(
    ("retain", "align", "minimum", "minimum_align", "message"),
    [
        # The issue's case: invoices of January-November would go up to 11 months early.
        ("7 years", "none", "7 years", "end_of_year",
         "7 years from the event (align: none) can end before the statutory minimum of 7 years from the end of "
         "its year (minimum_align: end_of_year); use align: end_of_year, or retain at least 8 years"),
        ("95 months", "none", "7 years", "end_of_year", "or retain at least 8 years"),
        ("7 years", "end_of_month", "7 years", "end_of_year", "or retain at least 95 months"),
        ("24 months", "none", "24 months", "end_of_month", "or retain at least 25 months"),
        ("2600 days", "none", "7 years", "end_of_year", "or retain at least 2928 days"),
        ("6 years", "end_of_year", "7 years", "end_of_year", "6 years is shorter than the statutory minimum of 7"),
        ("6 years", "end_of_year", "7 years", "none", "6 years is shorter than the statutory minimum of 7 years"),
    ],
)
def test_the_message_names_both_terms_and_a_fix(retain: str, align: str, minimum: str, minimum_align: str,
                                                message: str) -> None:
    said = floor_shortfall(parse_period(retain), align, parse_period(minimum), minimum_align)  # type: ignore[arg-type]
    assert said is not None and message in said


@pytest.mark.parametrize(
    ("retain", "align", "minimum", "minimum_align"),
    [
        ("7 years", "end_of_year", "7 years", "end_of_year"),  # the shipped invoices rule
        ("8 years", "none", "7 years", "end_of_year"),
        ("96 months", "none", "7 years", "end_of_year"),
        ("7 years", "end_of_year", "7 years", "none"),  # counting from later is always fine
        ("7 years", "end_of_year", "7 years", "end_of_month"),
        ("2928 days", "none", "7 years", "end_of_year"),
    ],
)
def test_policies_that_keep_the_floor_pass(retain: str, align: str, minimum: str, minimum_align: str) -> None:
    assert floor_shortfall(parse_period(retain), align, parse_period(minimum), minimum_align) is None  # type: ignore[arg-type]
    assert violated(retain, align, minimum, minimum_align) is None


def test_the_issue_case_is_due_eleven_months_early_by_the_definition() -> None:
    """Why it matters: an invoice of 1 January 2019 with align: none is due on 1 January 2026,
    while the book-year term runs to the end of 2026."""
    event = dt.datetime(2019, 1, 1)
    seven = parse_period("7 years")
    assert expires_at(event, seven, "none").naive() == dt.datetime(2026, 1, 1)
    assert expires_at(event, seven, "end_of_year").naive() == dt.datetime(2026, 12, 31, 23, 59, 59, 999999)
    assert violated("7 years", "none", "7 years", "end_of_year") == event


def test_consistency_problems_name_the_key_at_fault() -> None:
    base = {"table": "invoices", "after": "issued_at", "action": "delete", "minimum": "7 years"}
    assert [k for k, _ in consistency_problems({**base, "retain": "7 years", "align": "none",
                                                "minimum_align": "end_of_year"})] == ["align"]
    assert [k for k, _ in consistency_problems({**base, "retain": "6 years", "align": "end_of_year",
                                                "minimum_align": "end_of_year"})] == ["retain"]
    assert consistency_problems({**base, "retain": "7 years", "align": "end_of_year",
                                 "minimum_align": "end_of_year"}) == []
    # Without minimum_align the floor counts from the event, as before.
    assert consistency_problems({**base, "retain": "7 years", "align": "none"}) == []
    no_minimum = {k: v for k, v in base.items() if k != "minimum"}
    assert consistency_problems({**no_minimum, "retain": "7 years", "minimum_align": "end_of_year"}) == [
        ("minimum_align", "is the alignment of `minimum`, and there is no `minimum`")]
