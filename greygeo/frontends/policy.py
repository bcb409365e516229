"""The Postfix SMTPD policy delegation front end (SMTPD_POLICY_README).

Postfix sends one request per line block: ``name=value`` lines ending with
an empty line, many requests on one connection. greygeo decides on
``protocol_state=RCPT`` with the same rules, greylisting, limits and log
line as the proxy, and answers one ``action=...`` line and an empty line.

Answers: accepted is ``DUNNO`` (Postfix's own restrictions go on), or a
``PREPEND X-Greylist: ...`` for the first message of a triplet that was
delayed; greylisted is ``DEFER_IF_PERMIT`` with the greylist text; any other
refusal is the configured reply as a Postfix action (``421 4.7.0 ...``
closes the session, as in the proxy). Other protocol states get ``DUNNO``.

A malformed request (a line without ``=``, an over-long line, too many
attributes) is logged and the connection is closed: Postfix then applies
its ``default_action`` and reconnects.
"""

import asyncio
import logging
import secrets

from greygeo.frontends.deciding import Decider, log_decision
from greygeo.rules.engine import Decision, Verdict
from greygeo.rules.facts import Facts, plain_address

log = logging.getLogger(__name__)

FRONT = "policy"
MAX_LINE = 4096
MAX_ATTRIBUTES = 200
MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT = 600.0  # Postfix closes idle policy connections after 300 s


class MalformedRequest(Exception):
    """The peer does not speak the policy protocol."""


class PolicyService:
    def __init__(self, decider: Decider) -> None:
        self.decider = decider
        self._connections: set[asyncio.StreamWriter] = set()

    def close(self) -> None:
        """Close every Postfix connection (on shutdown)."""
        for writer in list(self._connections):
            writer.close()

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One Postfix connection: requests until it closes."""
        self._connections.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                action = await self.answer(request)
                writer.write(f"action={action}\n\n".encode())
                await writer.drain()
        except MalformedRequest as error:
            log.warning("policy request malformed, closing error=%s", error)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def answer(self, request: dict[str, str]) -> str:
        """The action for one request."""
        if request.get("protocol_state", "").upper() != "RCPT":
            return "DUNNO"
        try:
            client = plain_address(request.get("client_address", ""))
        except ValueError:
            log.warning("policy request without a client address, DUNNO")
            return "DUNNO"

        facts = Facts(
            client=client,
            country=self.decider.country(client),
            helo=request.get("helo_name", ""),
            sender=request.get("sender", ""),
            recipient=request.get("recipient", ""),
            # Postfix's instance names the message; without one, each
            # request is a transaction of its own.
            transaction=f"policy.{request.get('instance') or secrets.token_hex(8)}",
        )
        decision = await self.decider.decide(facts)
        action = self._action(decision)
        log_decision(facts, decision, action.split(" ", 1)[0], FRONT)
        return action

    def _action(self, decision: Decision) -> str:
        if decision.verdict is Verdict.ACCEPT:
            header = self.decider.greylist_header(decision.greylist_delay)
            return "DUNNO" if header is None else f"PREPEND {header}"
        assert decision.reply is not None
        if decision.action == "greylist":
            return f"DEFER_IF_PERMIT {decision.reply.status} {decision.reply.text}"
        return str(decision.reply)


async def _read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One request, or None when the peer closed between requests. The whole
    block is read at once, then split: one wake-up per request, not one per
    line."""
    try:
        block = await asyncio.wait_for(reader.readuntil(b"\n\n"), IDLE_TIMEOUT)
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise MalformedRequest("connection closed inside a request") from error
        return None
    except asyncio.LimitOverrunError as error:
        raise MalformedRequest("request too long") from error

    request: dict[str, str] = {}
    for raw in block[:-2].split(b"\n"):
        if len(raw) > MAX_LINE:
            raise MalformedRequest("line too long")
        text = raw.decode("utf-8", "replace").rstrip("\r")
        name, equals, value = text.partition("=")
        if not equals or not name:
            raise MalformedRequest(f"not name=value: {text[:80]!r}")
        request[name] = value
    if len(request) > MAX_ATTRIBUTES:
        raise MalformedRequest("too many attributes")
    return request
