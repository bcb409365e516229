"""The nginx mail auth_http front end: over HTTP, and behind a real nginx
running the original recipe's mail block."""

import http.client
import shutil
import smtplib
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.backends import RecordingBackend
from tests.harness import JP_CLIENT, US_CLIENT, DaemonThread, FakeClock, write_config
from tests.postfix import free_port, wait_for_port

NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")


def start(tmp_path, geoip_db, backend_address):
    port = free_port()
    config = write_config(
        tmp_path,
        geoip=geoip_db,
        backend=backend_address,
        backend_extra='client_identity = "none"',
        extra=f'[auth_http]\nlisten = ["127.0.0.1:{port}"]\n',
    )
    daemon = DaemonThread.from_file(config, FakeClock())
    daemon.auth_port = port
    return daemon


def ask(
    port: int,
    client: str,
    helo: str,
    recipient: str = "bar@example.com",
    *,
    mail_from: str = "MAIL FROM:<foo@example.com> SIZE=1",
    rcpt_to: str | None = None,
):
    """One request as nginx makes it (or with other envelope headers); the
    response headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "GET",
        "/smtpproxy/",
        headers={
            "Auth-Method": "none",
            "Auth-User": "",
            "Auth-Pass": "",
            "Auth-Protocol": "smtp",
            "Auth-Login-Attempt": "1",
            "Client-IP": client,
            "Client-Host": "[UNAVAILABLE]",
            "Auth-SMTP-Helo": helo,
            "Auth-SMTP-From": mail_from,
            "Auth-SMTP-To": rcpt_to or f"RCPT TO:<{recipient}>",
        },
    )
    response = connection.getresponse()
    headers = {k: v for k, v in response.getheaders() if k.startswith("Auth-")}
    connection.close()
    return headers


def test_the_four_scenarios_over_http(tmp_path, geoip_db):
    with RecordingBackend() as backend, start(tmp_path, geoip_db, backend.address) as d:
        ok = {
            "Auth-Status": "OK",
            "Auth-Server": "127.0.0.1",
            "Auth-Port": str(backend.port),
        }
        refused = {
            "Auth-Status": "Please Try Again Later.",
            "Auth-Error-Code": "421 4.7.0",
        }
        assert ask(d.auth_port, US_CLIENT, "example.com") == ok
        assert ask(d.auth_port, US_CLIENT, "example.com") == refused
        assert ask(d.auth_port, US_CLIENT, "localhost", "x@other.test") == refused
        assert ask(d.auth_port, US_CLIENT, "hoge.google.com") == ok
        assert ask(d.auth_port, JP_CLIENT, "localhost") == ok


def test_a_request_without_client_ip_is_refused_softly(tmp_path, geoip_db):
    with RecordingBackend() as backend, start(tmp_path, geoip_db, backend.address) as d:
        assert ask(d.auth_port, "", "example.com")["Auth-Error-Code"] == "451 4.3.0"


def test_a_backend_named_by_host_name_is_refused_at_start(tmp_path, geoip_db):
    from greygeo.config import load_config
    from greygeo.daemon import StartupError
    from greygeo.daemon import start as start_daemon

    config = write_config(
        tmp_path,
        geoip=geoip_db,
        backend="localhost:2",
        backend_extra='client_identity = "none"',
        extra=f'[auth_http]\nlisten = ["127.0.0.1:{free_port()}"]\n',
    )
    daemon = DaemonThread(load_config(config))
    daemon.thread.start()
    try:
        with pytest.raises(StartupError, match="as an IP address"):
            daemon.run(start_daemon(daemon.config))
    finally:
        daemon.loop.call_soon_threadsafe(daemon.loop.stop)
        daemon.thread.join(5)


RECIPE_MAIL_BLOCK = """
mail {
  auth_http  127.0.0.1/smtpproxy/ ;
  proxy_pass_error_message on;
  proxy on;
  smtp_auth none;
  smtp_capabilities 8BITMIME ;
  server {
    listen 192.168.1.1:25;
    protocol smtp;
    xclient  off;
    starttls off;
  }
}
"""


@pytest.fixture
def nginx_prefix():
    if shutil.which("nginx") is None or not NGINX_MAIL_MODULE.exists():
        pytest.fail("these tests need nginx and libnginx-mod-mail (see .ci/run)")
    root = Path(tempfile.mkdtemp(prefix="greygeo-nginx-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_recipe_scenarios_behind_real_nginx(tmp_path, geoip_db, nginx_prefix):
    """The recipe's own mail block, with only its addresses changed to test
    ports, uses greygeo as its auth_http."""
    with RecordingBackend() as backend, start(tmp_path, geoip_db, backend.address) as d:
        port = free_port()
        block = RECIPE_MAIL_BLOCK.replace(
            "127.0.0.1/smtpproxy/", f"127.0.0.1:{d.auth_port}/smtpproxy/"
        ).replace("192.168.1.1:25", f"127.0.0.1:{port}")
        (nginx_prefix / "nginx.conf").write_text(
            f"load_module {NGINX_MAIL_MODULE};\n"
            f"worker_processes 1;\npid {nginx_prefix}/nginx.pid;\n"
            f"error_log {nginx_prefix}/error.log info;\n"
            "events { worker_connections 64; }\n" + block
        )
        nginx = subprocess.Popen(
            [
                "nginx",
                "-p",
                str(nginx_prefix),
                "-c",
                str(nginx_prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_port("127.0.0.1", port)
            replies = []
            for source, helo in [
                (US_CLIENT, "example.com"),
                (US_CLIENT, "example.com"),
                (US_CLIENT, "localhost"),
                (US_CLIENT, "hoge.google.com"),
                (JP_CLIENT, "localhost"),
            ]:
                with smtplib.SMTP(
                    "127.0.0.1", port, source_address=(source, 0), timeout=10
                ) as client:
                    client.ehlo(helo)
                    client.mail("foo@example.com")
                    code, text = client.rcpt("bar@example.com")
                    replies.append((code, text))
                    if code == 250:
                        client.data(b"Subject: via nginx\r\n\r\nHello.\r\n")
        finally:
            nginx.terminate()
            nginx.wait(10)
    refused = (421, b"4.7.0 Please Try Again Later.")
    assert [code for code, _ in replies] == [250, 421, 421, 250, 250]
    assert replies[1] == refused and replies[2] == refused
    assert len(backend.record.messages) == 3


def test_odd_header_values_get_an_answer_not_a_500(tmp_path, geoip_db):
    """Non-UTF-8 bytes in a header, a bare address without the command."""
    import socket

    with RecordingBackend() as backend, start(tmp_path, geoip_db, backend.address) as d:
        with socket.create_connection(("127.0.0.1", d.auth_port), timeout=10) as sock:
            sock.sendall(
                b"GET / HTTP/1.0\r\nClient-IP: 127.0.1.60\r\nAuth-SMTP-Helo: h\r\n"
                b"Auth-SMTP-From: MAIL FROM:<a@b.test>\r\n"
                b"Auth-SMTP-To: RCPT TO:<x@\xff\xfe.example>\r\n\r\n"
            )
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.0 200") and b"Auth-Status: OK" in head

        bare = {"mail_from": "a@b.test"}
        first = ask(
            d.auth_port, US_CLIENT, "example.com", rcpt_to="bare@limited.test", **bare
        )
        second = ask(
            d.auth_port, US_CLIENT, "example.com", rcpt_to="other@limited.test", **bare
        )
        assert first["Auth-Status"] == "OK"
        assert second["Auth-Error-Code"] == "421 4.7.0"
