"""Maintenance-window arithmetic: pure functions of a window's definition and an instant.

No database and no clock: every function takes the instant it reasons about, so tests freeze time by
passing a named constant.

Daylight-saving rules (the window's own IANA zone decides):

* Spring forward: a start time that does not exist that day (02:30 in Europe/Berlin on the last Sunday of
  March, when clocks jump from 02:00 to 03:00) opens the window at the instant the clock jumps (03:00
  local). The window still opens that day, as early as the day allows, and keeps its full duration.
* Fall back: a start time that happens twice (01:30 in America/New_York on the first Sunday of November,
  when clocks go from 02:00 back to 01:00) opens the window once, at the first of the two (01:30 daylight
  time). The second 01:30 opens nothing.
* The duration is real elapsed time: a two-hour window is two hours long even across a transition.

A window opens on a local date when the date's weekday is one of ``weekdays`` (0 = Monday) or its day of
the month is one of ``month_days`` (``LAST_DAY_OF_MONTH`` = -1 is the month's last day). A blackout is an
inclusive range of local dates on which the window does not open.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from policies_app.choices import LAST_DAY_OF_MONTH

# How far ahead a search looks before it says "never": a window on the 31st with a year of blackouts.
SEARCH_DAYS = 800


def time_zone_problem(name: str) -> str | None:
    """None when ``name`` is an IANA zone this machine knows; otherwise what is wrong with it."""
    if not name or name not in available_timezones():
        return f"{str(name)[:64]!r} is not an IANA time zone (for example Europe/Berlin or America/New_York)"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{name!r} is not an IANA time zone this server knows"
    return None


@dataclass(frozen=True)
class WindowSpec:
    time_zone: str
    start_time: time
    duration_minutes: int
    weekdays: frozenset[int] = field(default_factory=frozenset)
    month_days: frozenset[int] = field(default_factory=frozenset)
    # Inclusive (first, last) local dates when nothing opens.
    blackouts: tuple[tuple[date, date], ...] = ()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.duration_minutes)

    def opens_on(self, day: date) -> bool:
        if any(first <= day <= last for first, last in self.blackouts):
            return False
        if day.weekday() in self.weekdays:
            return True
        last_day = calendar.monthrange(day.year, day.month)[1]
        return day.day in self.month_days or (LAST_DAY_OF_MONTH in self.month_days and day.day == last_day)


@dataclass(frozen=True)
class Occurrence:
    """One opening of a window, in UTC. ``local_date`` is the window's own date for it (its identity)."""

    start: datetime
    end: datetime
    local_date: date

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def local_start(day: date, start: time, zone: ZoneInfo) -> datetime:
    """The UTC instant a window with local ``start`` opens on ``day`` (see the module's DST rules)."""
    wall = datetime.combine(day, start)
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(dt_timezone.utc).astimezone(zone).replace(tzinfo=None) == wall:
        # Exists (once, or twice at fall-back: fold=0 is the first of the two).
        return first.astimezone(dt_timezone.utc)
    # In a spring-forward gap: find the first instant whose local wall time is at or after ``wall``.
    # fold=0 reads the missing wall time with the offset from before the jump (an instant after it), fold=1
    # with the offset from after (an instant before it); the jump lies between the two. Transitions fall on
    # whole minutes in every zone, so a search to the minute finds it.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(dt_timezone.utc)
    high = first.astimezone(dt_timezone.utc)
    low, high = min(low, high), max(low, high)
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) / 2
        middle = middle.replace(second=0, microsecond=0)
        if middle <= low:
            break
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high


def occurrence_on(spec: WindowSpec, day: date) -> Occurrence | None:
    if not spec.opens_on(day):
        return None
    start = local_start(day, spec.start_time, spec.zone)
    return Occurrence(start=start, end=start + spec.duration, local_date=day)


def _occurrences_from(spec: WindowSpec, first_day: date, days: int = SEARCH_DAYS) -> Iterator[Occurrence]:
    for offset in range(days):
        occurrence = occurrence_on(spec, first_day + timedelta(days=offset))
        if occurrence is not None:
            yield occurrence


def _search_start(spec: WindowSpec, instant: datetime) -> date:
    # An occurrence that started up to ``duration`` ago (plus a day of zone offset) may still be open.
    return (instant - spec.duration).astimezone(spec.zone).date() - timedelta(days=1)


def next_openings(spec: WindowSpec, after: datetime, count: int = 1) -> list[Occurrence]:
    """The next ``count`` occurrences that open strictly after ``after``."""
    found = []
    for occurrence in _occurrences_from(spec, _search_start(spec, after)):
        if occurrence.start > after:
            found.append(occurrence)
            if len(found) == count:
                break
    return found


def open_at(spec: WindowSpec, instant: datetime) -> Occurrence | None:
    """The occurrence open at ``instant`` (start <= instant < end), if any."""
    for occurrence in _occurrences_from(spec, _search_start(spec, instant), days=(spec.duration.days + 3)):
        if occurrence.contains(instant):
            return occurrence
        if occurrence.start > instant:
            return None
    return None


def current_or_next(spec: WindowSpec, instant: datetime) -> Occurrence | None:
    """The occurrence open now, else the next one; None when the window never opens again."""
    return open_at(spec, instant) or next(iter(next_openings(spec, instant)), None)


def last_ended(spec: WindowSpec, instant: datetime, lookback_days: int = 62) -> Occurrence | None:
    """The latest occurrence that ended at or before ``instant`` (the one a stopped server may have missed)."""
    first_day = instant.astimezone(spec.zone).date() - timedelta(days=lookback_days)
    latest = None
    for occurrence in _occurrences_from(spec, first_day, days=lookback_days + 2):
        if occurrence.end <= instant:
            latest = occurrence
        elif occurrence.start > instant:
            break
    return latest


def parse_days(values: Iterable) -> frozenset[int]:
    return frozenset(int(value) for value in values)
