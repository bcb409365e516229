"""The nginx mail ``auth_http`` front end: the original recipe's nginx asks
greygeo, with the same rules, state and log line as the proxy.

nginx's mail module (with ``smtp_auth none``) makes one HTTP request per
client connection, after the first RCPT, with the client in ``Client-IP``,
``Auth-SMTP-Helo``, and the envelope as the commands the client sent
(``Auth-SMTP-From: MAIL FROM:<a@b> SIZE=1``, ``Auth-SMTP-To: RCPT TO:<c@d>``).
greygeo answers ``Auth-Status: OK`` with ``Auth-Server``/``Auth-Port`` of
the configured backend, or ``Auth-Status: <text>`` with
``Auth-Error-Code: <code> <status>``, which nginx sends to the client. Any
path is answered, so the recipe's ``auth_http 127.0.0.1/smtpproxy/;`` works
unchanged.

nginx asks about the first recipient only: that is the limit of the recipe
which the proxy front end lifts.
"""

import logging
import re
import secrets
from ipaddress import ip_address

from aiohttp import web

from greygeo.config import Endpoint
from greygeo.frontends.deciding import Decider, log_decision
from greygeo.rules.engine import Verdict
from greygeo.rules.facts import Facts, plain_address

log = logging.getLogger(__name__)

FRONT = "auth_http"
_PATH = re.compile(r"<([^<>]*)>")


class AuthHttpService:
    def __init__(self, decider: Decider, backend: Endpoint) -> None:
        self.decider = decider
        self.backend = backend
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        headers = {name: _text(value) for name, value in request.headers.items()}
        try:
            client = plain_address(headers.get("Client-IP", ""))
        except ValueError:
            log.warning("auth_http request without a usable Client-IP")
            return _refuse("Temporary authentication failure", "451 4.3.0")

        facts = Facts(
            client=client,
            country=self.decider.country(client),
            helo=headers.get("Auth-SMTP-Helo", ""),
            sender=_address(headers.get("Auth-SMTP-From", "")),
            recipient=_address(headers.get("Auth-SMTP-To", "")),
            transaction=f"auth_http.{secrets.token_hex(5)}",
        )
        decision = await self.decider.decide(facts)
        if decision.verdict is Verdict.ACCEPT:
            log_decision(facts, decision, "OK", FRONT)
            return web.Response(
                headers={
                    "Auth-Status": "OK",
                    "Auth-Server": self.backend.host,
                    "Auth-Port": str(self.backend.port),
                }
            )
        assert decision.reply is not None
        reply = decision.reply
        log_decision(facts, decision, reply.code, FRONT)
        return _refuse(reply.text, f"{reply.code} {reply.status}")


def _refuse(text: str, code: str) -> web.Response:
    return web.Response(headers={"Auth-Status": text, "Auth-Error-Code": code})


def _text(value: str) -> str:
    """A header value as proper text: bytes that were not UTF-8 become U+FFFD
    (the HTTP parser hands them over as surrogates, which no store takes)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _address(command: str) -> str:
    """The address in ``MAIL FROM:<a@b> SIZE=1`` or a bare ``a@b``; ``<>``
    is empty."""
    match = _PATH.search(command)
    if match:
        return match[1]
    _, colon, rest = command.partition(":")
    return (rest if colon else command).strip()


def backend_for_nginx(endpoint: Endpoint) -> Endpoint:
    """nginx takes an IP address in Auth-Server, not a name."""
    try:
        ip_address(endpoint.host)
    except ValueError as error:
        raise ValueError(
            f"auth_http needs [backend] address as an IP address, not {endpoint.host!r}"
        ) from error
    return endpoint
