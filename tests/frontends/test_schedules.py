"""Schedules in a running daemon: APScheduler switches the periods, SIGHUP
reloads the rules, and the CLI shows both."""

import re
import signal
import smtplib
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from greygeo.cli import main
from tests.harness import US_CLIENT, DaemonThread, write_config
from tests.postfix import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"Subject: s\r\n\r\nHello.\r\n"

LIMIT = """
[[rules]]
name = "LIMIT_TO_DOMAIN"
action = "limit"
key = "recipient_domain"
rate = "100/m"
burst = 100
"""


def limited_in(
    tmp_path,
    geoip_db,
    maildir,
    name: str,
    hours: str,
    override: str = 'rate = "1/h"\nburst = 0',
) -> Path:
    """A config with the 100/m limit, and one UTC period that overrides it."""
    schedule = f"""
[schedule]
timezone = "UTC"
[[schedule.periods]]
name = "{name}"
hours = "{hours}"
[schedule.periods.rules.LIMIT_TO_DOMAIN]
{override}
"""
    return write_config(
        tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}", rules=LIMIT + schedule
    )


def around_now() -> str:
    """Hours of a period that is in force now (from an hour ago to in one)."""
    now = datetime.now(UTC)
    return f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=1):%H:%M}"


def wait_for(condition, timeout: float = 15.0) -> None:
    """Poll until the daemon has done something on its own clock."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the daemon did not get there in time")
        time.sleep(0.05)


def send(proxy, recipient: str = "bar@example.com") -> int:
    raw = proxy.raw(US_CLIENT)
    raw.command("EHLO mail.sender.test")
    raw.command("MAIL FROM:<a@sender.test>")
    reply = raw.command(f"RCPT TO:<{recipient}>")
    raw.close()
    return int(reply[:3])


def test_period_starting_after_start_tightens_the_limit(
    tmp_path, geoip_db, maildir, caplog
):
    """A period begins four seconds after start: APScheduler fires at its
    boundary, the limit drops from 100/m to 1/h, and one line says so."""
    start = datetime.now(UTC) + timedelta(seconds=4)
    end = start + timedelta(hours=1)
    hours = f"{start:%H:%M:%S}-{end:%H:%M:%S}"
    config = limited_in(tmp_path, geoip_db, maildir, "strict", hours)
    caplog.set_level("INFO", logger="greygeo")
    with DaemonThread.from_file(config) as proxy:
        assert proxy.daemon.periods == []
        assert [send(proxy) for _ in range(3)] == [250, 250, 250]
        wait_for(lambda: proxy.daemon.periods == ["strict"])
        replies = [send(proxy) for _ in range(3)]
    assert 421 in replies and replies[-1] == 421
    (line,) = [r for r in caplog.records if r.getMessage() == "schedule switch"]
    assert (line.__dict__["from"], line.to) == ("base", "strict")
    assert line.changes == "LIMIT_TO_DOMAIN.rate=1/h/burst=0"


def test_started_inside_a_period_is_in_it_at_once(tmp_path, geoip_db, maildir):
    config = limited_in(tmp_path, geoip_db, maildir, "now", around_now())
    with DaemonThread.from_file(config) as proxy:
        assert proxy.daemon.periods == ["now"]
        assert [send(proxy), send(proxy)] == [250, 421]


def test_reload_changes_a_rule_without_dropping_a_session(
    tmp_path, geoip_db, maildir, caplog
):
    config = write_config(
        tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}", rules=LIMIT
    )
    caplog.set_level("INFO", logger="greygeo")
    with DaemonThread.from_file(config) as proxy:
        raw = proxy.raw(US_CLIENT)
        raw.command("EHLO mail.sender.test")
        raw.command("MAIL FROM:<a@sender.test>")
        assert raw.command("RCPT TO:<one@example.com>").startswith("250")

        config.write_text(
            config.read_text()
            + """
[[rules]]
name = "NO_MORE"
recipient_domain = ["example.com"]
action = "reject"
reply = "550 5.7.1 Closed for the night"
"""
        )

        async def reload() -> bool:
            return proxy.daemon.reload()

        assert proxy.run(reload()) is True
        assert raw.command("RCPT TO:<two@example.com>") == (
            "550 5.7.1 Closed for the night"
        )
        assert raw.command("DATA").startswith("354")
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply().startswith("250")  # the session went on

        config.write_text(config.read_text() + '\n[[rules]]\nname = "BROKEN"\n')
        assert proxy.run(reload()) is False
        assert send(proxy, "three@example.com") == 550  # the old policy stays
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "reload failed, the old config stays" in w and "BROKEN" in w for w in warnings
    )


def test_sighup_reloads_a_running_greygeo(tmp_path):
    port = free_port()
    config = tmp_path / "greygeo.toml"
    base = (
        (ROOT / "contrib" / "quickstart.toml")
        .read_text()
        .replace("127.0.0.1:2525", f"127.0.0.1:{port}")
    )
    config.write_text(base)
    log = (tmp_path / "greygeo.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "greygeo", "serve", "--config", str(config)],
        cwd=tmp_path,
        stderr=log,
    )
    try:
        wait_for_port("127.0.0.1", port)
        wait_for(lambda: "msg=started" in (tmp_path / "greygeo.log").read_text())
        config.write_text(
            base.replace(
                '[[rules]]\nname = "OK_COUNTRY_CODE"',
                '[[rules]]\nname = "SHUT"\naction = "reject"\n\n'
                '[[rules]]\nname = "OK_COUNTRY_CODE"',
            )
        )
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "msg=reloaded" in (tmp_path / "greygeo.log").read_text())
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("mail.example.org")
            client.mail("a@example.org")
            assert client.rcpt("b@example.com") == (550, b"5.7.1 Message refused")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in (tmp_path / "greygeo.log").read_text()


def schedule_config(tmp_path: Path) -> Path:
    from tests.rules.test_schedule import CONFIG

    path = tmp_path / "greygeo.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "s.sqlite3"}"\n' + CONFIG)
    return path


def test_check_at_a_night_time_uses_the_night_period(tmp_path, capsys):
    config = schedule_config(tmp_path)
    argv = [
        "check",
        "--config",
        str(config),
        "--client",
        "20.1.1.1",
        "--recipient",
        "bar@example.com",
    ]
    assert main([*argv, "--at", "2026-12-03T23:30"]) == 0
    out = capsys.readouterr().out
    assert "as of      2026-12-03T23:30:00+09:00" in out
    assert "period     night" in out
    assert re.search(r"LIMIT_TO_DOMAIN +within 1/10m", out)

    assert main([*argv, "--at", "2026-12-03T12:00:00+09:00"]) == 0
    out = capsys.readouterr().out
    assert "period     (none: base rules)" in out
    assert re.search(r"LIMIT_TO_DOMAIN +within 1/m", out)

    assert main([*argv, "--at", "yesterday"]) == 2


def test_schedule_command_lists_periods_and_next_switches(tmp_path, capsys):
    assert main(["schedule", "--config", str(schedule_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("time zone  Asia/Tokyo, now ")
    assert "  night            22:00:00-07:00:00 mon,tue,wed,thu,fri,sat,sun" in out
    assert "  weekend-days     07:00:00-22:00:00 sat,sun" in out
    switches = out.split("next switches:\n")[1].splitlines()
    assert len(switches) == 3
    assert all(
        re.match(r"  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00  -> ", s) for s in switches
    )


def test_reload_with_no_change_logs_no_switch_and_applies_purge_every(
    tmp_path, geoip_db, maildir, caplog
):
    config = limited_in(
        tmp_path, geoip_db, maildir, "now", around_now(), 'rate = "1/h"'
    )
    with DaemonThread.from_file(config) as proxy:

        async def reload() -> bool:
            return proxy.daemon.reload()

        caplog.set_level("INFO", logger="greygeo")
        assert proxy.run(reload())
        assert not [r for r in caplog.records if r.getMessage() == "schedule switch"]
        assert proxy.daemon.periods == ["now"]

        config.write_text(config.read_text() + '\n[greylist]\npurge_every = "3s"\n')
        assert proxy.run(reload())
        job = proxy.daemon.scheduler.get_job("purge")
        assert job.trigger.interval.total_seconds() == 3


def test_check_at_a_time_out_of_range_exits_2(tmp_path, capsys):
    config = schedule_config(tmp_path)
    argv = [
        "check",
        "--config",
        str(config),
        "--client",
        "20.1.1.1",
        "--at",
        "0001-01-01T00:00+09:00",
    ]
    assert main(argv) == 2
    assert "--at: not a date and time" in capsys.readouterr().err
