"""Which periods are in force when, and the policy they make."""

from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from greygeo.config import ConfigError, load_config
from greygeo.rules.schedule import Period, Schedule, parse_days, parse_hours, policy_at

BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")

NIGHT = Period("night", time(22), time(7))
WEEKEND_DAYS = Period("weekend-days", time(7), time(22), parse_days("sat,sun"))
FRIDAY_NIGHT = Period("friday-night", time(20), time(6), parse_days("fri"))
SCHEDULE = Schedule(TOKYO, (NIGHT, WEEKEND_DAYS, FRIDAY_NIGHT))


def at(text: str, zone: ZoneInfo = TOKYO) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


@pytest.mark.parametrize(
    ("local", "names"),
    [
        ("2026-12-03T12:00", []),  # Thursday noon
        ("2026-12-03T21:59", []),
        ("2026-12-03T22:00", ["night"]),  # crossing midnight: starts
        ("2026-12-04T03:00", ["night"]),  # ... goes on after midnight
        ("2026-12-04T06:59", ["night"]),
        ("2026-12-04T07:00", []),  # ... ends
        ("2026-12-04T20:30", ["friday-night"]),  # days filter: Friday only
        ("2026-12-04T23:00", ["night", "friday-night"]),  # overlap, file order
        ("2026-12-05T05:00", ["night", "friday-night"]),  # Friday's, on Saturday
        ("2026-12-05T06:30", ["night"]),
        ("2026-12-05T07:00", ["weekend-days"]),
        ("2026-12-06T21:59", ["weekend-days"]),
        ("2026-12-07T12:00", []),  # Monday
    ],
)
def test_active_periods_for_a_table_of_instants(local, names):
    assert [p.name for p in SCHEDULE.active(at(local))] == names


def test_utc_instants_are_read_in_the_schedule_zone():
    # 13:30 UTC is 22:30 in Tokyo.
    instant = datetime(2026, 12, 3, 13, 30, tzinfo=UTC)
    assert [p.name for p in SCHEDULE.active(instant)] == ["night"]


def test_dst_spring_forward_neither_skips_nor_doubles_a_switch():
    """Berlin, 2026-03-29: 02:00 jumps to 03:00. A period starting at 02:30
    is in force from the first instant after the gap."""
    early = Schedule(BERLIN, (Period("early", time(2, 30), time(5)),))
    before = datetime(2026, 3, 29, 0, 59, tzinfo=UTC)  # 01:59 CET
    after = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST
    assert early.active(before) == []
    assert [p.name for p in early.active(after)] == ["early"]
    switches = early.next_switches(before, count=2)
    assert [s.astimezone(UTC) for s in switches] == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST, the end of the gap
        datetime(2026, 3, 29, 3, 0, tzinfo=UTC),  # 05:00 CEST
    ]


def test_dst_fall_back_gives_the_same_answer_for_the_doubled_hour():
    """Berlin, 2026-10-25: 02:00-03:00 happens twice. A period ending at
    02:30 ends at the first 02:30 and does not start again."""
    late = Schedule(BERLIN, (Period("late", time(22), time(2, 30)),))
    first = datetime(2026, 10, 25, 0, 15, tzinfo=UTC)  # 02:15 CEST
    second = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)  # 02:15 CET
    after = datetime(2026, 10, 25, 1, 45, tzinfo=UTC)  # 02:45 CET
    assert [p.name for p in late.active(first)] == ["late"]
    assert [p.name for p in late.active(second)] == ["late"]
    assert late.active(after) == []
    switches = late.next_switches(datetime(2026, 10, 24, 12, tzinfo=UTC), count=2)
    assert [s.strftime("%d %H:%M") for s in switches] == ["24 22:00", "25 02:30"]


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        ("mon-sun", set(range(7))),
        ("fri-mon", {4, 5, 6, 0}),
        ("wed", {2}),
    ],
)
def test_day_lists(text, days):
    assert parse_days(text) == days


@pytest.mark.parametrize("text", ["25:00-07:00", "22:00", "22:00-22:00", "7-8"])
def test_bad_time_ranges(text):
    with pytest.raises(ValueError, match="time range"):
        parse_hours(text)


CONFIG = """
[greylist]
delay = "5m"

[[rules]]
name = "LIMIT_TO_DOMAIN"
action = "limit"
key = "recipient_domain"
rate = "1/m"

[[rules]]
name = "NO_LOCALHOST"
helo = "^localhost$"
action = "tempfail"

[schedule]
timezone = "Asia/Tokyo"

[[schedule.periods]]
name = "night"
hours = "22:00-07:00"
days = "mon-sun"
[schedule.periods.rules.LIMIT_TO_DOMAIN]
rate = "1/10m"
burst = 0
[schedule.periods.greylist]
delay = "15m"

[[schedule.periods]]
name = "weekend-days"
hours = "07:00-22:00"
days = "sat,sun"
[schedule.periods.rules.LIMIT_TO_DOMAIN]
rate = "1/5m"
[schedule.periods.rules.NO_LOCALHOST]
enabled = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "greygeo.toml"
    path.write_text(text)
    return path


def test_the_issue_example_makes_night_and_weekend_policies(tmp_path):
    config = load_config(write(tmp_path, CONFIG))
    base = config.policy

    night, names = policy_at(base, config.schedule, at("2026-12-03T23:30"))
    assert names == ["night"]
    assert str(night.rules[0].limit.rate) == "1/10m"
    assert night.greylist.delay == 900

    weekend, names = policy_at(base, config.schedule, at("2026-12-05T12:00"))
    assert names == ["weekend-days"]
    assert str(weekend.rules[0].limit.rate) == "1/5m"
    assert weekend.rules[1].enabled is False
    assert weekend.greylist.delay == 300

    day, names = policy_at(base, config.schedule, at("2026-12-03T12:00"))
    assert (names, day) == ([], base)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("LIMIT_TO_DOMAIN]\nrate", "NOPE]\nrate"),
            "schedule.periods.night.rules.NOPE: no rule named 'NOPE'",
        ),
        (
            ('hours = "22:00-07:00"', 'hours = "22:00-31:00"'),
            "schedule.periods.night.hours: not a time range",
        ),
        (
            ('days = "mon-sun"', 'days = "mon-funday"'),
            "schedule.periods.night.days: not days like mon-fri",
        ),
        (
            ('timezone = "Asia/Tokyo"', 'timezone = "Mars/Olympus"'),
            "schedule.timezone: not an IANA time zone: 'Mars/Olympus'",
        ),
        (
            (
                "[schedule.periods.rules.NO_LOCALHOST]\nenabled",
                '[schedule.periods.rules.NO_LOCALHOST]\nrate = "1/m"\nenabled',
            ),
            "schedule.periods.weekend-days.rules.NO_LOCALHOST.rate: rule NO_LOCALHOST "
            "is not a limit rule",
        ),
        (
            ('delay = "15m"', 'delay = "3d"'),
            "schedule.periods.night.greylist.delay: must be shorter",
        ),
    ],
)
def test_bad_schedules_name_the_key_and_value(tmp_path, change, message):
    old, new = change
    assert old in CONFIG
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, CONFIG.replace(old, new, 1)))
    assert message in str(info.value)


def test_a_whole_day_is_written_00_00_24_00():
    whole = Period("all-saturday", *parse_hours("00:00-24:00"), parse_days("sat"))
    assert whole.covers(at("2026-12-05T00:00")) and whole.covers(at("2026-12-05T23:59"))
    assert not whole.covers(at("2026-12-06T00:00"))


@pytest.mark.parametrize("text", ["mon-", "-fri", "mon,,tue", "monday"])
def test_bad_day_lists(text):
    with pytest.raises(ValueError, match="not days like"):
        parse_days(text)


def test_duplicate_period_names_are_refused(tmp_path):
    text = CONFIG.replace('name = "weekend-days"', 'name = "night"')
    with pytest.raises(ConfigError, match=r"schedule.periods\[1\].name: duplicate"):
        load_config(write(tmp_path, text))
