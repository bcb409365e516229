"""Greylisting through the running proxy, the store's fail modes, and the
purge and stats commands on a store the daemon filled."""

import json
import mailbox
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greygeo.cli import main
from tests.harness import US_CLIENT, DaemonThread, FakeClock, write_config

GREYLIST_RULES = """
[[rules]]
name = "OK_TO_DOMAIN"
recipient_domain = ["example.net"]
action = "accept"

[[rules]]
name = "GREYLIST"
action = "greylist"
"""
MESSAGE = b"Subject: grey\r\n\r\nHello.\r\n"


def delivered(maildir: Path) -> list[bytes]:
    if not maildir.exists():
        return []
    return [bytes(m) for m in mailbox.Maildir(maildir, create=False)]


@pytest.fixture
def config(tmp_path, geoip_db, maildir):
    return write_config(
        tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}", rules=GREYLIST_RULES
    )


def transaction(proxy, recipients, expect_data=True):
    """MAIL, one RCPT per recipient, DATA if any was accepted; the replies."""
    raw = proxy.raw(US_CLIENT)
    raw.command("EHLO mail.sender.test")
    raw.command("MAIL FROM:<alice@sender.test>")
    replies = [raw.command(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
    if any(reply.startswith("250") for reply in replies):
        raw.command("DATA")
        raw.send(MESSAGE + b".\r\n")
        replies.append(raw.reply())
    raw.command("QUIT")
    return replies


def test_first_message_deferred_allow_listed_recipient_accepted(config, maildir):
    """One transaction: the greylisted recipient gets 451 4.7.1, the
    allow-listed one is relayed at once."""
    clock = FakeClock()
    with DaemonThread.from_file(config, clock) as proxy:
        replies = transaction(proxy, ["bob@example.com", "carol@example.net"])
    assert replies[0] == "451 4.7.1 Greylisted, please try again in 300 seconds"
    assert replies[1].startswith("250")
    assert replies[2].startswith("250 2.0.0")
    (message,) = delivered(maildir)
    assert b"Delivered-To: carol@example.net" in message
    assert b"bob@example.com" not in message
    assert b"X-Greylist" not in message


def test_retry_after_delay_is_relayed_with_x_greylist(config, maildir):
    clock = FakeClock()
    with DaemonThread.from_file(config, clock) as proxy:
        assert transaction(proxy, ["bob@example.com"])[0].startswith("451 4.7.1")
        clock.advance(120)
        assert transaction(proxy, ["bob@example.com"])[0] == (
            "451 4.7.1 Greylisted, please try again in 180 seconds"
        )
        clock.advance(200)
        replies = transaction(proxy, ["bob@example.com"])
    assert replies[0].startswith("250") and replies[1].startswith("250")
    (message,) = delivered(maildir)
    assert b"X-Greylist: delayed 320 seconds by greygeo; " in message


def test_state_survives_a_restart(config, maildir):
    """Each step runs a new daemon on the same store: the first sight, the
    pass and the known triplet are all remembered."""
    clock = FakeClock()
    with DaemonThread.from_file(config, clock) as proxy:
        assert transaction(proxy, ["bob@example.com"])[0].startswith("451 4.7.1")
    clock.advance(301)
    with DaemonThread.from_file(config, clock) as proxy:
        assert transaction(proxy, ["bob@example.com"])[0].startswith("250")
    clock.advance(60)
    with DaemonThread.from_file(config, clock) as proxy:
        assert transaction(proxy, ["bob@example.com"])[0].startswith("250")
    messages = delivered(maildir)
    assert len(messages) == 2
    assert sum(b"X-Greylist: delayed 301 seconds" in m for m in messages) == 1


def store_config(tmp_path, geoip_db, maildir, store_extra):
    return write_config(
        tmp_path,
        geoip=geoip_db,
        backend=f"maildir:{maildir}",
        rules=GREYLIST_RULES,
        store_extra=store_extra,
    )


def test_locked_store_applies_tempfail_and_logs_one_error(
    tmp_path, geoip_db, maildir, caplog
):
    """Another process holds the database past lock_timeout: the client gets
    a 4xx, one ERROR line is logged, and greygeo goes on serving."""
    config = store_config(tmp_path, geoip_db, maildir, 'lock_timeout = "0.2s"')
    with DaemonThread.from_file(config, FakeClock()) as proxy:
        holder = sqlite3.connect(tmp_path / "greygeo.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            caplog.set_level("INFO", logger="greygeo")
            replies = transaction(proxy, ["bob@example.com"])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert transaction(proxy, ["bob@example.com"])[0].startswith("451 4.7.1")
    assert replies == ["451 4.3.0 Temporary local problem, try again later"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "database is locked" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


@pytest.fixture
def read_only_store(tmp_path):
    """A migrated store file made immutable (chattr +i), which even root
    cannot write."""
    path = tmp_path / "greygeo.sqlite3"
    sqlite3.connect(path).close()
    main(
        [
            "migrate",
            "--config",
            str(write_config(tmp_path, geoip=None, backend="maildir:x")),
        ]
    )
    subprocess.run(["chattr", "+i", str(path)], check=True)
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize(
    ("on_error", "reply"),
    [
        ("tempfail", "451 4.3.0 Temporary local problem, try again later"),
        ("accept", "250 2.1.5 Ok"),
    ],
)
def test_read_only_store_applies_on_error(
    tmp_path, geoip_db, maildir, read_only_store, caplog, on_error, reply
):
    config = store_config(tmp_path, geoip_db, maildir, f'on_error = "{on_error}"')
    caplog.set_level("INFO", logger="greygeo")
    with DaemonThread.from_file(config, FakeClock()) as proxy:
        replies = transaction(proxy, ["bob@example.com"])
    assert replies[0] == reply
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "readonly database" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_purge_dry_run_real_run_and_second_run(config, maildir, capsys):
    """Expired entries go, live ones stay, and a second run removes nothing."""
    # The CLI purges as of the real clock: the daemon's starts 3 days ago.
    clock = FakeClock(time.time() - 3 * 86400 - 60)
    with DaemonThread.from_file(config, clock) as proxy:
        transaction(proxy, ["old@example.com"])  # never retried
        clock.advance(3 * 86400)  # past its retry window
        transaction(proxy, ["fresh@example.com"])  # waiting, still in time

    argv = ["purge", "--config", str(config)]
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would remove: 1 waiting triplets")
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("removed: 1 waiting triplets")
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("removed: 0 waiting triplets")

    assert main(["stats", "--config", str(config), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["triplets_waiting"] == 1
    assert figures["triplets_passed"] == 0
    assert figures["database_bytes"] > 0


def test_daemon_purges_on_its_interval(tmp_path, geoip_db, maildir, caplog):
    """APScheduler runs the purge every [greylist] purge_every."""
    config = write_config(
        tmp_path,
        geoip=geoip_db,
        backend=f"maildir:{maildir}",
        rules=GREYLIST_RULES,
        extra='[greylist]\npurge_every = "10m"\n',
    )
    clock = FakeClock()
    with DaemonThread.from_file(config, clock) as proxy:
        transaction(proxy, ["old@example.com"])
        clock.advance(3 * 86400)
        (job,) = proxy.daemon.scheduler.get_jobs()
        assert job.trigger.interval.total_seconds() == 600
        caplog.set_level("INFO", logger="greygeo")
        removed = proxy.run(job.func())
    assert removed["waiting triplets"] == 1
    (line,) = [r for r in caplog.records if r.getMessage() == "purged"]
    assert line.waiting_triplets == 1


def test_stats_text_lists_every_figure(config, capsys):
    clock = FakeClock()
    with DaemonThread.from_file(config, clock) as proxy:
        transaction(proxy, ["bob@example.com"])
    assert main(["stats", "--config", str(config)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["triplets_waiting"] == "1"
    assert lines["clients_auto_allowed"] == "0"
    assert lines["oldest_entry"].startswith("2027-01-15T08:00:00")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines["store_created"])


def test_check_shows_the_triplet_state_and_changes_nothing(config, capsys):
    with DaemonThread.from_file(config) as proxy:  # the real clock, as check's
        transaction(proxy, ["bob@example.com"])
    argv = [
        "check",
        "--config",
        str(config),
        "--client",
        "127.0.1.99",
        "--sender",
        "Alice+tag@Sender.test",
        "--recipient",
        "bob@example.com",
    ]
    for _ in range(2):
        assert main(argv) == 1
        out = capsys.readouterr().out
        assert (
            "greylist   (127.0.1.0/24, <alice@sender.test>, <bob@example.com>): "
            "waiting 3"
        ) in out
        assert re.search(r"GREYLIST +defer: early retry, 300s left", out)
    argv[argv.index("bob@example.com")] = "new@example.com"
    assert main(argv) == 1
    assert "<new@example.com>): unknown" in capsys.readouterr().out


def test_greylist_rules_own_reply_gets_the_seconds(tmp_path, geoip_db, maildir):
    rules = GREYLIST_RULES.replace(
        'action = "greylist"', 'action = "greylist"\nreply = "450 4.7.1 Wait %s s"'
    )
    config = write_config(
        tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}", rules=rules
    )
    with DaemonThread.from_file(config, FakeClock()) as proxy:
        assert transaction(proxy, ["bob@example.com"]) == ["450 4.7.1 Wait 300 s"]


def test_store_path_with_uri_characters_works_for_every_command(
    tmp_path, geoip_db, maildir, capsys
):
    odd = tmp_path / "we#ird?x%41"
    odd.mkdir()
    config = write_config(
        odd, geoip=geoip_db, backend=f"maildir:{maildir}", rules=GREYLIST_RULES
    )
    with DaemonThread.from_file(config) as proxy:
        transaction(proxy, ["bob@example.com"])
    assert main(["stats", "--config", str(config)]) == 0
    assert "triplets_waiting      1" in capsys.readouterr().out
    argv = [
        "check",
        "--config",
        str(config),
        "--client",
        "127.0.1.5",
        "--sender",
        "<alice@sender.test>",
        "--recipient",
        "<bob@example.com>",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "sender     <alice@sender.test>" in out
    assert "<bob@example.com>): waiting" in out
    assert (
        sorted(p.name for p in odd.iterdir() if not p.name.startswith("greygeo")) == []
    )


def test_stats_and_dry_run_on_a_missing_store_say_so_and_create_nothing(
    tmp_path, capsys
):
    config = write_config(tmp_path, geoip=None, backend="maildir:x")
    for argv in (["stats"], ["purge", "--dry-run"]):
        assert main([*argv, "--config", str(config)]) == 2
        assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "greygeo.sqlite3").exists()


def test_stats_into_a_closed_pipe_prints_no_traceback(config):
    main(["migrate", "--config", str(config)])
    result = subprocess.run(
        f"{sys.executable} -m greygeo stats --config {config} | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in result.stderr
