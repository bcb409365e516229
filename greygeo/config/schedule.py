"""The ``[schedule]`` table: the zone and the periods, checked against the
rules they override."""

from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal

from greygeo.config.table import (
    Table,
    boolean,
    non_negative_int,
    reject_reply,
    string,
    tempfail_reply,
)
from greygeo.rules.engine import Policy
from greygeo.rules.rule import Action, Rule
from greygeo.rules.schedule import (
    Period,
    RuleOverride,
    Schedule,
    parse_days,
    parse_hours,
)
from greygeo.units import parse_duration, parse_rate


def local_zone() -> ZoneInfo:
    """The system's zone, or UTC when it has no IANA name."""
    try:
        return ZoneInfo(str(tzlocal.get_localzone()))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def time_zone(value: Any) -> ZoneInfo:
    name = string(value)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"not an IANA time zone: {name!r}") from error


def read_schedule(table: Table, policy: Policy) -> Schedule:
    zone = table.take("timezone", None, time_zone) or local_zone()
    raw_periods = table.data.pop("periods", [])
    if not isinstance(raw_periods, list):
        raise table.error(
            "periods", "write each period as a [[schedule.periods]] table"
        )
    periods = [
        _period(Table(raw, f"schedule.periods[{index}]", table.source), policy)
        for index, raw in enumerate(raw_periods)
    ]
    names = [period.name for period in periods]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise table.error(f"periods[{index}].name", f"duplicate {name!r}")
    table.finish()
    return Schedule(zone, tuple(periods))


def _period(table: Table, policy: Policy) -> Period:
    name = table.take("name", "", string)
    if not name:
        raise table.error("name", "every period needs a name")
    table.where = f"schedule.periods.{name}"
    if "hours" not in table.data:
        raise table.error("hours", "every period needs hours, like 22:00-07:00")
    start, end = table.take(
        "hours", (time(0), time(0)), lambda v: parse_hours(string(v))
    )
    days = table.take("days", frozenset(range(7)), lambda v: parse_days(string(v)))

    rules_table = table.table("rules")
    by_name = {rule.name: rule for rule in policy.rules}
    overrides = {}
    for rule_name in list(rules_table.data):
        if rule_name not in by_name:
            raise rules_table.error(rule_name, f"no rule named {rule_name!r}")
        overrides[rule_name] = _rule_override(
            rules_table.table(rule_name), by_name[rule_name]
        )
    rules_table.finish()

    greylist_table = table.table("greylist")
    delay = greylist_table.take("delay", None, parse_duration)
    greylist_table.finish()
    if delay is not None and delay >= policy.greylist.retry_window:
        raise greylist_table.error(
            "delay", "must be shorter than [greylist] retry_window"
        )
    table.finish()
    return Period(name, start, end, days, overrides, delay)


def _rule_override(table: Table, rule: Rule) -> RuleOverride:
    is_limit = rule.action is Action.LIMIT
    for key in ("rate", "burst"):
        if key in table.data and not is_limit:
            raise table.error(key, f"rule {rule.name} is not a limit rule")
    if "reply" in table.data and rule.action is Action.ACCEPT:
        raise table.error("reply", "an accept rule sends no reply")
    reply_parser = reject_reply if rule.action is Action.REJECT else tempfail_reply
    override = RuleOverride(
        rate=table.take("rate", None, parse_rate),
        burst=table.take("burst", None, non_negative_int),
        reply=table.take("reply", None, reply_parser),
        enabled=table.take("enabled", None, boolean),
    )
    table.finish()
    return override
