"""Deploy freeze windows: when a region refuses deploys (conf/deploy.yaml), and when the window ends.

A window is weekly (`start: "fri 18:00"`, `end: "mon 09:00"`) or once (`start: "2026-12-24
00:00"`, `end: "2026-12-27 00:00"`), in its `timezone` (an IANA name such as
Asia/Hong_Kong). Pure functions of the window and the time: `ends_at(window, now)` is the
end of the window `now` falls in, or None.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKLY = re.compile(r"(mon|tue|wed|thu|fri|sat|sun) ([01]\d|2[0-3]):([0-5]\d)")
_ONCE = re.compile(r"\d{4}-\d{2}-\d{2} ([01]\d|2[0-3]):[0-5]\d")
_WEEK_MINUTES = 7 * 24 * 60


def problem(start: str, end: str, timezone: str) -> str | None:
    """Return what is wrong with a window's start, end and timezone, or None when it can be used."""
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {timezone!r} is not an IANA time zone name such as Asia/Hong_Kong or UTC"
    kinds = {_kind(str(start)), _kind(str(end))}
    if None in kinds or len(kinds) != 1:
        return (f"start {start!r} and end {end!r} must both be weekly ('fri 18:00') or both be dates "
                "('2026-12-24 00:00')")
    if kinds == {"once"}:
        try:
            if datetime.strptime(end, "%Y-%m-%d %H:%M") <= datetime.strptime(start, "%Y-%m-%d %H:%M"):
                return f"end {end!r} must be after start {start!r}"
        except ValueError as exc:
            return f"{start!r} to {end!r}: {exc}"
    elif start == end:
        return f"start and end are both {start!r}; a weekly window needs two different times"
    return None


def ends_at(start: str, end: str, timezone: str, now: datetime) -> datetime | None:
    """Return when the window that `now` (aware) falls in ends, or None when `now` is outside it."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    if _kind(start) == "once":
        begins = datetime.strptime(start, "%Y-%m-%d %H:%M").replace(tzinfo=zone)
        ends = datetime.strptime(end, "%Y-%m-%d %H:%M").replace(tzinfo=zone)
        return ends if begins <= local < ends else None
    start_minute, end_minute = _week_minute(start), _week_minute(end)
    now_minute = local.weekday() * 24 * 60 + local.hour * 60 + local.minute
    since_start = (now_minute - start_minute) % _WEEK_MINUTES
    length = (end_minute - start_minute) % _WEEK_MINUTES
    if since_start >= length:
        return None
    began = local.replace(second=0, microsecond=0) - timedelta(minutes=since_start)
    return began + timedelta(minutes=length)


def _kind(text: str) -> str | None:
    return "weekly" if _WEEKLY.fullmatch(text) else "once" if _ONCE.fullmatch(text) else None


def _week_minute(text: str) -> int:
    day, hour, minute = _WEEKLY.fullmatch(text).groups()
    return WEEKDAYS.index(day) * 24 * 60 + int(hour) * 60 + int(minute)
