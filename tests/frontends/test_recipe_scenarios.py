"""The four scenarios of the original nginx recipe, through the running proxy.

Each test is a transcript: a real SMTP client connects from a loopback
address that the test GeoIP database places in a country, and the replies
are those the recipe's article shows. Accepted mail must be in the Maildir.
"""

import asyncio
import mailbox
import smtplib
from pathlib import Path

import pytest

from tests.harness import (
    DE_CLIENT,
    JP_CLIENT,
    US_CLIENT,
    US_CLIENT_2,
    DaemonThread,
    FakeClock,
    write_config,
)

MESSAGE = b"Subject: test\r\n\r\nHello.\r\n"


@pytest.fixture
def proxy(tmp_path: Path, geoip_db: Path, maildir: Path):
    config = write_config(tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}")
    clock = FakeClock()
    with DaemonThread.from_file(config, clock) as daemon:
        daemon.clock_ = clock
        yield daemon


def delivered(maildir: Path) -> list[bytes]:
    if not maildir.exists():
        return []
    return [bytes(m) for m in mailbox.Maildir(maildir, create=False)]


def test_us_client_first_accepted_then_limited_within_the_minute(proxy, maildir):
    """Scenario 1: the second transaction to example.com within 60 s gets
    421 4.7.0 and the connection is closed."""
    client = proxy.smtp(US_CLIENT)
    assert client.mail("foo@example.com")[0] == 250
    assert client.rcpt("bar@example.com")[0] == 250
    assert client.data(MESSAGE)[0] == 250
    client.quit()
    assert len(delivered(maildir)) == 1

    proxy.clock_.advance(30)
    raw = proxy.raw(US_CLIENT)
    raw.command("EHLO example.com")
    assert raw.command("MAIL FROM:<foo@example.com>").startswith("250")
    assert raw.command("RCPT TO:<bar@example.com>") == (
        "421 4.7.0 Please Try Again Later."
    )
    assert raw.closed()
    assert len(delivered(maildir)) == 1


def test_limit_allows_again_after_the_minute(proxy, maildir):
    """A refused transaction does not use up the allowance: 60 s after the
    first pass the key passes again."""
    for _ in range(2):
        client = proxy.smtp(US_CLIENT)
        client.sendmail("foo@example.com", ["bar@example.com"], MESSAGE)
        client.quit()
        proxy.clock_.advance(59)
        client = proxy.smtp(US_CLIENT)
        client.mail("foo@example.com")
        assert client.rcpt("bar@example.com")[0] == 421
        proxy.clock_.advance(1)
    assert len(delivered(maildir)) == 2


def test_us_client_with_ehlo_localhost_is_refused(proxy, maildir):
    """Scenario 2: EHLO localhost from abroad gets 421 4.7.0."""
    client = proxy.smtp(US_CLIENT, helo="localhost")
    client.mail("foo@example.com")
    assert client.rcpt("bar@example.com") == (421, b"4.7.0 Please Try Again Later.")
    assert delivered(maildir) == []


def test_us_client_with_google_helo_is_accepted(proxy, maildir):
    """Scenario 3: a HELO under .google.com is let through, and it does not
    count against the recipient domain's limit."""
    for _ in range(3):
        client = proxy.smtp(US_CLIENT, helo="hoge.google.com")
        client.sendmail("foo@example.com", ["bar@example.com"], MESSAGE)
        client.quit()
    assert len(delivered(maildir)) == 3


def test_jp_client_with_ehlo_localhost_is_accepted(proxy, maildir):
    """Scenario 4: clients in Japan are never restricted, even with
    EHLO localhost."""
    client = proxy.smtp(JP_CLIENT, helo="localhost")
    client.sendmail("foo@example.com", ["bar@example.com"], MESSAGE)
    client.quit()
    assert len(delivered(maildir)) == 1


def test_second_transaction_on_one_connection_hits_the_limit(proxy, maildir):
    """The recipe could only judge a connection's first RCPT; greygeo judges
    every transaction, so a second one on the same connection is limited."""
    client = proxy.smtp(US_CLIENT)
    client.sendmail("foo@example.com", ["bar@example.com"], MESSAGE)
    client.mail("foo@example.com")
    assert client.rcpt("baz@example.com")[0] == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    assert len(delivered(maildir)) == 1


def test_every_recipient_is_judged_on_its_own(proxy, maildir):
    """In one transaction, a limited domain is refused while an allow-listed
    domain and a second recipient of an already counted domain pass."""
    client = proxy.smtp(DE_CLIENT)
    client.sendmail("foo@example.com", ["first@example.com"], MESSAGE)

    raw = proxy.raw(US_CLIENT_2)
    raw.command("EHLO example.com")
    raw.command("MAIL FROM:<foo@example.com>")
    assert raw.command("RCPT TO:<x@example.net>").startswith("250")
    assert raw.command("RCPT TO:<one@other.test>").startswith("250")
    assert raw.command("RCPT TO:<two@other.test>").startswith("250")
    assert raw.command("DATA").startswith("354")
    raw.send(MESSAGE + b".\r\n")
    assert raw.reply().startswith("250")
    assert raw.command("MAIL FROM:<foo@example.com>").startswith("250")
    assert raw.command("RCPT TO:<bar@example.com>").startswith("421 4.7.0")
    messages = delivered(maildir)
    assert len(messages) == 2
    assert b"Delivered-To: one@other.test" in messages[1] or (
        b"Delivered-To: one@other.test" in messages[0]
    )


def test_decision_line_is_logged_in_logfmt(proxy, caplog):
    """Every decision writes one INFO line with the fixed keys."""
    caplog.set_level("INFO", logger="greygeo")
    client = proxy.smtp(US_CLIENT, helo="localhost")
    client.mail("foo@example.com")
    client.rcpt("bar@example.com")
    decisions = [r for r in caplog.records if r.getMessage() == "decision"]
    assert len(decisions) == 1
    record = decisions[0]
    assert record.client == US_CLIENT
    assert record.country == "US"
    assert record.helo == "localhost"
    assert record.sender == "foo@example.com"
    assert record.recipient == "bar@example.com"
    assert record.rule == "REJECT_HELO_DOMAIN"
    assert record.action == "tempfail"
    assert record.verdict == "defer"
    assert record.reply == 421
    assert record.session.endswith(".1")


def test_shutdown_closes_idle_sessions_with_421_at_once(tmp_path, geoip_db, maildir):
    """An idle client does not hold a stopping daemon for the grace period;
    it hears 421 4.3.2."""
    config = write_config(tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}")
    with DaemonThread.from_file(config) as daemon:
        raw = daemon.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        daemon.run(daemon.daemon.stop(grace=30), timeout=5)
        daemon.daemon = None
        assert raw.reply() == "421 4.3.2 mx.example.jp Service shutting down"
        assert raw.closed()


def test_shutdown_lets_a_transaction_in_progress_finish(tmp_path, geoip_db, maildir):
    """A client in the middle of a transaction may finish it; then it is
    closed like an idle one."""
    config = write_config(tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}")
    with DaemonThread.from_file(config) as daemon:
        raw = daemon.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<a@sender.test>")
        raw.command("RCPT TO:<bar@example.com>")
        stopping = asyncio.run_coroutine_threadsafe(
            daemon.daemon.stop(grace=30), daemon.loop
        )
        assert raw.command("DATA").startswith("354")
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply().startswith("250")
        assert raw.reply() == "421 4.3.2 mx.example.jp Service shutting down"
        stopping.result(timeout=5)
        daemon.daemon = None
    assert len(delivered(maildir)) == 1
