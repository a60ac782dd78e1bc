"""Window arithmetic (policies_app.windows): recurrence, blackouts and both daylight-saving transitions."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

import pytest

from policies_app.choices import LAST_DAY_OF_MONTH
from policies_app.windows import WindowSpec, current_or_next, last_ended, next_openings, open_at, time_zone_problem

UTC = dt_timezone.utc
SUNDAY = 6
# Europe/Berlin: clocks jump 02:00 → 03:00 on Sun 2026-03-29 and fall back 03:00 → 02:00 on Sun 2026-10-25.
BERLIN_SPRING = date(2026, 3, 29)
BERLIN_FALL = date(2026, 10, 25)
# America/New_York: 02:00 → 03:00 on Sun 2026-03-08; 02:00 → 01:00 on Sun 2026-11-01.
NEW_YORK_SPRING = date(2026, 3, 8)
NEW_YORK_FALL = date(2026, 11, 1)


def sunday_window(zone: str, start: time, minutes: int = 120, **extra) -> WindowSpec:
    return WindowSpec(time_zone=zone, start_time=start, duration_minutes=minutes, weekdays=frozenset({SUNDAY}),
                      **extra)


def just_before(day: date) -> datetime:
    return datetime.combine(day - timedelta(days=1), time(12, 0), tzinfo=UTC)


@pytest.mark.parametrize(("zone", "day", "start", "opens_utc"), [
    # 02:30 does not exist: the window opens when the clock jumps, 03:00 local summer time.
    ("Europe/Berlin", BERLIN_SPRING, time(2, 30), datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
    ("America/New_York", NEW_YORK_SPRING, time(2, 30), datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
    # A time just before the gap is untouched.
    ("Europe/Berlin", BERLIN_SPRING, time(1, 59), datetime(2026, 3, 29, 0, 59, tzinfo=UTC)),
])
def test_spring_forward_start_in_the_gap_opens_when_the_clock_jumps(zone, day, start, opens_utc):
    spec = sunday_window(zone, start)
    occurrence = next_openings(spec, just_before(day))[0]
    assert occurrence.local_date == day
    assert occurrence.start == opens_utc
    assert occurrence.end - occurrence.start == timedelta(minutes=120)  # real elapsed time


@pytest.mark.parametrize(("zone", "day", "start", "first_utc"), [
    # 01:30 happens twice in New York (EDT, then EST): the first one, 05:30 UTC, opens it.
    ("America/New_York", NEW_YORK_FALL, time(1, 30), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
    # 02:30 happens twice in Berlin (CEST, then CET): the first one, 00:30 UTC.
    ("Europe/Berlin", BERLIN_FALL, time(2, 30), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
])
def test_fall_back_start_that_happens_twice_opens_once_at_the_first(zone, day, start, first_utc):
    spec = sunday_window(zone, start, minutes=60)
    occurrences = next_openings(spec, just_before(day), count=2)
    assert occurrences[0].start == first_utc
    # The next opening is a week later, not the repeated hour.
    assert occurrences[1].local_date == day + timedelta(days=7)
    second_time_round = first_utc + timedelta(hours=1)
    # During the repeated local hour the window opened at the first is still open, and nothing reopens.
    assert open_at(spec, second_time_round - timedelta(minutes=1)) == occurrences[0]
    assert open_at(spec, second_time_round + timedelta(minutes=1)) is None


def test_an_ordinary_day_keeps_its_local_time_on_both_sides_of_a_transition():
    spec = sunday_window("Europe/Berlin", time(3, 0))
    before, after = next_openings(spec, just_before(BERLIN_SPRING - timedelta(days=7)), count=2)
    assert before.start == datetime(2026, 3, 22, 2, 0, tzinfo=UTC)  # CET, UTC+1
    assert after.start == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # CEST, UTC+2


def test_days_of_the_month_and_the_last_day():
    spec = WindowSpec(time_zone="UTC", start_time=time(22, 0), duration_minutes=60,
                      month_days=frozenset({15, LAST_DAY_OF_MONTH}))
    found = next_openings(spec, datetime(2026, 2, 1, tzinfo=UTC), count=4)
    assert [o.local_date for o in found] == [date(2026, 2, 15), date(2026, 2, 28), date(2026, 3, 15),
                                             date(2026, 3, 31)]
    # 31 is skipped by months without one.
    spec31 = WindowSpec(time_zone="UTC", start_time=time(0, 0), duration_minutes=60, month_days=frozenset({31}))
    assert [o.local_date for o in next_openings(spec31, datetime(2026, 4, 1, tzinfo=UTC), count=2)] == [
        date(2026, 5, 31), date(2026, 7, 31)]


def test_blackouts_skip_occurrences_and_a_window_blacked_out_for_ever_never_opens():
    spec = sunday_window("UTC", time(2, 0), blackouts=((date(2026, 3, 1), date(2026, 3, 14)),))
    assert next_openings(spec, datetime(2026, 2, 27, tzinfo=UTC))[0].local_date == date(2026, 3, 15)
    forever = sunday_window("UTC", time(2, 0), blackouts=((date(2026, 1, 1), date(2099, 1, 1)),))
    assert current_or_next(forever, datetime(2026, 2, 27, tzinfo=UTC)) is None


def test_open_at_and_last_ended_are_relative_to_the_instant_given():
    spec = sunday_window("UTC", time(2, 0), minutes=120)
    opening = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    assert open_at(spec, opening - timedelta(seconds=1)) is None
    assert open_at(spec, opening).start == opening
    assert open_at(spec, opening + timedelta(minutes=119)).start == opening
    assert open_at(spec, opening + timedelta(minutes=120)) is None  # the end is not in the window
    assert current_or_next(spec, opening + timedelta(minutes=30)).start == opening
    assert last_ended(spec, opening + timedelta(minutes=119)).start == opening - timedelta(days=7)
    assert last_ended(spec, opening + timedelta(minutes=120)).start == opening


@pytest.mark.parametrize("name", ["", "Mars/Olympus", "../etc/passwd", "Europe/Berlin\n"])
def test_time_zone_problem_names_a_bad_zone(name):
    assert time_zone_problem(name)


def test_time_zone_problem_accepts_iana_names():
    assert time_zone_problem("Europe/Berlin") is None
    assert time_zone_problem("America/New_York") is None
