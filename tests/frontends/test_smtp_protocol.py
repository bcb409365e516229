"""The SMTP dialogue with clients: pipelining, bad input, limits, TLS, AUTH.

These tests use a raw line client where smtplib would refuse to send what
a broken or hostile client sends. The backend is the built-in Maildir, so
what was delivered can be read back.
"""

import asyncio
import logging
import mailbox
import smtplib
import ssl
from pathlib import Path

import pytest
import trustme

from tests.harness import JP_CLIENT, US_CLIENT, DaemonThread, FakeClock, write_config
from tests.postfix import free_port


def start_proxy(tmp_path, geoip_db, maildir, proxy=""):
    config = write_config(
        tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}", proxy=proxy
    )
    return DaemonThread.from_file(config, FakeClock())


@pytest.fixture
def proxy(tmp_path: Path, geoip_db: Path, maildir: Path):
    with start_proxy(tmp_path, geoip_db, maildir) as daemon:
        yield daemon


def delivered(maildir: Path) -> list[bytes]:
    if not maildir.exists():
        return []
    return [bytes(m) for m in mailbox.Maildir(maildir, create=False)]


def test_pipelined_commands_get_their_replies_in_order(proxy, maildir):
    """RFC 2920: a client sends the whole envelope and DATA at once."""
    raw = proxy.raw(JP_CLIENT)
    ehlo = raw.command("EHLO client.test")
    assert "250-PIPELINING" in ehlo
    raw.send(
        b"MAIL FROM:<a@sender.test>\r\n"
        b"RCPT TO:<one@example.com>\r\n"
        b"RCPT TO:<two@example.com>\r\n"
        b"DATA\r\n"
    )
    assert raw.reply() == "250 2.1.0 Ok"
    assert raw.reply() == "250 2.1.5 Ok"
    assert raw.reply() == "250 2.1.5 Ok"
    assert raw.reply().startswith("354")
    raw.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert raw.reply().startswith("250 2.0.0")
    assert raw.reply() == "221 2.0.0 Bye"
    assert len(delivered(maildir)) == 1


def test_ehlo_advertises_the_extensions_and_no_auth(proxy):
    raw = proxy.raw(JP_CLIENT)
    assert raw.banner == "220 mx.example.jp ESMTP"
    lines = raw.command("EHLO client.test").splitlines()
    assert lines[0] == "250-mx.example.jp"
    keywords = {line[4:].split()[0] for line in lines[1:]}
    assert {"SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"} <= (
        keywords
    )
    assert "AUTH" not in keywords
    assert "STARTTLS" not in keywords


def test_smuggled_second_message_is_not_split_off(proxy, maildir):
    """A bare-LF end-of-data inside DATA ends nothing: the whole text is one
    message, its line endings turned into CRLF (the SMTP smuggling attack)."""
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<a@sender.test>")
    raw.command("RCPT TO:<bar@example.com>")
    assert raw.command("DATA").startswith("354")
    raw.send(
        b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<admin@example.com>\n"
        b"RCPT TO:<victim@example.com>\nDATA\nSubject: forged\r\n\r\nx\r\n.\r\n"
    )
    assert raw.reply().startswith("250 2.0.0")
    assert raw.command("NOOP") == "250 2.0.0 Ok"
    messages = delivered(maildir)
    assert len(messages) == 1
    assert b"hello\n.\nMAIL FROM:<admin@example.com>\n" in messages[0]
    assert b"\r" not in messages[0].split(b"\n\n", 1)[1].replace(b"\r\n", b"\n")


def test_bare_carriage_return_becomes_a_line_break(proxy, maildir):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<a@sender.test>")
    raw.command("RCPT TO:<bar@example.com>")
    raw.command("DATA")
    raw.send(b"Subject: cr\r\n\r\none\rtwo\r\n.\r\n")
    assert raw.reply().startswith("250")
    assert b"one\ntwo\n" in delivered(maildir)[0]


def test_over_long_command_line_gets_500(proxy):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    assert raw.command("MAIL FROM:<" + "a" * 2000 + "@x.test>").startswith("500 5.5.2")
    assert raw.command("NOOP") == "250 2.0.0 Ok"


def test_over_long_data_line_is_refused_and_nothing_delivered(proxy, maildir):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<a@sender.test>")
    raw.command("RCPT TO:<bar@example.com>")
    raw.command("DATA")
    raw.send(b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n")
    assert raw.reply().startswith("500 5.5.2 Line too long")
    assert delivered(maildir) == []


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<a@sender.test>", "503 5.5.1"),  # before EHLO
        ("RCPT TO:<bar@example.com>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("BOGUS", "500 5.5.2"),
    ],
)
def test_commands_out_of_order_get_clear_errors(proxy, command, reply):
    raw = proxy.raw(JP_CLIENT)
    assert raw.command(command).startswith(reply)


def test_bad_syntax_gets_5xx_and_the_session_goes_on(proxy):
    raw = proxy.raw(JP_CLIENT)
    assert raw.command("EHLO two words").startswith("501 5.5.4")
    raw.command("EHLO client.test")
    assert raw.command("MAIL").startswith("501 5.5.4 Syntax: MAIL")
    assert raw.command("MAIL FROM:<a@sender.test> BODY=WRONG").startswith("501")
    assert raw.command("MAIL FROM:<a@sender.test>").startswith("250")
    assert raw.command("RCPT TO:<@>").startswith("553 5.1.3")
    assert raw.command("NOOP") == "250 2.0.0 Ok"


def test_non_ascii_address_needs_smtputf8(proxy):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    assert raw.command("MAIL FROM:<jürgen@sender.test>").startswith("553 5.6.7")
    assert raw.command("MAIL FROM:<jürgen@sender.test> SMTPUTF8").startswith("250")


def test_null_sender_is_relayed(proxy, maildir):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    assert raw.command("MAIL FROM:<>").startswith("250")
    assert raw.command("RCPT TO:<bar@example.com>").startswith("250")
    raw.command("DATA")
    raw.send(b"Subject: bounce\r\n\r\nx\r\n.\r\n")
    assert raw.reply().startswith("250")
    assert delivered(maildir)[0].startswith(b"Return-Path: <>\n")


def test_auth_is_refused_and_skips_no_rule(proxy, maildir):
    """The recipe's nginx accepted AUTH PLAIN and then checked nothing;
    greygeo refuses AUTH and still applies every rule."""
    raw = proxy.raw(US_CLIENT)
    raw.command("EHLO localhost")
    assert raw.command("AUTH PLAIN AHVzZXIAcGFzcw==").startswith("503 5.5.1")
    raw.command("MAIL FROM:<a@sender.test>")
    assert raw.command("RCPT TO:<bar@example.com>").startswith("421 4.7.0")
    assert delivered(maildir) == []


def test_idle_client_is_dropped_with_421(tmp_path, geoip_db, maildir):
    with start_proxy(tmp_path, geoip_db, maildir, proxy='timeout = "1s"') as proxy:
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        assert raw.reply().startswith("421 4.4.2 mx.example.jp Error: timeout")
        assert raw.closed()


def test_too_many_recipients_get_452(tmp_path, geoip_db, maildir):
    with start_proxy(tmp_path, geoip_db, maildir, proxy="max_recipients = 2") as proxy:
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<a@sender.test>")
        assert raw.command("RCPT TO:<a@example.com>").startswith("250")
        assert raw.command("RCPT TO:<b@example.com>").startswith("250")
        assert raw.command("RCPT TO:<c@example.com>") == (
            "452 4.5.3 Error: too many recipients"
        )
        raw.command("DATA")
        raw.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert raw.reply().startswith("250")
    assert delivered(maildir)[0].count(b"Delivered-To:") == 2


def test_oversize_messages_are_refused(tmp_path, geoip_db, maildir):
    with start_proxy(
        tmp_path, geoip_db, maildir, proxy='max_message_size = "1K"'
    ) as proxy:
        raw = proxy.raw(JP_CLIENT)
        assert "250-SIZE 1024" in raw.command("EHLO client.test")
        assert raw.command("MAIL FROM:<a@sender.test> SIZE=5000").startswith(
            "552 5.3.4"
        )
        raw.command("MAIL FROM:<a@sender.test>")
        raw.command("RCPT TO:<bar@example.com>")
        raw.command("DATA")
        raw.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30 + b".\r\n")
        assert raw.reply().startswith("552 5.3.4")
    assert delivered(maildir) == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    authority = trustme.CA()
    cert = authority.issue_cert("mx.example.jp")
    folder = tmp_path_factory.mktemp("tls")
    cert.private_key_pem.write_to_path(folder / "key.pem")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    return authority, folder


def test_starttls_is_offered_and_discards_commands_sent_before_it(
    tmp_path, geoip_db, maildir, certificate
):
    """RFC 3207 4.2: a command pipelined after STARTTLS, in clear text,
    is thrown away, never answered inside the TLS session."""
    authority, folder = certificate
    proxy_keys = f'tls_cert = "{folder}/cert.pem"\ntls_key = "{folder}/key.pem"'
    with start_proxy(tmp_path, geoip_db, maildir, proxy=proxy_keys) as proxy:
        raw = proxy.raw(JP_CLIENT)
        assert "250-STARTTLS" in raw.command("EHLO client.test")
        raw.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        assert raw.reply().startswith("220")

        context = ssl.create_default_context()
        authority.configure_trust(context)
        tls = context.wrap_socket(raw.sock, server_hostname="mx.example.jp")
        tls.sendall(b"EHLO client.test\r\n")
        replies = b""
        while not replies.endswith(b"\r\n") or b"250 " not in replies:
            replies += tls.recv(4096)
        assert replies.startswith(b"250-mx.example.jp")
        assert b"STARTTLS" not in replies
        tls.sendall(b"RCPT TO:<bar@example.com>\r\n")
        assert tls.recv(4096).startswith(b"503 5.5.1")  # no MAIL was kept
        tls.close()


def test_ipv6_listener_and_client(tmp_path, geoip_db, maildir):
    """A [v6]:port listener serves IPv6 clients; ::1 is in Japan in the test
    database, so EHLO localhost is accepted."""
    port = free_port("::1")
    config = write_config(
        tmp_path, geoip=geoip_db, backend=f"maildir:{maildir}", listen=f"[::1]:{port}"
    )
    with (
        DaemonThread.from_file(config, FakeClock()),
        smtplib.SMTP("::1", port, timeout=10) as client,
    ):
        client.ehlo("localhost")
        client.sendmail("a@sender.test", ["bar@example.com"], b"Subject: 6\r\n\r\n.")
    assert b"([::1])" in delivered(maildir)[0]


def test_broken_tls_handshake_is_one_info_line_and_no_leak(
    tmp_path, geoip_db, maildir, certificate, caplog
):
    """Clear text after STARTTLS, a stalled handshake, and STARTTLS twice:
    no ERROR, no traceback, and no session left behind."""
    authority, folder = certificate
    keys = (
        f'tls_cert = "{folder}/cert.pem"\ntls_key = "{folder}/key.pem"\ntimeout = "1s"'
    )
    caplog.set_level("INFO")
    with start_proxy(tmp_path, geoip_db, maildir, proxy=keys) as proxy:
        garbage = proxy.raw(JP_CLIENT)
        garbage.command("EHLO client.test")
        assert garbage.command("STARTTLS").startswith("220")
        garbage.send(b"this is not a TLS record\r\n" * 10)
        assert garbage.closed()

        stalled = proxy.raw(JP_CLIENT)
        stalled.command("EHLO client.test")
        stalled.command("STARTTLS")
        stalled.send(b"\x16\x03\x01\x00")
        assert stalled.closed()  # after the 1 s idle timeout

        twice = proxy.raw(JP_CLIENT)
        twice.command("EHLO client.test")
        twice.command("STARTTLS")
        context = ssl.create_default_context()
        authority.configure_trust(context)
        tls = context.wrap_socket(twice.sock, server_hostname="mx.example.jp")
        tls.sendall(b"STARTTLS\r\n")
        assert tls.recv(4096).startswith(b"503 5.5.1")
        tls.close()

        proxy.run(asyncio.sleep(0.2))
        assert proxy.daemon.handler.sessions == set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in caplog.records)


def test_too_many_errors_close_the_session(proxy):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    for _ in range(19):
        assert raw.command("MAIL FROM:<@@>").startswith("5")
    assert raw.command("MAIL FROM:<@@>").startswith("5")
    assert raw.reply() == "421 4.7.0 mx.example.jp Error: too many errors"
    assert raw.closed()


def test_null_recipient_is_refused(proxy):
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<a@sender.test>")
    assert raw.command("RCPT TO:<>").startswith("553 5.1.3")


def test_large_message_arrives_whole_with_dots_unstuffed(proxy, maildir):
    """A 3 MB message in many chunks, with lines that start with a dot."""
    lines = [f".line {n} ".encode() + b"y" * 60 for n in range(40_000)]
    body = b"\r\n".join(lines) + b"\r\n"
    with smtplib.SMTP("127.0.0.1", proxy.port, source_address=(JP_CLIENT, 0)) as c:
        c.ehlo("client.test")
        c.sendmail("a@sender.test", ["bar@example.com"], b"Subject: big\r\n\r\n" + body)
    (message,) = delivered(maildir)
    assert message.endswith(body.replace(b"\r\n", b"\n"))


def test_bare_lf_lines_are_lines_for_the_length_check(proxy, maildir):
    """50 LF-terminated lines, 2 KB in all, are 50 short lines, not one
    long one."""
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<a@sender.test>")
    raw.command("RCPT TO:<bar@example.com>")
    raw.command("DATA")
    raw.send(b"Subject: lf\n\n" + b"x" * 40 + (b"\n" + b"x" * 40) * 50 + b"\r\n.\r\n")
    assert raw.reply().startswith("250")
    assert delivered(maildir)[0].count(b"x" * 40 + b"\n") == 51


@pytest.mark.parametrize(
    ("path", "return_path"),
    [
        ("<Alice.Smith+x@Example.ORG> SIZE=100", b"<Alice.Smith+x@Example.ORG>"),
        ('<"odd name"@example.org>', b'<"odd name"@example.org>'),
        ("<user@[192.0.2.1]>", b"<user@[192.0.2.1]>"),
        ("<>", b"<>"),
    ],
)
def test_sender_paths_plain_and_unusual_are_kept(proxy, maildir, path, return_path):
    """The usual path takes greygeo's quick parser, the others aiosmtpd's;
    both keep the address as sent."""
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    assert raw.command(f"MAIL FROM:{path}").startswith("250")
    raw.command("RCPT TO:<bar@example.com>")
    raw.command("DATA")
    raw.send(b"Subject: p\r\n\r\nx\r\n.\r\n")
    assert raw.reply().startswith("250")
    assert delivered(maildir)[0].startswith(b"Return-Path: " + return_path + b"\n")
