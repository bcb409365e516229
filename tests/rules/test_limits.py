"""Rate limits: nginx limit_req with nodelay, as transcripts over a clock.

The state is a real SQLite store in memory; the clock is the ``now`` each
step passes.
"""

import pytest

from greygeo.lookups.store import Store
from greygeo.rules import limits
from greygeo.rules.limits import gcra
from greygeo.units import parse_rate

ONE_PER_MINUTE = parse_rate("1/m")


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "limits.sqlite3")
    yield store
    await store.close()


async def hit(store, at, transaction, rate=ONE_PER_MINUTE, burst=0, key="example.com"):
    """Look, and take when allowed, as an accepted recipient does."""
    seen = await limits.look(store, "LIMIT", key, rate, burst, at, transaction)
    if seen.allowed:
        seen = await limits.take(
            store, "LIMIT", key, rate, burst, at, transaction, seen
        )
    return seen.allowed


async def run(store, steps, **kwargs):
    """Steps of (seconds since start, transaction, expected allowed)."""
    for at, transaction, expected in steps:
        assert await hit(store, at, transaction, **kwargs) is expected, (
            at,
            transaction,
        )


async def test_one_per_minute_without_burst(store):
    await run(
        store,
        [
            (0, "t1", True),  # first transaction passes
            (1, "t2", False),  # any other within 60 s is refused
            (59, "t3", False),
            (60, "t4", True),  # refusals did not push the allowance away
            (61, "t5", False),
            (200, "t6", True),
        ],
    )


async def test_recipients_of_one_transaction_count_once(store):
    await run(store, [(0, "t1", True), (1, "t1", True), (2, "t2", False)])


async def test_burst_allows_that_many_more_at_once(store):
    await run(
        store,
        [
            (0, "t1", True),
            (0, "t2", True),
            (0, "t3", True),
            (0, "t4", False),
            (60, "t5", True),
            (61, "t6", False),
        ],
        burst=2,
    )


async def test_rate_of_several_per_period_spaces_them_evenly(store):
    await run(
        store,
        [
            (0, "t1", True),
            (10, "t2", False),
            (15, "t3", True),
            (29, "t4", False),
        ],
        rate=parse_rate("4/m"),
    )


async def test_looking_uses_up_nothing(store):
    for _ in range(3):
        seen = await limits.look(store, "L", "k", ONE_PER_MINUTE, 0, 0, "t")
        assert seen.allowed
    assert await store.read_limit("L", "k") is None


async def test_refusal_says_when_the_key_passes_again():
    seen = gcra((60.0, "t1"), 15, ONE_PER_MINUTE, 0, "t2")
    assert not seen.allowed
    assert seen.retry_after == 45


async def test_two_sessions_racing_for_the_last_allowance_get_it_once(store):
    """Both looked before either took: only one may have it."""
    first = await limits.look(store, "L", "k", ONE_PER_MINUTE, 0, 0, "t1")
    second = await limits.look(store, "L", "k", ONE_PER_MINUTE, 0, 0, "t2")
    taken = [
        await limits.take(store, "L", "k", ONE_PER_MINUTE, 0, 0, "t1", first),
        await limits.take(store, "L", "k", ONE_PER_MINUTE, 0, 0, "t2", second),
    ]
    assert [look.allowed for look in taken] == [True, False]


async def test_state_survives_reopening_the_store(tmp_path):
    """A restart hands out no fresh allowance."""
    path = tmp_path / "state.sqlite3"
    store = await Store.open(path)
    assert await hit(store, 0, "t1")
    await store.close()
    store = await Store.open(path)
    assert not await hit(store, 30, "t2")
    await store.close()


async def test_keys_and_rules_are_counted_apart(store):
    assert await hit(store, 0, "t1", key="x.test")
    assert await hit(store, 0, "t2", key="y.test")
    seen = await limits.look(store, "OTHER", "x.test", ONE_PER_MINUTE, 0, 0, "t3")
    assert seen.allowed
