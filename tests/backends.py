"""Backends for failure tests: real SMTP servers that misbehave on purpose.

``ScriptedBackend`` is a line-level SMTP server whose behaviour after each
command is chosen by the test (answer, hang, drop the connection).
``RecordingBackend`` is a real aiosmtpd server that records what it got.
"""

import socketserver
import threading
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from tests.postfix import free_port


class ScriptedBackend:
    """An SMTP server answering from a script.

    ``script`` maps a command word (``RCPT``, ``DATA``, ``.`` for the end
    of data), or ``WORD#n`` for its n-th use in a connection, to a reply,
    or to ``"drop"`` (close the connection) or ``"hang"`` (never answer).
    """

    def __init__(self, script: dict[str, str] | None = None) -> None:
        self.script = script or {}
        self.port = free_port()
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self._stop = threading.Event()
        backend = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                backend._serve(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedBackend":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answer(self, wfile, word: str, default: str, nth: int = 0) -> bool:
        """Send the scripted reply; False when the connection must end."""
        action = self.script.get(f"{word}#{nth}", self.script.get(word, default))
        if action == "drop":
            return False
        if action == "hang":
            self._stop.wait(30)
            return False
        wfile.write(action.encode() + b"\r\n")
        return True

    def _serve(self, rfile, wfile) -> None:
        if not self._answer(wfile, "CONNECT", "220 backend.test ESMTP"):
            return
        seen: dict[str, int] = {}
        for raw in rfile:
            line = raw.decode(errors="replace").rstrip("\r\n")
            word = line.split(" ", 1)[0].upper()
            seen[word] = seen.get(word, 0) + 1
            self.commands.append(line)
            if word == "EHLO":
                wfile.write(b"250-backend.test\r\n250 8BITMIME\r\n")
                continue
            if word == "QUIT":
                wfile.write(b"221 Bye\r\n")
                return
            if word == "DATA":
                if not self._answer(wfile, "DATA", "354 go ahead"):
                    return
                message = b""
                for data_line in rfile:
                    if data_line == b".\r\n":
                        break
                    message += data_line
                else:
                    return
                self.messages.append(message)
                if not self._answer(wfile, ".", "250 2.0.0 Ok: queued"):
                    return
                continue
            default = "250 2.1.5 Ok" if word == "RCPT" else "250 2.0.0 Ok"
            if not self._answer(wfile, word, default, seen[word]):
                return


@dataclass
class Recorded:
    messages: list[bytes] = field(default_factory=list)
    proxy: list[object] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)


class _RecordingHandler:
    def __init__(self, record: Recorded) -> None:
        self.record = record

    async def handle_PROXY(self, server, session, envelope, proxy_data):
        self.record.proxy.append(proxy_data)
        return True

    async def handle_DATA(self, server, session, envelope):
        self.record.messages.append(envelope.original_content)
        self.record.peers.append(session.peer)
        return "250 2.0.0 Ok: recorded"


class RecordingBackend:
    """A real aiosmtpd server; with ``proxy=True`` it requires a PROXY header."""

    def __init__(self, *, proxy: bool = False) -> None:
        self.record = Recorded()
        self.port = free_port()
        kwargs = {"proxy_protocol_timeout": 5} if proxy else {}
        self.controller = Controller(
            _RecordingHandler(self.record),
            hostname="127.0.0.1",
            port=self.port,
            **kwargs,
        )

    def __enter__(self) -> "RecordingBackend":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
