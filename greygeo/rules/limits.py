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
per key keeps the state small and easy to persist.

Several recipients of one transaction count once: a key remembers the last
transaction it admitted, and that transaction passes again for free.

The state lives in memory in this version.
# TODO: move the state into the store, so that a restart does not hand every
# key a fresh allowance and several greygeo processes share one budget.
"""

from dataclasses import dataclass

from greygeo.units import Rate

# Expired entries are swept after this many new keys, which bounds memory
# by the number of keys seen within one period plus this margin.
_SWEEP_EVERY = 10_000


@dataclass(frozen=True)
class LimitResult:
    allowed: bool
    retry_after: float
    """Seconds until the key would pass again; 0 when allowed."""


@dataclass
class _Bucket:
    tat: float
    transaction: str


class RateLimiter:
    """Per-key GCRA state for every ``limit`` rule."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._new_since_sweep = 0

    def hit(
        self,
        rule: str,
        key: str,
        rate: Rate,
        burst: int,
        now: float,
        transaction: str = "",
        *,
        commit: bool = True,
    ) -> LimitResult:
        """Count one transaction for ``key``; with ``commit=False`` only look."""
        bucket = self._buckets.get((rule, key))
        if bucket is not None and transaction and bucket.transaction == transaction:
            return LimitResult(True, 0.0)

        tat = max(bucket.tat if bucket else now, now)
        new_tat = tat + rate.interval
        allowed_until = now + (burst + 1) * rate.interval
        if new_tat > allowed_until + 1e-9:
            return LimitResult(False, new_tat - allowed_until)

        if commit:
            self._store(rule, key, new_tat, transaction, now)
        return LimitResult(True, 0.0)

    def _store(
        self, rule: str, key: str, tat: float, transaction: str, now: float
    ) -> None:
        if (rule, key) not in self._buckets:
            self._new_since_sweep += 1
            if self._new_since_sweep >= _SWEEP_EVERY:
                self._sweep(now)
        self._buckets[(rule, key)] = _Bucket(tat, transaction)

    def _sweep(self, now: float) -> None:
        """Drop keys whose bucket is empty again: they equal absent keys."""
        self._buckets = {k: b for k, b in self._buckets.items() if b.tat > now}
        self._new_since_sweep = 0

    def __len__(self) -> int:
        return len(self._buckets)
