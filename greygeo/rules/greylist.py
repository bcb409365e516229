"""Greylisting on the triplet (client_net, sender, recipient).

Design note. The life cycle and its defaults are postgrey's, the reference
implementation: a triplet seen for the first time is deferred; a retry
before ``delay`` is deferred again without resetting the first sight; a
retry between ``delay`` and ``retry_window`` passes and is recorded; a
passed triplet passes at once while it keeps being used within
``max_age``. A client whose mail passed ``auto_allow_after`` times (at most
one count per hour, so a single burst cannot promote it) is no longer
greylisted.

The client is keyed by its network, not its address: /24 for IPv4 and /64
for IPv6, because large senders retry from another host of the same pool
(RFC 6647 4.1 discusses this trade-off). Senders are normalised so that
senders who rewrite their address on every attempt (BATV, SRS, VERP, plus
extensions) still match their first attempt.

This module decides; the store only keeps rows. A decision reads the rows,
computes the next state here, and writes it back only if nobody changed the
row in between (the write names the version it read); on a conflict it
reads again. That keeps concurrent sessions, and several processes on one
database, from losing an update.
"""

import logging
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from ipaddress import ip_network
from typing import Protocol

from greygeo.rules.facts import Address, Facts, normal_domain, plain_address
from greygeo.rules.reply import Reply, parse_reply

log = logging.getLogger(__name__)

# A client's pass counts toward auto-allow at most once per this period.
AUTO_ALLOW_COUNT_EVERY = 3600.0
# A passed triplet's (and an auto-allowed client's) last use is written back
# at most this often: it only serves max_age, counted in days, and skipping
# the write makes most known-triplet decisions a single read.
LAST_SEEN_PRECISION = 3600.0
_CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class GreylistSettings:
    delay: float = 300.0
    retry_window: float = 2 * 86400.0
    max_age: float = 35 * 86400.0
    auto_allow_after: int = 5
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    reply: str = "451 4.7.1 Greylisted, please try again in %s seconds"
    header: bool = True
    purge_every: float = 3600.0

    def reply_for(self, seconds: float) -> Reply:
        """The reply, its ``%s`` replaced by the whole seconds left."""
        text = self.reply.replace("%s", str(max(1, round(seconds))))
        return parse_reply(text, allowed_classes="4")


@dataclass(frozen=True)
class Triplet:
    client_net: str
    sender: str
    recipient: str


@dataclass(frozen=True)
class TripletRow:
    first_seen: float
    last_seen: float
    passed_at: float | None
    version: int = 0


@dataclass(frozen=True)
class ClientRow:
    passes: int
    last_counted: float
    last_seen: float


class Outcome(StrEnum):
    NEW = "new"
    EARLY = "early retry"
    RESTARTED = "retry after the window, started over"
    PASSED = "passed now"
    KNOWN = "known triplet"
    AUTO_ALLOWED = "client auto-allowed"


@dataclass(frozen=True)
class GreylistResult:
    outcome: Outcome
    wait: float = 0.0
    """Seconds left before a retry can pass; 0 when it passes."""
    delayed: float | None = None
    """How long the triplet was held, for the first message that passes."""

    @property
    def passes(self) -> bool:
        return self.outcome in (Outcome.PASSED, Outcome.KNOWN, Outcome.AUTO_ALLOWED)


class GreylistStore(Protocol):
    """What greylisting needs from the store."""

    async def read_greylist(
        self, triplet: Triplet
    ) -> tuple[TripletRow | None, ClientRow | None]: ...

    async def write_triplet(
        self, triplet: Triplet, row: TripletRow, expected_version: int | None
    ) -> bool:
        """Write ``row`` unless the stored version moved; False on conflict.
        ``expected_version`` None means the row must not exist yet."""

    async def count_client_pass(
        self, client_net: str, now: float, count_every: float, seen_every: float
    ) -> None:
        """Count a pass toward auto-allow, at most once per ``count_every``."""


# -- keys ---------------------------------------------------------------------


def client_net(client: Address | str, settings: GreylistSettings) -> str:
    """The client's network: /24 for IPv4, /64 for IPv6 by default."""
    address = plain_address(client)
    prefix = settings.ipv4_prefix if address.version == 4 else settings.ipv6_prefix
    return str(ip_network(f"{address}/{prefix}", strict=False))


_BATV = re.compile(r"^(?:prvs|msprvs1|btv1)=+[^=]+=+(?P<local>.+)$", re.IGNORECASE)
_SRS0 = re.compile(r"^srs0[=+-][^=]+=[^=]+=(?P<domain>[^=]+)=(?P<local>.+)$", re.I)
_SRS1 = re.compile(
    r"^srs1[=+-][^=]+=[^=]+==[^=]+=[^=]+=(?P<domain>[^=]+)=(?P<local>.+)$", re.I
)
_NUMBER = re.compile(r"(?<![a-z0-9])\d+(?![a-z0-9])", re.IGNORECASE)


def normal_sender(sender: str) -> str:
    """The sender as a greylisting key.

    Lower case; BATV tags and SRS rewriting undone; ``+extension`` dropped;
    numbers standing alone in the local part (VERP counters) become ``#``.
    The null sender stays empty.
    """
    if not sender:
        return ""
    local, at, domain = sender.rpartition("@")
    if not at:
        local, domain = sender, ""
    local = local.lower()

    srs = _SRS1.match(local) or _SRS0.match(local)
    if srs:
        local, domain = srs["local"], srs["domain"]
    batv = _BATV.match(local)
    if batv:
        local = batv["local"]

    local = local.split("+", 1)[0]
    local = _NUMBER.sub("#", local)
    domain = normal_domain(domain)
    return f"{local}@{domain}" if domain else local


def triplet_of(facts: Facts, settings: GreylistSettings) -> Triplet:
    return Triplet(
        client_net(facts.client, settings),
        normal_sender(facts.sender),
        facts.recipient.lower(),
    )


# -- the life cycle -------------------------------------------------------------


def advance(
    row: TripletRow | None, now: float, settings: GreylistSettings
) -> tuple[GreylistResult, TripletRow | None]:
    """The outcome for an attempt at ``now``, and the row to store (None
    when nothing needs writing)."""
    if row is None:
        return _first_sight(now, settings, Outcome.NEW)

    if row.passed_at is not None:
        if now - row.last_seen > settings.max_age:
            return _first_sight(now, settings, Outcome.NEW)
        result = GreylistResult(Outcome.KNOWN)
        if now - row.last_seen < LAST_SEEN_PRECISION:
            return result, None
        return result, replace(row, last_seen=now)

    waited = now - row.first_seen
    if waited > settings.retry_window:
        return _first_sight(now, settings, Outcome.RESTARTED)
    if waited < settings.delay:
        # Nothing to write: an early retry changes no state, so a burst of
        # retries of one triplet never contends for its row.
        return GreylistResult(Outcome.EARLY, wait=settings.delay - waited), None
    result = GreylistResult(Outcome.PASSED, delayed=waited)
    return result, replace(row, last_seen=now, passed_at=now)


def _first_sight(
    now: float, settings: GreylistSettings, outcome: Outcome
) -> tuple[GreylistResult, TripletRow]:
    return GreylistResult(outcome, wait=settings.delay), TripletRow(now, now, None)


def auto_allowed(
    client: ClientRow | None, now: float, settings: GreylistSettings
) -> bool:
    return (
        settings.auto_allow_after > 0
        and client is not None
        and client.passes >= settings.auto_allow_after
        and now - client.last_seen <= settings.max_age
    )


async def check(
    store: GreylistStore,
    facts: Facts,
    now: float,
    settings: GreylistSettings,
    *,
    commit: bool = True,
) -> GreylistResult:
    """Greylist one recipient; with ``commit=False`` only look."""
    triplet = triplet_of(facts, settings)
    for _ in range(_CONFLICT_RETRIES):
        row, client = await store.read_greylist(triplet)
        if auto_allowed(client, now, settings):
            result = GreylistResult(Outcome.AUTO_ALLOWED)
            if commit:
                await _count_pass(store, triplet, client, now)
            return result

        result, new_row = advance(row, now, settings)
        if not commit:
            return result
        if new_row is not None:
            expected = row.version if row is not None else None
            if not await store.write_triplet(triplet, new_row, expected):
                continue  # another session wrote first: decide again
        if result.passes and settings.auto_allow_after > 0:
            await _count_pass(store, triplet, client, now)
        return result
    # The row changed under every attempt: defer, as for a first sight. That
    # fails closed; a store failure would let on_error = "accept" through.
    log.warning("greylist row kept changing, deferred triplet=%s", triplet)
    return GreylistResult(Outcome.EARLY, wait=settings.delay)


async def _count_pass(
    store: GreylistStore, triplet: Triplet, client: ClientRow | None, now: float
) -> None:
    """Count the client's pass, unless the row read shows there is nothing to
    write (counted within the hour, last use recent)."""
    if (
        client is not None
        and now - client.last_counted < AUTO_ALLOW_COUNT_EVERY
        and now - client.last_seen < LAST_SEEN_PRECISION
    ):
        return
    await store.count_client_pass(
        triplet.client_net, now, AUTO_ALLOW_COUNT_EVERY, LAST_SEEN_PRECISION
    )


async def describe(
    store: GreylistStore, facts: Facts, now: float, settings: GreylistSettings
) -> str:
    """The triplet's state in words, for ``greygeo check``; changes nothing."""
    triplet = triplet_of(facts, settings)
    row, client = await store.read_greylist(triplet)
    key = f"({triplet.client_net}, <{triplet.sender}>, <{triplet.recipient}>)"
    if auto_allowed(client, now, settings):
        assert client is not None
        return f"{key}: client auto-allowed after {client.passes} passes"
    if row is None:
        return f"{key}: unknown"
    if row.passed_at is not None:
        if now - row.last_seen > settings.max_age:
            return f"{key}: passed, but unused for longer than max_age (expired)"
        return f"{key}: passed, last used {now - row.last_seen:.0f}s ago"
    waited = now - row.first_seen
    if waited > settings.retry_window:
        return f"{key}: waiting, but the retry window is over (starts again)"
    if waited < settings.delay:
        return f"{key}: waiting {settings.delay - waited:.0f}s"
    return f"{key}: waiting, the next retry passes"
