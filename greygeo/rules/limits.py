"""Rate limits with the semantics of nginx ``limit_req ... nodelay``.

Design note. nginx keeps, per key, an "excess" that drains at the rate and
grows by one per accepted request; a request that would push the excess
past ``burst`` is refused and leaves the state untouched. That is the
generic cell rate algorithm (GCRA), which we store as one number per key:
the theoretical arrival time (TAT), the instant at which the key is back to
an empty bucket. A request at ``now`` passes when

    max(TAT, now) + interval - now <= (burst + 1) * interval

and then sets TAT to ``max(TAT, now) + interval``. With ``1/m`` and no burst
the first request passes, every request in the next 60 s is refused, and a
refused request does not push the next allowance further away. One number
per key keeps the state small, easy to persist, and independent of the
rate: when a schedule changes the rate, the TAT a key has earned stays.

Several recipients of one transaction count once: a key remembers the last
transaction it admitted, and that transaction passes again for free.

Counting is in two steps. ``look`` says whether a transaction would pass
and what the new TAT would be; ``take`` stores it only when the whole
decision accepts, so that a transaction refused by a later rule (for
example greylisting) uses up no allowance. ``take`` writes only if the
stored TAT is still the one looked at, so two sessions racing for the last
allowance cannot both get it.
"""

from dataclasses import dataclass

from greygeo.rules.state import LimitStore
from greygeo.units import Rate

_CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class Look:
    allowed: bool
    retry_after: float
    """Seconds until the key would pass again; 0 when allowed."""
    new_tat: float
    expected_tat: float | None
    """The stored TAT this look was based on (None: no row)."""
    free: bool = False
    """The transaction was already counted for this key."""


def gcra(
    stored: tuple[float, str] | None,
    now: float,
    rate: Rate,
    burst: int,
    transaction: str = "",
) -> Look:
    """Whether a transaction passes, given the key's stored state."""
    tat, admitted = stored if stored is not None else (None, "")
    if transaction and admitted == transaction:
        return Look(True, 0.0, tat or now, tat, free=True)

    new_tat = max(tat if tat is not None else now, now) + rate.interval
    allowed_until = now + (burst + 1) * rate.interval
    if new_tat > allowed_until + 1e-9:
        return Look(False, new_tat - allowed_until, new_tat, tat)
    return Look(True, 0.0, new_tat, tat)


async def look(
    store: LimitStore,
    rule: str,
    key: str,
    rate: Rate,
    burst: int,
    now: float,
    transaction: str,
) -> Look:
    return gcra(await store.read_limit(rule, key), now, rate, burst, transaction)


async def take(
    store: LimitStore,
    rule: str,
    key: str,
    rate: Rate,
    burst: int,
    now: float,
    transaction: str,
    seen: Look,
) -> Look:
    """Store the allowance ``seen`` granted; if another session changed the
    key meanwhile, decide again. Returns the final look."""
    for _ in range(_CONFLICT_RETRIES):
        if not seen.allowed or seen.free:
            return seen
        if await store.write_limit(
            rule, key, seen.new_tat, transaction, seen.expected_tat
        ):
            return seen
        seen = await look(store, rule, key, rate, burst, now, transaction)
    return Look(False, rate.interval, seen.new_tat, seen.expected_tat)
