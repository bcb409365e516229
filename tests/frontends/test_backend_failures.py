"""When the backend fails, the client hears 4xx and no mail is lost or faked.

greygeo must never answer 250 for a message the backend has not accepted:
every failure of the backend (unreachable, dropping, hanging, refusing)
becomes a temporary error for the client, which will retry.
"""

import socket

import pytest

from tests.backends import RecordingBackend, ScriptedBackend
from tests.harness import JP_CLIENT, DaemonThread, FakeClock, write_config
from tests.postfix import free_port

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


def proxy_to(tmp_path, geoip_db, address, backend_extra=""):
    config = write_config(
        tmp_path,
        geoip=geoip_db,
        backend=address,
        backend_extra='client_identity = "none"\ntimeout = "1s"\n' + backend_extra,
    )
    return DaemonThread.from_file(config, FakeClock())


def send(proxy, *, rcpt_reply: str = "250", data: bytes = MESSAGE):
    """One transaction; returns the RCPT reply and, if reached, DATA's."""
    raw = proxy.raw(JP_CLIENT)
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<a@sender.test>")
    rcpt = raw.command("RCPT TO:<bar@example.com>")
    if not rcpt.startswith(rcpt_reply):
        return rcpt, None
    assert raw.command("DATA").startswith("354")
    raw.send(data + b".\r\n")
    return rcpt, raw.reply()


def test_unreachable_backend_gives_451_and_one_warning(tmp_path, geoip_db, caplog):
    address = f"127.0.0.1:{free_port()}"
    with proxy_to(tmp_path, geoip_db, address) as proxy:
        caplog.clear()
        caplog.set_level("INFO", logger="greygeo")
        rcpt, _ = send(proxy)
    assert rcpt == "451 4.4.1 Mail system not reachable, try again later"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "backend failed" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_backend_dropping_mid_data_gives_451(tmp_path, geoip_db):
    with (
        ScriptedBackend({"DATA": "354 go ahead", ".": "drop"}) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        rcpt, data = send(proxy)
    assert rcpt.startswith("250")
    assert data == "451 4.4.2 Mail system connection lost, try again later"


def test_backend_that_never_answers_end_of_data_gives_451(tmp_path, geoip_db):
    with (
        ScriptedBackend({".": "hang"}) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        _, data = send(proxy)
    assert data == "451 4.4.2 Mail system connection lost, try again later"


def test_backend_refusal_at_end_of_data_is_passed_on(tmp_path, geoip_db):
    with (
        ScriptedBackend({".": "554 5.7.1 Spam detected"}) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        _, data = send(proxy)
    assert data == "554 5.7.1 Spam detected"


def test_backend_421_on_rcpt_becomes_451_and_the_client_stays(tmp_path, geoip_db):
    with (
        ScriptedBackend({"RCPT": "421 4.3.2 Shutting down"}) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<a@sender.test>")
        assert raw.command("RCPT TO:<bar@example.com>") == ("451 4.3.2 Shutting down")
        assert raw.command("NOOP") == "250 2.0.0 Ok"


def test_backend_refusing_the_sender_answers_the_rcpt(tmp_path, geoip_db):
    with (
        ScriptedBackend({"MAIL": "553 5.7.1 Sender refused"}) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        rcpt, _ = send(proxy)
    assert rcpt == "553 5.7.1 Sender refused"


def test_client_dropping_mid_data_delivers_nothing(tmp_path, geoip_db):
    with (
        RecordingBackend() as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<a@sender.test>")
        raw.command("RCPT TO:<bar@example.com>")
        raw.command("DATA")
        raw.send(b"Subject: half\r\n\r\nonly half of the")
        raw.sock.shutdown(socket.SHUT_RDWR)
        raw.close()
        # A complete transaction afterwards proves greygeo went on serving
        # and lets the test wait for the dropped one to be finished.
        _, data = send(proxy)
    assert data.startswith("250")
    assert len(backend.record.messages) == 1
    assert b"only half" not in backend.record.messages[0]


@pytest.mark.parametrize("version", ["proxy-v1", "proxy-v2"])
def test_proxy_header_tells_the_backend_the_real_client(tmp_path, geoip_db, version):
    """aiosmtpd's own PROXY parser, as backend, reads the client greygeo sent;
    the start-up probe sends PROXY UNKNOWN (v1) or LOCAL (v2)."""
    with RecordingBackend(proxy=True) as backend:
        config = write_config(
            tmp_path,
            geoip=geoip_db,
            backend=backend.address,
            backend_extra=f'client_identity = "{version}"',
        )
        with DaemonThread.from_file(config, FakeClock()) as proxy:
            _, data = send(proxy)
    assert data.startswith("250")
    probe, proxy_data = backend.record.proxy
    assert probe.src_addr is None  # the start-up probe speaks for itself
    assert str(proxy_data.src_addr) == JP_CLIENT
    assert proxy_data.version == (1 if version == "proxy-v1" else 2)
    assert str(proxy_data.dst_addr) == "127.0.0.1"


def test_backend_lost_after_a_recipient_makes_the_whole_transaction_4xx(
    tmp_path, geoip_db
):
    """The first recipient was accepted; when the backend drops at the
    second, DATA must get 4xx (not 5xx, which would bounce the first)."""
    with (
        ScriptedBackend({"RCPT#2": "drop"}) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<a@sender.test>")
        assert raw.command("RCPT TO:<u1@example.com>").startswith("250")
        assert raw.command("RCPT TO:<u2@example.com>").startswith("451 4.4.2")
        assert raw.command("RCPT TO:<u3@example.com>").startswith("451 4.4.2")
        assert raw.command("DATA").startswith("354")
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply().startswith("451 4.4.2")
    assert backend.messages == []


def test_multi_line_backend_replies_keep_the_order(tmp_path, geoip_db):
    """An Exim-style two-line 550 without status codes gets them line by
    line, and every pipelined command still gets exactly its own reply."""
    script = {"RCPT": "550-No such user here\r\n550 see http://help.test/"}
    with (
        ScriptedBackend(script) as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.send(
            b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u1@example.com>\r\n"
            b"RCPT TO:<u2@example.com>\r\nNOOP\r\n"
        )
        assert raw.reply() == "250 2.1.0 Ok"
        for _ in range(2):
            assert raw.reply() == (
                "550-5.0.0 No such user here\n550 5.0.0 see http://help.test/"
            )
        assert raw.reply() == "250 2.0.0 Ok"


def test_control_character_in_address_is_refused_and_leaks_nothing(tmp_path, geoip_db):
    with (
        ScriptedBackend() as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        assert raw.command("MAIL FROM:<a\x01b@c.test>").startswith("553 5.1.3")
        assert raw.command("MAIL FROM:<a@c.test>").startswith("250")
        assert raw.command("RCPT TO:<x\x7fy@example.com>").startswith("553 5.1.3")
    assert not any(c.startswith("MAIL") for c in backend.commands)


def test_client_identity_none_warns_of_an_open_relay_at_start(
    tmp_path, geoip_db, caplog
):
    caplog.set_level("INFO", logger="greygeo")
    with ScriptedBackend() as backend, proxy_to(tmp_path, geoip_db, backend.address):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("client_identity is none" in w and "open relay" in w for w in warnings)


def test_dots_and_line_ends_reach_the_backend_intact(tmp_path, geoip_db):
    """Lines that start with dots, a lone dot inside a line, and a bare LF:
    the backend's own SMTP parser reads back exactly the message, with the
    bare LF as CRLF."""
    body = b"Subject: dots\r\n\r\n.first\r\n..second\r\nmid . dot\r\nbare\nlf\r\n.\r\n"
    wire = body.replace(b"\r\n.", b"\r\n..")  # as the client stuffs it
    with (
        RecordingBackend() as backend,
        proxy_to(tmp_path, geoip_db, backend.address) as proxy,
    ):
        raw = proxy.raw(JP_CLIENT)
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<a@sender.test>")
        raw.command("RCPT TO:<bar@example.com>")
        raw.command("DATA")
        raw.send(wire + b".\r\n")
        assert raw.reply().startswith("250")
    (message,) = backend.record.messages
    assert message == body.replace(b"bare\nlf", b"bare\r\nlf")
