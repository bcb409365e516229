"""Rate limits: nginx limit_req with nodelay, as transcripts over a clock."""

from greygeo.rules.limits import RateLimiter
from greygeo.units import parse_rate

ONE_PER_MINUTE = parse_rate("1/m")


def run(limiter, steps, rate=ONE_PER_MINUTE, burst=0):
    """Steps of (seconds since start, transaction, expected allowed)."""
    for at, transaction, expected in steps:
        result = limiter.hit("LIMIT", "example.com", rate, burst, at, transaction)
        assert result.allowed is expected, (at, transaction)


def test_one_per_minute_without_burst():
    run(
        RateLimiter(),
        [
            (0, "t1", True),  # first transaction passes
            (1, "t2", False),  # any other within 60 s is refused
            (59, "t3", False),
            (60, "t4", True),  # refusals did not push the allowance away
            (61, "t5", False),
            (200, "t6", True),
        ],
    )


def test_recipients_of_one_transaction_count_once():
    run(RateLimiter(), [(0, "t1", True), (1, "t1", True), (2, "t2", False)])


def test_burst_allows_that_many_more_at_once():
    run(
        RateLimiter(),
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


def test_rate_of_several_per_period_spaces_them_evenly():
    run(
        RateLimiter(),
        [
            (0, "t1", True),
            (10, "t2", False),
            (15, "t3", True),
            (29, "t4", False),
        ],
        rate=parse_rate("4/m"),
    )


def test_looking_without_commit_uses_up_nothing():
    limiter = RateLimiter()
    for _ in range(3):
        assert limiter.hit("L", "k", ONE_PER_MINUTE, 0, 0, "t", commit=False).allowed
    assert len(limiter) == 0


def test_refusal_says_when_the_key_passes_again():
    limiter = RateLimiter()
    limiter.hit("L", "k", ONE_PER_MINUTE, 0, 0, "t1")
    assert limiter.hit("L", "k", ONE_PER_MINUTE, 0, 15, "t2").retry_after == 45


def test_keys_and_rules_are_counted_apart():
    limiter = RateLimiter()
    assert limiter.hit("A", "x.test", ONE_PER_MINUTE, 0, 0, "t1").allowed
    assert limiter.hit("A", "y.test", ONE_PER_MINUTE, 0, 0, "t2").allowed
    assert limiter.hit("B", "x.test", ONE_PER_MINUTE, 0, 0, "t3").allowed
