"""The SMTP listener: aiosmtpd on port 25, the rules on every RCPT.

This module owns the client side of the proxy: the ESMTP dialogue, the
checks on what the client sends, the decision line of every recipient and
the reply on the wire. It asks the engine for a verdict and the backend
module to relay; it decides nothing itself.

Protocol notes:

- Each RCPT is judged on its own, and every transaction of a session is
  judged again (RFC 5321 3.3).
- A 421 reply closes the session once sent (RFC 5321 3.8); other 4xx and
  5xx replies leave it open.
- ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463) is advertised, so
  every reply after EHLO carries a status code, aiosmtpd's own too.
- PIPELINING (RFC 2920): commands are read and answered strictly in order.
- Bare CR or LF in DATA is turned into CRLF before relaying; the end of
  data is only CRLF.CRLF, so "SMTP smuggling" sequences never reach the
  backend as a second message.
- AUTH is neither offered nor accepted: port 25 takes incoming mail, and a
  session can never skip a rule by authenticating.
"""

import asyncio
import logging
import re

from aiosmtpd.smtp import Session, TLSSetupException

from greygeo.frontends.backend import BROKEN, Answer, Backend, BackendError, Relay
from greygeo.frontends.deciding import Decider, log_decision
from greygeo.frontends.protocol import ProxyServer, Transaction
from greygeo.rules.engine import Verdict
from greygeo.rules.facts import Facts

log = logging.getLogger(__name__)

# The enhanced status code for aiosmtpd's own replies that carry none.
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

INTERNAL_ERROR = "421 4.3.0 Internal error, closing connection; try again later"
FRONT = "smtp"


class ProxyHandler:
    """The aiosmtpd hooks, shared by every session of the daemon."""

    def __dir__(self) -> list[str]:
        """Only the hooks: aiosmtpd scans ``dir()`` of the handler on every
        connection (see ``ProxyServer.__dir__``)."""
        return [name for name in dir(type(self)) if name.startswith("handle_")]

    def __init__(
        self, *, decider: Decider, backend: Backend, max_recipients: int
    ) -> None:
        self.decider = decider
        self.backend = backend
        self.max_recipients = max_recipients
        self.sessions: set[ProxyServer] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def release(self, relay: Relay) -> None:
        """Close a backend session in the background."""
        task = asyncio.get_running_loop().create_task(relay.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def handle_EHLO(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        keywords = [line[4:] for line in responses[1:]]
        keywords = [k for k in keywords if not k.startswith("AUTH") and k != "HELP"]
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        lines = [server.hostname, *keywords]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_HELO(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
        hostname: str,
    ) -> str:
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
        address: str,
        mail_options: list[str],
    ) -> str:
        problem = _address_problem(address, envelope.smtp_utf8)
        if problem:
            return problem
        server.transactions += 1
        envelope.id = f"{server.session_id}.{server.transactions}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        problem = _address_problem(address, envelope.smtp_utf8)
        if problem:
            return problem
        if address == "<>":
            return "553 5.1.3 Error: the null address is no recipient"
        if envelope.broken:
            return BROKEN.wire()  # judge nothing that cannot be relayed
        envelope.attempts += 1
        if (
            len(envelope.rcpt_tos) >= self.max_recipients
            or envelope.attempts > 2 * self.max_recipients
        ):
            return "452 4.5.3 Error: too many recipients"

        facts = Facts(
            client=server.client,
            country=server.country(self.decider.countries),
            helo=session.host_name or "",
            sender=envelope.sender,
            recipient=address,
            transaction=envelope.id,
        )
        decision = await self.decider.decide(facts)
        if decision.verdict is not Verdict.ACCEPT:
            assert decision.reply is not None
            log_decision(facts, decision, decision.reply.code, FRONT)
            return str(decision.reply)

        answer = await self._relay_recipient(
            server, session, envelope, address, rcpt_options
        )
        if answer.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            if decision.greylist_delay is not None:
                envelope.greylist_delay = max(
                    envelope.greylist_delay or 0.0, decision.greylist_delay
                )
        log_decision(facts, decision, answer.code, FRONT)
        return answer.wire()

    async def _relay_recipient(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
        address: str,
        options: list[str],
    ) -> Answer:
        """Open the backend session if needed, then pass the RCPT on.

        Once the backend session of a transaction has failed, every later
        RCPT and the DATA get 4xx: a new backend session would not carry
        the recipients already accepted, and their mail would be lost (see
        ``handle_RCPT``)."""
        try:
            if envelope.relay is None:
                relay, answer = await self.backend.open(
                    server.client_info(session),
                    envelope.sender,
                    envelope.mail_options,
                )
                if relay is None:
                    return answer
                envelope.relay = relay
            return await envelope.relay.recipient(address, options)
        except BackendError as error:
            log.warning(
                "backend failed session=%s backend=%s error=%s",
                envelope.id,
                self.backend.description,
                error,
            )
            if envelope.relay is not None:
                self.release(envelope.relay)
                envelope.relay = None
                envelope.broken = True
            return error.answer

    async def handle_DATA(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
    ) -> str:
        if envelope.relay is None:
            return "451 4.4.2 Mail system connection lost, try again later"
        content = _crlf_only(envelope.original_content or b"")
        header = self.decider.greylist_header(envelope.greylist_delay)
        if header is not None:
            content = header.encode() + b"\r\n" + content
        try:
            answer = await envelope.relay.data(content)
        except BackendError as error:
            log.warning(
                "backend failed session=%s backend=%s error=%s",
                envelope.id,
                self.backend.description,
                error,
            )
            answer = error.answer
        log.info(
            "message",
            extra={
                "session": envelope.id,
                "client": str(server.client),
                "sender": envelope.sender,
                "recipients": len(envelope.rcpt_tos),
                "size": len(content),
                "reply": answer.code,
                "backend_reply": answer.text.split("\n")[-1],
            },
        )
        return answer.wire()

    async def handle_RSET(
        self, server: ProxyServer, session: Session, envelope: Transaction
    ) -> str:
        return "250 2.0.0 Ok"

    async def handle_NOOP(
        self, server: ProxyServer, session: Session, envelope: Transaction, arg: str
    ) -> str:
        return "250 2.0.0 Ok"

    async def handle_QUIT(
        self, server: ProxyServer, session: Session, envelope: Transaction
    ) -> str:
        return "221 2.0.0 Bye"

    async def handle_VRFY(
        self,
        server: ProxyServer,
        session: Session,
        envelope: Transaction,
        address: str,
    ) -> str:
        return "502 5.5.1 VRFY command is disabled"

    async def handle_exception(self, error: Exception) -> str:
        """The one catch-all: log the failure, close the session cleanly.

        A failed TLS handshake is the client's problem, not greygeo's: one
        INFO line, and aiosmtpd closes the connection."""
        if isinstance(error, TLSSetupException):
            log.info("tls handshake failed error=%r", error.__cause__ or error)
            return INTERNAL_ERROR
        log.error("session failed, closing it error=%r", error, exc_info=error)
        return INTERNAL_ERROR


def _crlf_only(content: bytes) -> bytes:
    """Turn every bare CR or LF into CRLF; counting first skips the copy for
    the usual message, which has none."""
    crlf = content.count(b"\r\n")
    if content.count(b"\n") == crlf and content.count(b"\r") == crlf:
        return content
    return _LINE_ENDINGS.sub(b"\r\n", content)


def _address_problem(address: str, smtputf8: bool) -> str | None:
    """A reply for an address greygeo cannot relay, else None."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return "553 5.1.3 Error: malformed address"
    if _CONTROL.search(address):
        return "553 5.1.3 Error: control character in address"
    if not smtputf8 and not address.isascii():
        return "553 5.6.7 Error: non-ASCII address needs SMTPUTF8"
    return None
