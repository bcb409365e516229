"""greygeo in front of a real Postfix, configured with contrib/postfix.

Postfix runs from a temporary directory with the master.cf service of
``contrib/postfix/master.cf``: XCLIENT allowed for greygeo's own loopback
address 127.0.0.2, which is not in mynetworks. Postfix's own log proves
what it saw.
"""

from pathlib import Path

import pytest

from greygeo.config import load_config
from greygeo.daemon import StartupError, start
from tests.harness import JP_CLIENT, US_CLIENT, DaemonThread, FakeClock, write_config

MESSAGE = b"Subject: via postfix\r\n\r\nHello.\r\n"


def postfix_config(tmp_path: Path, geoip_db: Path, postfix, source: str = "127.0.0.2"):
    return write_config(
        tmp_path,
        geoip=geoip_db,
        backend=f"127.0.0.1:{postfix.port}",
        backend_extra=f'client_identity = "xclient"\nsource_address = "{source}"',
    )


@pytest.fixture
def proxy(tmp_path: Path, geoip_db: Path, postfix):
    with DaemonThread.from_file(
        postfix_config(tmp_path, geoip_db, postfix), FakeClock()
    ) as daemon:
        yield daemon


def test_accepted_mail_reaches_postfix_with_the_real_client(proxy, postfix):
    """Postfix logs the client greygeo handed over with XCLIENT, not greygeo."""
    before = len(postfix.delivered("bar"))
    client = proxy.smtp(US_CLIENT, helo="mail.sender.test")
    client.sendmail("foo@sender.test", ["bar@example.com"], MESSAGE)
    client.quit()

    messages = postfix.wait_for_delivery("bar", before + 1)
    assert b"Hello." in messages[-1]
    postfix.wait_for_log(r"client=unknown\[127\.0\.1\.10\]")
    assert (
        b"Received: from mail.sender.test (unknown [127.0.1.10])\n"
        b"\tby backend.test (Postfix) with ESMTP"
    ) in messages[-1]


def test_recipe_scenarios_through_postfix(proxy, postfix):
    """The four scenarios of the article, with Postfix as the backend."""
    before = len(postfix.delivered("baz"))

    client = proxy.smtp(US_CLIENT)
    client.sendmail("foo@sender.test", ["baz@example.com"], MESSAGE)
    client.mail("foo@sender.test")
    assert client.rcpt("baz@example.com") == (421, b"4.7.0 Please Try Again Later.")

    client = proxy.smtp(US_CLIENT, helo="localhost")
    client.mail("foo@sender.test")
    assert client.rcpt("baz@example.com")[0] == 421

    client = proxy.smtp(US_CLIENT, helo="hoge.google.com")
    client.sendmail("foo@sender.test", ["baz@example.com"], MESSAGE)
    client.quit()

    client = proxy.smtp(JP_CLIENT, helo="localhost")
    client.sendmail("foo@sender.test", ["baz@example.com"], MESSAGE)
    client.quit()

    assert len(postfix.wait_for_delivery("baz", before + 3)) == before + 3


def test_relay_to_an_outside_domain_is_refused_by_postfix(proxy, postfix):
    """A client greygeo accepts is still not trusted by Postfix: relaying to
    a foreign domain gets Postfix's own refusal, passed on as it is."""
    client = proxy.smtp(JP_CLIENT)
    client.mail("foo@sender.test")
    code, text = client.rcpt("victim@outside.test")
    assert code == 454
    assert b"Relay access denied" in text
    postfix.wait_for_log(
        r"NOQUEUE: reject: RCPT from unknown\[127\.0\.2\.10\]: 454 4\.7\.1 "
        r"<victim@outside\.test>: Relay access denied"
    )


def test_unknown_user_gets_postfix_550_and_others_still_deliver(proxy, postfix):
    """The backend's reply to each RCPT reaches the client; refused
    recipients are left out and the others get the message."""
    before = len(postfix.delivered("bar"))
    client = proxy.smtp(JP_CLIENT)
    client.mail("foo@sender.test")
    code, text = client.rcpt("nobody@example.com")
    assert code == 550
    assert b"5.1.1" in text
    assert client.rcpt("bar@example.com")[0] == 250
    assert client.data(MESSAGE)[0] == 250
    client.quit()
    postfix.wait_for_delivery("bar", before + 1)


def test_backend_without_xclient_for_greygeo_stops_start_up(
    tmp_path, geoip_db, postfix
):
    """greygeo connecting from an address Postfix does not authorize for
    XCLIENT refuses to start, and says how to fix it."""
    config = load_config(postfix_config(tmp_path, geoip_db, postfix, "127.0.0.3"))
    daemon = DaemonThread(config)
    daemon.thread.start()
    try:
        with pytest.raises(StartupError, match="does not offer XCLIENT"):
            daemon.run(start(config))
    finally:
        daemon.loop.call_soon_threadsafe(daemon.loop.stop)
        daemon.thread.join(5)


def test_mail_parameters_reach_postfix(proxy, postfix):
    """SIZE, 8BITMIME and SMTPUTF8 parameters are passed to the backend."""
    before = len(postfix.delivered("bar"))
    client = proxy.smtp(JP_CLIENT)
    body = "Subject: ü\r\n\r\nGrüße\r\n".encode()
    client.sendmail(
        "jürgen@sender.test",
        ["bar@example.com"],
        body,
        mail_options=["SMTPUTF8", "BODY=8BITMIME"],
    )
    client.quit()
    messages = postfix.wait_for_delivery("bar", before + 1)
    assert "Grüße".encode() in messages[-1]
    postfix.wait_for_log(r"from=<jürgen@sender\.test>")
