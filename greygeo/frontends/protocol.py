"""One client connection: aiosmtpd's SMTP protocol with greygeo's guard rails.

What this adds to aiosmtpd, and why:

- every reply after EHLO carries an enhanced status code, aiosmtpd's own
  too, since ENHANCEDSTATUSCODES is advertised (RFC 2034, RFC 3463);
- a 421 closes the session once sent, and nothing more is read
  (RFC 5321 3.8);
- an idle client hears 421 4.4.2 before it is dropped (RFC 5321 4.5.3.2);
- HELO/EHLO names must be one printable word, since they are passed on to
  the backend;
- AUTH is refused: port 25 takes incoming mail.

The decisions themselves are the handler's, in ``greygeo.frontends.smtp``.
"""

import asyncio
import re
import secrets
from typing import TYPE_CHECKING, Any, ClassVar

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from greygeo.frontends.backend import Relay
from greygeo.frontends.client_identity import ClientInfo
from greygeo.lookups.geoip import CountryLookup
from greygeo.rules.facts import UNKNOWN_COUNTRY, Address, plain_address

if TYPE_CHECKING:
    from greygeo.frontends.smtp import ProxyHandler

_DEFAULT_STATUS = {
    214: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    252: "2.0.0",
    421: "4.3.0",
    450: "4.0.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.3.0",
    555: "5.5.4",
}
_HAS_STATUS = re.compile(r"^\d\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b")
_PLAIN_PATH = re.compile(
    r"^\s*<(?P<address>(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)?)>"
    r"(?:\s+(?P<params>.*)|\s*$)"
)
_DATA_CHUNK = 256 * 1024
# The longest line, without its line end, counting a transparency dot: 1000
# octets with CRLF (RFC 5321 4.5.3.1.6), and one for the dot. A bare CR or
# LF ends a line too.
_LONGEST_LINE = 999
_HELO_NAME = re.compile(r"^[\x21-\x7e]{1,255}$")


class Transaction(Envelope):
    """aiosmtpd's envelope, plus the transaction id and the backend session."""

    def __init__(self) -> None:
        super().__init__()
        self.id = ""
        self.relay: Relay | None = None
        self.greylist_delay: float | None = None
        self.broken = False
        self.attempts = 0
        """RCPT commands in this transaction, refused ones too."""
        """The backend session failed after accepting recipients."""

    @property
    def sender(self) -> str:
        """The envelope sender; empty for the null sender ``<>``."""
        return "" if self.mail_from in (None, "<>") else str(self.mail_from)


class ProxyServer(SMTP):
    """One client connection: aiosmtpd's protocol with greygeo's guard rails."""

    _command_names: ClassVar[list[str] | None] = None

    def __dir__(self) -> list[str]:
        """Only the command methods.

        aiosmtpd scans ``dir()`` of the protocol on every new connection to
        find its ``smtp_*`` and ``auth_*`` methods, evaluating every
        attribute on the way; that scan cost about a millisecond per
        connection. The names are those of the class, so they are listed
        once.
        """
        cls = type(self)
        if cls._command_names is None:
            cls._command_names = [
                name for name in dir(cls) if name.startswith(("smtp_", "auth_"))
            ]
        return cls._command_names

    def __init__(
        self, handler: "ProxyHandler", *, max_errors: int = 20, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.handler = handler
        self.max_errors = max_errors
        self.errors = 0
        self.session_id = secrets.token_hex(5)
        self.transactions = 0
        self._greeted = False  # the greeting carries no status code
        self._raw_replies = False  # nor do the replies to HELO and EHLO
        self._country: str | None = None
        self.client: Address = plain_address("0.0.0.0")
        self.client_port = 0

    # -- per-connection facts --------------------------------------------

    def country(self, countries: CountryLookup) -> str:
        if self._country is None:
            self._country = countries.country(self.client) or UNKNOWN_COUNTRY
        return self._country

    def client_info(self, session: Session) -> ClientInfo:
        assert self.transport is not None
        local = self.transport.get_extra_info("sockname")
        return ClientInfo(
            address=self.client,
            port=self.client_port,
            helo=session.host_name or "",
            esmtp=bool(session.extended_smtp),
            local_address=plain_address(local[0]),
            local_port=int(local[1]),
        )

    # -- aiosmtpd life cycle ------------------------------------------------

    def _create_envelope(self) -> Transaction:
        return Transaction()

    def _set_post_data_state(self) -> None:
        """A new transaction starts: the old one's backend session ends."""
        old = self.envelope
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        if isinstance(old, Transaction) and old.relay is not None:
            self.handler.release(old.relay)
            old.relay = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self not in self.handler.sessions:  # not again after STARTTLS
            self.handler.sessions.add(self)
            peer = transport.get_extra_info("peername")
            self.client, self.client_port = plain_address(peer[0]), int(peer[1])
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self not in self.handler.sessions:
            return  # already ended (see _timeout_cb)
        self.handler.sessions.discard(self)
        envelope = self.envelope
        if isinstance(envelope, Transaction) and envelope.relay is not None:
            self.handler.release(envelope.relay)
            envelope.relay = None
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """True between MAIL and the end of data (or RSET)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def say_goodbye(self) -> None:
        """Close the session with 421, as on shutdown (RFC 5321 3.8)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(
                f"421 4.3.2 {self.hostname} Service shutting down\r\n".encode()
            )
            transport.close()

    @property
    def _in_tls_handshake(self) -> bool:
        return self._tls_protocol is not None and (
            self.session is None or self.session.ssl is None
        )

    def _timeout_cb(self) -> None:
        """Tell an idle client why it is dropped (RFC 5321 4.5.3.2).

        A client that stalls inside the TLS handshake has no session to talk
        to: its socket is closed under the TLS layer and the session ends."""
        raw = self._original_transport
        if self._in_tls_handshake and isinstance(raw, asyncio.Transport):
            raw.abort()
            # The TLS layer does not always report the loss while it waits
            # for the rest of a handshake record: end the session here.
            self.connection_lost(None)
            return
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(
                f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode()
            )
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: str | bytes) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        if not self._greeted:
            self._greeted = True
        elif not self._raw_replies:
            text = _with_status(text)
        await super().push(text)
        if _is_error(text) and not text.startswith("421"):
            self.errors += 1
            if self.errors >= self.max_errors:
                # Like Postfix's smtpd_hard_error_limit: a client that keeps
                # failing is probing or broken; stop spending work on it.
                text = f"421 4.7.0 {self.hostname} Error: too many errors"
                await super().push(text)
        if text.startswith("421") and self.transport is not None:
            # RFC 5321 3.8: close after a 421, and read nothing more.
            self.transport.close()
            if self._handler_coroutine is not None:
                self._handler_coroutine.cancel()

    # -- commands greygeo treats differently from aiosmtpd ------------------

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and not _HELO_NAME.match(hostname):
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._raw_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and not _HELO_NAME.match(hostname):
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._raw_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_replies = False

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """Read the message in large chunks rather than line by line.

        aiosmtpd reads DATA one line at a time, which costs about 20 ms of
        CPU per MB; greygeo reads what the socket has and looks for the end
        of data (CRLF.CRLF only, RFC 5321 4.1.1.4) in it. Bare LF counts as
        a line end for the line-length check, since greygeo turns it into
        CRLF. Each chunk received resets the idle timeout, so a slow upload
        of a large message is not cut off.
        """
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return

        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await self._read_data()
        if content is None:
            return  # the client went away; nothing is relayed
        if isinstance(content, str):
            self._set_post_data_state()
            await self.push(content)
            return

        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> bytes | str | None:
        """The unstuffed message; an error reply; None when the client left."""
        reader = self._reader
        data = bytearray()
        dropped = 0  # bytes thrown away once the message is too large
        limit = self.data_size_limit or 0
        while True:
            chunk = await reader.read(_DATA_CHUNK)
            if not chunk:
                return None
            self._reset_timeout()
            searched = max(0, len(data) - 4)
            data += chunk
            end = _end_of_data(data, searched, at_start=dropped == 0)
            if end is not None:
                # What follows the end of data is the next pipelined command.
                reader._buffer[:0] = data[end + 3 :]  # type: ignore[attr-defined]
                del data[end:]
                break
            if limit and len(data) + dropped > limit:
                keep = min(4, len(data))  # a split end of data may start here
                dropped += len(data) - keep
                del data[: len(data) - keep]

        if limit and len(data) + dropped > limit:
            return "552 5.3.4 Error: message too big"
        if max(map(len, data.splitlines()), default=0) > _LONGEST_LINE:
            return "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
        if data.startswith(b"."):
            del data[:1]
        return bytes(data.replace(b"\r\n.", b"\r\n"))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """``<local@domain> params``, the usual form, without the e-mail
        header parser (a quarter of a millisecond per address); anything
        else goes to aiosmtpd's full parser."""
        match = _PLAIN_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        return match["address"] or "<>", match["params"] or ""

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("503 5.5.1 Error: authentication not enabled")

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)


def _end_of_data(data: bytearray, start: int, *, at_start: bool) -> int | None:
    """Where the message ends (the index just after its last CRLF, where
    ``.CRLF`` begins), or None when the end of data has not come yet."""
    if at_start and data.startswith(b".\r\n"):
        return 0
    found = data.find(b"\r\n.\r\n", start)
    return None if found < 0 else found + 2


def _is_error(reply: str) -> bool:
    """A permanent error, or a 452 for too many recipients."""
    return reply[:1] == "5" or reply.startswith("452 4.5.3")


def _with_status(reply: str) -> str:
    """Add an enhanced status code to each line of a reply that lacks one,
    keeping the ``-`` of continuation lines."""
    return "\r\n".join(_line_with_status(line) for line in reply.split("\r\n"))


def _line_with_status(line: str) -> str:
    if _HAS_STATUS.match(line) or len(line) < 3 or not line[:3].isdigit():
        return line
    code = int(line[:3])
    if code == 354 or code // 100 not in (2, 4, 5):
        return line
    status = _DEFAULT_STATUS.get(code, f"{code // 100}.0.0")
    separator = "-" if line[3:4] == "-" else " "
    return f"{code}{separator}{status} {line[4:]}".rstrip()
