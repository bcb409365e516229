"""Time-of-day schedules: which periods are in force, and the policy then.

Design note. A period is a daily window of local time ("22:00-07:00", which
may cross midnight) on some days of the week. A window that crosses
midnight belongs to the day it starts on: with ``days = "fri"``, Saturday
03:00 is still Friday's night. Local time is computed in the schedule's
zone from an aware UTC instant, so a daylight-saving change needs no
special case: on the day an hour is missing, a window boundary inside it
takes effect at the first instant after the gap; on the day an hour is
doubled, the same local time happens twice and gives the same answer
twice.

The active periods are always computed from the clock, never remembered
from the last switch: greygeo started at 23:00 is in "night" at once, and a
switch that fires twice (or not at all) cannot leave a wrong policy behind.
A period overrides settings of named rules and of ``[greylist]``; when two
periods overlap, the later one in the file wins for the settings it names.
"""

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from greygeo.rules.engine import Policy
from greygeo.rules.reply import Reply
from greygeo.rules.rule import Rule
from greygeo.units import Rate

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?"
_HOURS = re.compile(rf"^\s*{_TIME}\s*-\s*{_TIME}\s*$")


@dataclass(frozen=True)
class RuleOverride:
    rate: Rate | None = None
    burst: int | None = None
    reply: Reply | None = None
    enabled: bool | None = None


@dataclass(frozen=True)
class Period:
    name: str
    start: time
    end: time
    days: frozenset[int] = frozenset(range(7))
    rules: dict[str, RuleOverride] = field(default_factory=dict)
    greylist_delay: float | None = None

    def covers(self, local: datetime) -> bool:
        """Whether this period is in force at this local time."""
        now = local.time()
        today = local.weekday()
        if self.start == self.end:  # a whole day, written 00:00-24:00
            return today in self.days
        if self.start <= self.end:
            return today in self.days and self.start <= now < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and now >= self.start) or (
            yesterday in self.days and now < self.end
        )

    def describe(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{self.start.isoformat()}-{self.end.isoformat()} {days}"


@dataclass(frozen=True)
class Schedule:
    zone: ZoneInfo
    periods: tuple[Period, ...] = ()

    def active(self, instant: datetime) -> list[Period]:
        """The periods in force at an aware instant, in file order."""
        local = instant.astimezone(self.zone)
        return [period for period in self.periods if period.covers(local)]

    def boundaries(self) -> list[time]:
        """Every local time of day at which some period starts or ends."""
        return sorted({p.start for p in self.periods} | {p.end for p in self.periods})

    def next_switches(self, instant: datetime, count: int = 3) -> list[datetime]:
        """The next instants at which the active periods change."""
        found: list[datetime] = []
        current = [p.name for p in self.active(instant)]
        local = instant.astimezone(self.zone)
        for day in range(9):
            date = (local + timedelta(days=day)).date()
            for moment in self.boundaries():
                candidate = self._instant_of(datetime.combine(date, moment))
                if candidate <= local:
                    continue
                names = [p.name for p in self.active(candidate)]
                if names != current:
                    found.append(candidate)
                    current = names
                    if len(found) == count:
                        return found
        return found

    def _instant_of(self, wall: datetime) -> datetime:
        """The first instant at which the local clock reads ``wall`` or
        later: a wall time lost to a daylight-saving gap maps to the end of
        the gap; a doubled one to its first occurrence."""
        instant = wall.replace(tzinfo=self.zone).astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) == wall:
            return instant.astimezone(self.zone)
        # In a gap: search the hour before for the jump, to the second.
        low, high = instant - timedelta(hours=1), instant
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).replace(tzinfo=None) >= wall:
                high = middle
            else:
                low = middle
        return high.replace(microsecond=0).astimezone(self.zone)


def parse_hours(text: str) -> tuple[time, time]:
    match = _HOURS.match(text)
    if not match:
        raise ValueError(f"not a time range like 22:00-07:00: {text!r}")
    h1, m1, s1, h2, m2, s2 = (int(part or 0) for part in match.groups())
    if h1 > 23 or h2 > 24 or max(m1, m2, s1, s2) > 59 or (h2 == 24 and m2 + s2):
        raise ValueError(f"not a time range like 22:00-07:00: {text!r}")
    start = time(h1, m1, s1)
    end = time(0, 0) if h2 == 24 else time(h2, m2, s2)
    if start == end and h2 != 24:
        raise ValueError(f"a time range must not be empty: {text!r}")
    return start, end


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``sat,sun``, ``mon-sun``, ``fri-mon`` (wrapping)."""
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if first not in DAY_NAMES or (dash and last not in DAY_NAMES):
            raise ValueError(f"not days like mon-fri or sat,sun: {text!r}")
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if last else a
        span = (b - a) % 7
        days.update((a + n) % 7 for n in range(span + 1))
    return frozenset(days)


def policy_at(
    base: Policy, schedule: Schedule, instant: datetime
) -> tuple[Policy, list[str]]:
    """The policy in force at an instant, and the names of its periods."""
    periods = schedule.active(instant)
    rules = list(base.rules)
    greylist = base.greylist
    for period in periods:
        for index, rule in enumerate(rules):
            override = period.rules.get(rule.name)
            if override is not None:
                rules[index] = _override(rule, override)
        if period.greylist_delay is not None:
            greylist = replace(greylist, delay=period.greylist_delay)
    policy = replace(base, rules=tuple(rules), greylist=greylist)
    return policy, [period.name for period in periods]


def _override(rule: Rule, override: RuleOverride) -> Rule:
    limit = rule.limit
    if limit is not None:
        limit = replace(
            limit,
            rate=override.rate or limit.rate,
            burst=limit.burst if override.burst is None else override.burst,
        )
    return replace(
        rule,
        reply=override.reply or rule.reply,
        enabled=rule.enabled if override.enabled is None else override.enabled,
        limit=limit,
    )


def changes(old: Policy, new: Policy) -> list[str]:
    """What differs between two policies, for the switch log line."""
    found = []
    for before, after in zip(old.rules, new.rules, strict=False):
        if before.enabled != after.enabled:
            found.append(f"{after.name}.enabled={str(after.enabled).lower()}")
        if before.limit and after.limit and before.limit != after.limit:
            found.append(
                f"{after.name}.rate={after.limit.rate}/burst={after.limit.burst}"
            )
        if before.reply != after.reply:
            found.append(f"{after.name}.reply={after.reply}")
    if old.greylist.delay != new.greylist.delay:
        found.append(f"greylist.delay={new.greylist.delay:g}s")
    return found
