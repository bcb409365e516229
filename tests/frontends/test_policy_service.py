"""The Postfix policy delegation front end, over its own protocol.

Requests are written as Postfix writes them: name=value lines and an empty
line, several on one connection.
"""

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import postfix_required
from tests.frontends.test_auth_http import ask
from tests.harness import (
    JP_CLIENT,
    US_CLIENT,
    DaemonThread,
    FakeClock,
    write_config,
)
from tests.postfix import CONTRIB, free_port, start_postfix

GREYLIST = """
[[rules]]
name = "GREYLIST"
action = "greylist"
"""


class PolicyClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, **attributes: str) -> None:
        self.sock.sendall(request(**attributes))

    def answer(self) -> str:
        line = self.file.readline().decode().rstrip("\n")
        assert self.file.readline() == b"\n"
        return line

    def ask(self, **attributes: str) -> str:
        self.send(**attributes)
        return self.answer()

    def closed(self) -> bool:
        return self.file.read() == b""


def request(**attributes: str) -> bytes:
    values = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": US_CLIENT,
        "client_name": "unknown",
        "helo_name": "mail.sender.test",
        "sender": "foo@example.com",
        "recipient": "bar@example.com",
        "instance": "1.1.1",
        **attributes,
    }
    return "".join(f"{k}={v}\n" for k, v in values.items()).encode() + b"\n"


def start(tmp_path: Path, geoip_db: Path, rules: str | None = None, clock=None):
    port = free_port()
    kwargs = {"rules": rules} if rules is not None else {}
    config = write_config(
        tmp_path,
        geoip=geoip_db,
        backend=f"maildir:{tmp_path / 'mail'}",
        extra=f'[policy]\nlisten = ["127.0.0.1:{port}"]\n',
        **kwargs,
    )
    daemon = DaemonThread.from_file(config, clock or FakeClock())
    daemon.policy_port = port
    return daemon


@pytest.fixture
def service(tmp_path, geoip_db):
    with start(tmp_path, geoip_db) as daemon:
        yield daemon


def test_the_four_scenarios_of_the_recipe(service):
    client = PolicyClient(service.policy_port)
    # 1. US client: the first passes, the next within the minute is refused.
    assert client.ask(instance="1") == "action=DUNNO"
    assert client.ask(instance="2") == "action=421 4.7.0 Please Try Again Later."
    # 2. EHLO localhost from the US.
    assert client.ask(helo_name="localhost", recipient="x@other.test") == (
        "action=421 4.7.0 Please Try Again Later."
    )
    # 3. A .google.com HELO.
    assert client.ask(helo_name="hoge.google.com", instance="3") == "action=DUNNO"
    # 4. Japan, even with EHLO localhost.
    assert client.ask(client_address=JP_CLIENT, helo_name="localhost") == (
        "action=DUNNO"
    )


def test_other_protocol_states_get_dunno(service):
    client = PolicyClient(service.policy_port)
    for state in ("CONNECT", "MAIL", "DATA", "END-OF-MESSAGE"):
        assert client.ask(protocol_state=state) == "action=DUNNO"


def test_a_pipelined_burst_is_answered_in_order(service):
    client = PolicyClient(service.policy_port)
    burst = b"".join(
        request(recipient=f"user@domain{n}.test", instance=str(n)) for n in range(50)
    )
    burst += request(recipient="again@domain0.test", instance="later")
    client.sock.sendall(burst)
    answers = [client.answer() for _ in range(51)]
    assert answers[:50] == ["action=DUNNO"] * 50
    assert answers[50] == "action=421 4.7.0 Please Try Again Later."


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a policy request\n\n",
        b"a=" + b"x" * 10_000 + b"\n\n",
        b"".join(b"k%d=v\n" % n for n in range(500)) + b"\n",
    ],
)
def test_malformed_requests_close_the_connection(service, garbage, caplog):
    caplog.set_level("WARNING", logger="greygeo")
    client = PolicyClient(service.policy_port)
    client.sock.sendall(garbage)
    assert client.closed()
    assert any("policy request malformed" in r.getMessage() for r in caplog.records)
    assert PolicyClient(service.policy_port).ask() == "action=DUNNO"


def test_request_without_a_client_address_gets_dunno(service):
    client = PolicyClient(service.policy_port)
    assert client.ask(client_address="") == "action=DUNNO"


def test_greylisting_life_cycle(tmp_path, geoip_db):
    clock = FakeClock()
    with start(tmp_path, geoip_db, GREYLIST, clock) as daemon:
        client = PolicyClient(daemon.policy_port)
        assert client.ask(instance="1") == (
            "action=DEFER_IF_PERMIT 4.7.1 Greylisted, please try again in 300 seconds"
        )
        clock.advance(100)
        assert client.ask(instance="2").endswith("try again in 200 seconds")
        clock.advance(250)
        answer = client.ask(instance="3")
        assert answer.startswith(
            "action=PREPEND X-Greylist: delayed 350 seconds by greygeo; "
        )
        clock.advance(10)
        assert client.ask(instance="4") == "action=DUNNO"


def test_the_three_fronts_decide_alike(tmp_path, geoip_db, caplog):
    """The same input and state give the same decision from the proxy, the
    policy service and auth_http, and the same decision line."""
    auth_port = free_port()
    config = write_config(
        tmp_path,
        geoip=geoip_db,
        backend=f"127.0.0.1:{free_port()}",
        backend_extra='client_identity = "none"',
        rules=GREYLIST,
        extra=f'[auth_http]\nlisten = ["127.0.0.1:{auth_port}"]\n'
        f'[policy]\nlisten = ["127.0.0.1:{free_port()}"]\n',
    )
    caplog.set_level("INFO", logger="greygeo")
    with DaemonThread.from_file(config, FakeClock()) as daemon:
        policy_port = daemon.config.policy_service.listen[0].rpartition(":")[2]
        raw = daemon.raw(US_CLIENT)
        raw.command("EHLO mail.sender.test")
        raw.command("MAIL FROM:<foo@example.com>")
        assert raw.command("RCPT TO:<bar@example.com>").startswith("451 4.7.1")
        policy = PolicyClient(int(policy_port))
        assert policy.ask().startswith("action=DEFER_IF_PERMIT 4.7.1 Greylisted")
        headers = ask(auth_port, US_CLIENT, "mail.sender.test")
        assert headers["Auth-Error-Code"] == "451 4.7.1"
    lines = [r for r in caplog.records if r.getMessage() == "decision"]
    assert [r.front for r in lines] == ["smtp", "policy", "auth_http"]
    assert [(r.rule, r.verdict, r.reason) for r in lines] == [
        ("GREYLIST", "defer", "new"),
        ("GREYLIST", "defer", "early retry"),
        ("GREYLIST", "defer", "early retry"),
    ]


def swaks(port: int, source: str, helo: str, to: str = "bar@example.com") -> str:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{port}",
            "--local-interface",
            source,
            "--helo",
            helo,
            "--from",
            "foo@sender.test",
            "--to",
            to,
            "--timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


def test_recipe_scenarios_through_postfix_with_check_policy_service(tmp_path, geoip_db):
    """Postfix on the front, configured with contrib/postfix/policy-main.cf,
    asks greygeo; swaks is the client."""
    postfix_required()
    root = Path(tempfile.mkdtemp(prefix="greygeo-postfix-policy-"))
    with start(tmp_path, geoip_db) as daemon:
        lines = (
            (CONTRIB / "policy-main.cf")
            .read_text()
            .replace("127.0.0.1:10023", f"127.0.0.1:{daemon.policy_port}")
        )
        postfix = start_postfix(root, ("bar",), extra_main=lines)
        try:
            first = swaks(postfix.port, US_CLIENT, "mail.sender.test")
            again = swaks(postfix.port, US_CLIENT, "mail.sender.test")
            localhost = swaks(postfix.port, US_CLIENT, "localhost", "x@example.com")
            google = swaks(postfix.port, US_CLIENT, "hoge.google.com")
            japan = swaks(postfix.port, JP_CLIENT, "localhost")
            postfix.wait_for_delivery("bar", 3)
        finally:
            postfix.stop()
            shutil.rmtree(root, ignore_errors=True)
    refused = "<** 421 4.7.0 <{}>: Recipient address rejected: Please Try Again Later."
    assert "<-  250 2.0.0 Ok: queued" in first
    assert refused.format("bar@example.com") in again
    assert refused.format("x@example.com") in localhost
    assert "<-  250 2.0.0 Ok: queued" in google
    assert "<-  250 2.0.0 Ok: queued" in japan


def test_requests_without_instance_are_separate_transactions(service):
    """Only Postfix's instance joins requests into one message; without it a
    second request to the same domain is a second transaction."""
    client = PolicyClient(service.policy_port)
    assert client.ask(instance="", recipient="u0@noinst.test") == "action=DUNNO"
    assert client.ask(instance="", recipient="u1@noinst.test") == (
        "action=421 4.7.0 Please Try Again Later."
    )
