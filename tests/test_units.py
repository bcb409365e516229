"""Human units in the configuration."""

import pytest

from greygeo.units import Rate, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300s", 300),
        ("5m", 300),
        ("2h", 7200),
        ("35d", 35 * 86400),
        ("1w", 604800),
        ("90", 90),
        (45, 45),
        ("1.5m", 90),
    ],
)
def test_durations_in_human_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("25M", 25 * 2**20), ("512K", 524288), ("1G", 2**30), ("1000", 1000), (10, 10)],
)
def test_sizes_in_human_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1/m", Rate(1, 60)),
        ("20/1h", Rate(20, 3600)),
        ("1/10m", Rate(1, 600)),
        ("5/s", Rate(5, 1)),
        ("100/d", Rate(100, 86400)),
    ],
)
def test_rates(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0/m", "1/0m", "1/y", "one/m", "1m"])
def test_bad_rates_are_refused(text):
    with pytest.raises(ValueError):
        parse_rate(text)


def test_interval_of_a_rate():
    assert parse_rate("1/10m").interval == 600
    assert parse_rate("4/m").interval == 15
