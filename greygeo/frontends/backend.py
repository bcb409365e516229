"""The relay to the backend MTA, one backend session per transaction.

The backend session opens when the first recipient of a transaction is
accepted by the rules: connect (with a PROXY header when configured), EHLO,
XCLIENT and EHLO again when configured, then MAIL FROM with the client's
parameters. Each accepted RCPT goes to the backend and the backend's own
reply goes back to the client. The message goes to the backend after the
client's end of data, and the client hears 250 only when the backend said
250. Any failure of the backend becomes a 4xx for the client, so mail is
never lost and never acknowledged without the backend's word.
"""

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from greygeo.config import BackendConfig
from greygeo.frontends.client_identity import (
    ClientInfo,
    proxy_v1_header,
    proxy_v2_header,
    xclient_arguments,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """A reply from the backend, or one greygeo makes for a backend failure."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @classmethod
    def from_backend(cls, code: int, text: str) -> "Answer":
        """The backend's reply; its 421 ends only the backend session, so
        the client hears 451 and keeps its own session."""
        return cls(451 if code == 421 else code, text)

    def wire(self) -> str:
        """The reply as sent to the client; several lines for a long text."""
        lines = [_printable(line) for line in self.text.split("\n")] or [""]
        head = [f"{self.code}-{line}".rstrip() for line in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}".rstrip()])


UNREACHABLE = Answer(451, "4.4.1 Mail system not reachable, try again later")
BROKEN = Answer(451, "4.4.2 Mail system connection lost, try again later")
NO_XCLIENT = Answer(451, "4.3.5 Mail system misconfigured, try again later")


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else " " for char in text)


class BackendError(Exception):
    """The backend cannot serve a transaction; ``answer`` goes to the client."""

    def __init__(self, message: str, answer: Answer) -> None:
        super().__init__(message)
        self.answer = answer


class Relay(Protocol):
    """One transaction's session with the backend."""

    async def recipient(self, address: str, options: list[str]) -> Answer: ...

    async def data(self, content: bytes) -> Answer:
        """Send the message; its lines end with CRLF and nothing else."""

    async def close(self) -> None: ...


class Backend(Protocol):
    """Where accepted mail goes."""

    description: str

    async def open(
        self, client: ClientInfo, sender: str, options: list[str]
    ) -> tuple[Relay | None, Answer]:
        """Start a transaction; the relay is None when the backend refused."""

    async def probe(self) -> None:
        """Check at start-up that the backend can serve; raise BackendError."""


class SmtpBackend:
    """A real MTA reached over SMTP with aiosmtplib."""

    def __init__(self, config: BackendConfig, hostname: str) -> None:
        self.config = config
        self.hostname = hostname
        self.endpoint = config.endpoint
        self.description = f"smtp:{self.endpoint} identity={config.client_identity}"

    async def probe(self) -> None:
        """Connect once; with XCLIENT, insist that the backend offers it."""
        try:
            smtp = await self._connect(None)
        except BackendError as error:
            log.warning(
                "backend not reachable at start backend=%s error=%s",
                self.endpoint,
                error,
            )
            return
        try:
            if self.config.client_identity == "xclient":
                self._require_xclient(smtp)
        finally:
            await _quit(smtp)

    async def open(
        self, client: ClientInfo, sender: str, options: list[str]
    ) -> tuple[Relay | None, Answer]:
        smtp = await self._connect(client)
        try:
            if self.config.client_identity == "xclient":
                await self._xclient(smtp, client)
            encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
            response = await smtp.execute_command(
                b"MAIL",
                b"FROM:<" + sender.encode(encoding, "surrogateescape") + b">",
                *(option.encode("ascii") for option in options),
            )
        except BackendError:
            smtp.close()
            raise
        except (aiosmtplib.SMTPException, OSError, ValueError) as error:
            # ValueError: aiosmtplib refuses control characters in a command.
            smtp.close()
            raise BackendError(f"MAIL failed: {error}", BROKEN) from error

        answer = Answer.from_backend(response.code, response.message)
        if not answer.ok:
            await _quit(smtp)
            return None, answer
        return SmtpRelay(smtp, encoding), answer

    async def _connect(self, client: ClientInfo | None) -> aiosmtplib.SMTP:
        """Connect, send the PROXY header if any, read the banner, EHLO."""
        identity = self.config.client_identity
        try:
            sock = await self._socket()
            if identity in ("proxy-v1", "proxy-v2"):
                header = (
                    proxy_v1_header if identity == "proxy-v1" else proxy_v2_header
                )(client)
                await asyncio.get_running_loop().sock_sendall(sock, header)
            smtp = aiosmtplib.SMTP(
                sock=sock,
                local_hostname=self.hostname,
                timeout=self.config.timeout,
                start_tls=False,
            )
            await smtp.connect()
            await smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise BackendError(f"connect failed: {error}", UNREACHABLE) from error
        return smtp

    async def _socket(self) -> socket.socket:
        """A connected non-blocking socket, bound to source_address if set."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.endpoint.host, self.endpoint.port, type=socket.SOCK_STREAM
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            if self.config.source_address:
                sock.bind((self.config.source_address, 0))
            async with asyncio.timeout(self.config.connect_timeout):
                await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    def _require_xclient(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.supports_extension("xclient"):
            raise BackendError(
                f"backend {self.endpoint} does not offer XCLIENT to greygeo: "
                "allow greygeo's address in its smtpd_authorized_xclient_hosts, "
                "or set [backend] client_identity",
                NO_XCLIENT,
            )

    async def _xclient(self, smtp: aiosmtplib.SMTP, client: ClientInfo) -> None:
        """Hand over the client, then greet again with the client's HELO."""
        self._require_xclient(smtp)
        response = await smtp.execute_command(b"XCLIENT", *xclient_arguments(client))
        # Postfix answers 220 and resets the session; older implementations
        # (smtp-sink) answer 250. Greeting again is right after either.
        if response.code not in (220, 250):
            raise BackendError(
                f"XCLIENT refused: {response.code} {response.message}", NO_XCLIENT
            )
        if client.esmtp:
            await smtp.ehlo(hostname=client.helo)
        else:
            await smtp.helo(hostname=client.helo)


class SmtpRelay:
    def __init__(self, smtp: aiosmtplib.SMTP, encoding: str) -> None:
        self.smtp = smtp
        self.encoding = encoding

    async def recipient(self, address: str, options: list[str]) -> Answer:
        try:
            response = await self.smtp.execute_command(
                b"RCPT",
                b"TO:<" + address.encode(self.encoding, "surrogateescape") + b">",
                *(option.encode("ascii") for option in options),
            )
        except (aiosmtplib.SMTPException, OSError, ValueError) as error:
            raise BackendError(f"RCPT failed: {error}", BROKEN) from error
        return Answer.from_backend(response.code, response.message)

    async def data(self, content: bytes) -> Answer:
        """DATA, then the message, dot-stuffed here in one pass.

        aiosmtplib's ``data()`` would normalise the line endings again with
        a regular expression, which costs about 20 ms per MB; the content
        greygeo relays has CRLF line ends already."""
        try:
            response = await self.smtp.execute_command(b"DATA")
            if response.code != 354:
                return Answer.from_backend(response.code, response.message)
            protocol = self.smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            protocol.write(_dot_stuffed(content) + b".\r\n")
            response = await protocol.read_response(timeout=self.smtp.timeout)
        except (aiosmtplib.SMTPException, OSError) as error:
            raise BackendError(f"DATA failed: {error}", BROKEN) from error
        return Answer.from_backend(response.code, response.message)

    async def close(self) -> None:
        await _quit(self.smtp)


def _dot_stuffed(content: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2): a line that starts with a dot gets
    another; the content must end its lines with CRLF only."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say QUIT politely; a backend that is gone already is fine too."""
    try:
        await smtp.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()
