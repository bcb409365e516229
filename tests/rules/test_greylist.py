"""Greylisting: the life cycle as transcripts over an injected clock, and the
normalised keys.

The state is a real SQLite store; nothing sleeps: every step says when it
happens, in seconds after the first attempt.
"""

import asyncio
from ipaddress import ip_address

import pytest

from greygeo.lookups.store import Store
from greygeo.rules import greylist
from greygeo.rules.facts import Facts
from greygeo.rules.greylist import GreylistSettings, Outcome, client_net, normal_sender

SETTINGS = GreylistSettings()  # postgrey's defaults: 300 s, 2 d, 35 d, 5
DAY = 86400


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "greylist.sqlite3")
    yield store
    await store.close()


def attempt(
    client="192.0.2.10", sender="alice@sender.test", recipient="bob@example.com"
):
    return Facts(ip_address(client), "US", "mx.sender.test", sender, recipient)


async def transcript(store, steps, settings=SETTINGS):
    """Steps of (seconds, facts, expected outcome, expected wait or None)."""
    for at, facts, outcome, wait in steps:
        result = await greylist.check(store, facts, at, settings)
        assert result.outcome is outcome, (at, result)
        if wait is not None:
            assert result.wait == pytest.approx(wait), (at, result)


async def test_life_cycle_of_one_triplet(store):
    mail = attempt()
    await transcript(
        store,
        [
            (0, mail, Outcome.NEW, 300),  # first sight: deferred
            (120, mail, Outcome.EARLY, 180),  # early retry: first sight kept
            (299, mail, Outcome.EARLY, 1),
            (300, mail, Outcome.PASSED, 0),  # after the delay: passes
            (400, mail, Outcome.KNOWN, 0),  # known triplet: at once
            (30 * DAY, mail, Outcome.KNOWN, 0),
        ],
    )


async def test_first_pass_reports_how_long_it_was_held(store):
    await greylist.check(store, attempt(), 0, SETTINGS)
    result = await greylist.check(store, attempt(), 912, SETTINGS)
    assert result.delayed == 912
    assert (await greylist.check(store, attempt(), 1000, SETTINGS)).delayed is None


async def test_retry_after_the_window_starts_over(store):
    mail = attempt()
    await transcript(
        store,
        [
            (0, mail, Outcome.NEW, 300),
            (2 * DAY + 1, mail, Outcome.RESTARTED, 300),
            (2 * DAY + 301, mail, Outcome.PASSED, 0),
        ],
    )


async def test_passed_triplet_unused_for_max_age_is_forgotten(store):
    mail = attempt()
    await transcript(
        store,
        [
            (0, mail, Outcome.NEW, None),
            (300, mail, Outcome.PASSED, None),
            (300 + 35 * DAY + 1, mail, Outcome.NEW, 300),
        ],
    )


async def test_client_is_auto_allowed_after_five_passes_an_hour_apart(store):
    """Each pass counts at most once an hour; after five, new triplets of the
    client's network pass at once."""
    hour = 3600
    for n in range(5):
        mail = attempt(recipient=f"user{n}@example.com")
        start = n * 2 * hour
        await transcript(
            store,
            [
                (start, mail, Outcome.NEW, None),
                (start + 300, mail, Outcome.PASSED, None),
            ],
        )
    neighbour = attempt(client="192.0.2.77", recipient="someone@example.com")
    await transcript(store, [(10 * hour, neighbour, Outcome.AUTO_ALLOWED, 0)])


async def test_a_burst_of_passes_counts_once(store):
    for n in range(6):
        mail = attempt(recipient=f"user{n}@example.com")
        await greylist.check(store, mail, n, SETTINGS)
        await greylist.check(store, mail, 400 + n, SETTINGS)
    fresh = attempt(recipient="fresh@example.com")
    await transcript(store, [(500, fresh, Outcome.NEW, 300)])


async def test_auto_allow_off_with_zero(store):
    settings = GreylistSettings(auto_allow_after=0)
    for n in range(3):
        mail = attempt(recipient=f"user{n}@example.com")
        await greylist.check(store, mail, n * 7200, settings)
        await greylist.check(store, mail, n * 7200 + 300, settings)
    await transcript(
        store,
        [(30000, attempt(recipient="x@example.com"), Outcome.NEW, None)],
        settings,
    )


async def test_looking_changes_nothing(store):
    for _ in range(3):
        result = await greylist.check(store, attempt(), 0, SETTINGS, commit=False)
        assert result.outcome is Outcome.NEW
    assert await store.read_greylist(greylist.triplet_of(attempt(), SETTINGS)) == (
        None,
        None,
    )


async def test_concurrent_passes_of_one_triplet_are_recorded_once(store):
    """Many sessions retrying the same triplet at once: every one passes, the
    row is written by one, and the client's pass counts once."""
    await greylist.check(store, attempt(), 0, SETTINGS)
    results = await asyncio.gather(
        *(greylist.check(store, attempt(), 300, SETTINGS) for _ in range(20))
    )
    assert all(result.passes for result in results)
    assert sum(result.outcome is Outcome.PASSED for result in results) >= 1
    row, client = await store.read_greylist(greylist.triplet_of(attempt(), SETTINGS))
    assert row is not None and row.passed_at == 300
    assert client is not None and client.passes == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("192.0.2.1", "192.0.2.254"),
        ("::ffff:192.0.2.1", "192.0.2.9"),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"),
    ],
)
def test_neighbours_in_one_network_share_a_key(first, second):
    assert client_net(first, SETTINGS) == client_net(second, SETTINGS)


def test_networks_apart_do_not_share_a_key():
    assert client_net("192.0.2.1", SETTINGS) == "192.0.2.0/24"
    assert client_net("192.0.3.1", SETTINGS) != client_net("192.0.2.1", SETTINGS)
    assert client_net("2001:db8:1:3::1", SETTINGS) == "2001:db8:1:3::/64"


@pytest.mark.parametrize(
    "variant",
    [
        "alice@sender.test",
        "Alice@Sender.TEST",
        "alice+newsletter@sender.test",
        "prvs=1234abcd=alice@sender.test",
        "btv1==0123456789==alice@sender.test",
        "SRS0=HHH=TT=sender.test=alice@forwarder.test",
        "SRS1=HHH=forwarder.test==HHH=TT=sender.test=alice@relay.test",
        "alice@sender.test.",
    ],
)
def test_rewriting_senders_share_one_key(variant):
    assert normal_sender(variant) == "alice@sender.test"


def test_numeric_verp_parts_share_one_key():
    assert normal_sender("bounce-12345-678@lists.test") == normal_sender(
        "bounce-99-1@lists.test"
    )
    assert normal_sender("user2@lists.test") != normal_sender("user3@lists.test")


def test_null_sender_is_a_key():
    assert normal_sender("") == ""


async def test_a_burst_of_first_tries_of_one_triplet_all_defer(store):
    """Parallel first tries and early retries never contend for the row:
    every one is deferred, none is a store failure."""
    first = await asyncio.gather(
        *(greylist.check(store, attempt(), 0, SETTINGS) for _ in range(20))
    )
    early = await asyncio.gather(
        *(greylist.check(store, attempt(), 100, SETTINGS) for _ in range(20))
    )
    assert {r.outcome for r in first} <= {Outcome.NEW, Outcome.EARLY}
    assert {r.outcome for r in early} == {Outcome.EARLY}
    assert {r.wait for r in early} == {200}
