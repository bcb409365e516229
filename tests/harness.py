"""Running greygeo for tests: a daemon in a thread, a fake clock, configs.

The daemon runs its own event loop in a background thread, exactly as
``greygeo serve`` runs it, so tests can talk to it with ordinary blocking
SMTP clients (smtplib, raw sockets) bound to any 127.x.y.z address.
"""

import asyncio
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greygeo.config import Config, load_config
from greygeo.daemon import Daemon, start
from tests.postfix import free_port

# Test client addresses and the countries the test .mmdb gives them.
US_CLIENT = "127.0.1.10"
US_CLIENT_2 = "127.0.1.11"
JP_CLIENT = "127.0.2.10"
DE_CLIENT = "127.0.3.10"
UNKNOWN_CLIENT = "127.0.9.10"

RECIPE_RULES = """
[[rules]]
name = "OK_COUNTRY_CODE"
country = ["JP"]
action = "accept"

[[rules]]
name = "REJECT_HELO_DOMAIN"
helo = '^localhost$'
action = "tempfail"

[[rules]]
name = "OK_HELO_DOMAIN"
helo = '\\.(google|amazonses|outlook)\\.com$'
action = "accept"

[[rules]]
name = "OK_CLIENT_IP"
client = ["192.0.2.0/24", "2001:db8::/32"]
action = "accept"

[[rules]]
name = "OK_FROM_DOMAIN"
sender_domain = ["example.org"]
action = "accept"

[[rules]]
name = "OK_TO_DOMAIN"
recipient_domain = ["example.net"]
action = "accept"

[[rules]]
name = "LIMIT_TO_DOMAIN"
action = "limit"
key = "recipient_domain"
rate = "1/m"
"""


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_config(
    folder: Path,
    *,
    geoip: Path | None,
    backend: str,
    rules: str = RECIPE_RULES,
    proxy: str = "",
    backend_extra: str = "",
    extra: str = "",
    listen: str = "",
    store_extra: str = "",
) -> Path:
    """A complete config file in ``folder``, by default on a free port."""
    listen = listen or f"127.0.0.1:{free_port()}"
    geoip_line = f'database = "{geoip}"' if geoip else ""
    text = f"""
[proxy]
listen = ["{listen}"]
hostname = "mx.example.jp"
{proxy}

[backend]
address = "{backend}"
{backend_extra}

[geoip]
{geoip_line}

[store]
path = "{folder / "greygeo.sqlite3"}"
{store_extra}

{extra}
{rules}
"""
    path = folder / "greygeo.toml"
    path.write_text(text)
    return path


class DaemonThread:
    """greygeo's daemon on its own event loop in a background thread."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.daemon: Daemon | None = None

    @classmethod
    def from_file(
        cls, path: Path, clock: Callable[[], float] = time.time
    ) -> "DaemonThread":
        return cls(load_config(path), clock)

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __enter__(self) -> "DaemonThread":
        self.thread.start()
        self.daemon = self.run(start(self.config, clock=self.clock))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.daemon is not None:
            self.run(self.daemon.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        assert self.daemon is not None
        return self.daemon.addresses[0][1]

    def smtp(self, source: str, helo: str = "example.com") -> smtplib.SMTP:
        """An smtplib client connected from ``source`` that has sent EHLO."""
        client = smtplib.SMTP(
            "127.0.0.1", self.port, source_address=(source, 0), timeout=10
        )
        client.ehlo(helo)
        return client

    def raw(self, source: str) -> "RawClient":
        return RawClient(source, self.port)


class RawClient:
    """A line-level SMTP client for what smtplib refuses to send."""

    def __init__(self, source: str, port: int) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply, multi-line replies joined with newlines."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed by greygeo")
            lines.append(line.decode().rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True when greygeo has closed the connection."""
        return self.file.read() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()
