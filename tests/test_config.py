"""Loading the configuration: the documented keys, defaults and errors."""

from pathlib import Path

import pytest

from greygeo.config import ConfigError, Endpoint, load_config
from greygeo.rules.rule import Action, LimitKey

ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str):
    path = tmp_path / "greygeo.toml"
    path.write_text(text)
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_the_issue_example_loads_exactly(tmp_path):
    config = load(
        tmp_path,
        """
[proxy]
listen = ["127.0.0.1:2525", "[::1]:2525"]
hostname = "mx.example.jp"
max_message_size = "25M"
max_recipients = 100
[backend]
address = "127.0.0.1:10025"
client_identity = "xclient"
[geoip]
database = "/var/lib/GeoIP/GeoLite2-Country.mmdb"
[store]
path = "/var/lib/greygeo/greygeo.sqlite3"
[replies]
tempfail = "421 4.7.0 Please Try Again Later."
[[rules]]
name = "LIMIT_TO_DOMAIN"
action = "limit"
key = "recipient_domain"
rate = "1/m"
""",
    )
    assert config.proxy.listen == (Endpoint("127.0.0.1", 2525), Endpoint("::1", 2525))
    assert config.proxy.max_message_size == 25 * 2**20
    assert config.backend.endpoint == Endpoint("127.0.0.1", 10025)
    (rule,) = config.policy.rules
    assert rule.action is Action.LIMIT
    assert rule.limit is not None and rule.limit.key is LimitKey.RECIPIENT_DOMAIN
    assert rule.limit.rate.period == 60 and rule.limit.burst == 0


def test_an_empty_file_gets_every_default(tmp_path):
    config = load(tmp_path, "")
    assert config.proxy.listen == (Endpoint("127.0.0.1", 2525),)
    assert config.proxy.timeout == 300
    assert config.backend.client_identity == "xclient"
    assert config.geoip.database is None
    assert str(config.policy.tempfail) == "421 4.7.0 Please Try Again Later."
    assert str(config.policy.reject) == "550 5.7.1 Message refused"
    assert config.policy.rules == ()


def test_shipped_configs_load():
    for name in ("quickstart.toml", "postfix/greygeo.toml"):
        load_config(ROOT / "contrib" / name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[proxy]\nlistn = []", "proxy.listn: unknown key"),
        ("[proxi]\n", "proxi: unknown key"),
        ('[proxy]\nlisten = ["localhost"]', "proxy.listen: not host:port"),
        ('[proxy]\nlisten = ["::1:25"]', "write an IPv6 address as [addr]:port"),
        ('[proxy]\nmax_message_size = "big"', "proxy.max_message_size: not a size"),
        ("[proxy]\nmax_recipients = 0", "proxy.max_recipients: must be a whole number"),
        ('[proxy]\ntls_cert = "c.pem"', "tls_cert and tls_key go together"),
        ('[backend]\nclient_identity = "magic"', "must be one of xclient, proxy-v1"),
        ('[backend]\naddress = "maildir:"', "maildir: needs a path"),
        ('[backend]\nsource_address = "nope"', "backend.source_address"),
        (
            '[replies]\ntempfail = "550 5.7.1 No"',
            "replies.tempfail: reply code must be 4xx",
        ),
        ('[replies]\ntempfail = "421 5.7.0 Mixed"', "enhanced status class differs"),
        ('[[rules]]\naction = "accept"', "rules[0].name: every rule needs a name"),
        ('[[rules]]\nname = "A"\naction = "allow"', "rules.A.action: must be one of"),
        (
            '[[rules]]\nname = "A"\naction = "accept"\ncountry = ["Japan"]',
            "rules.A.country: not an ISO country code: 'JAPAN'",
        ),
        (
            '[[rules]]\nname = "A"\naction = "accept"\nhelo = "("',
            "rules.A.helo: bad regular expression",
        ),
        (
            '[[rules]]\nname = "A"\naction = "accept"\nclient = ["10.0.0.300"]',
            "rules.A.client: not an IP address or network: '10.0.0.300'",
        ),
        (
            '[[rules]]\nname = "A"\naction = "limit"\nkey = "recipient_domain"',
            "rules.A.key: a limit rule needs key and rate",
        ),
        (
            '[[rules]]\nname = "A"\naction = "limit"\nkey = "country"\nrate = "1/m"',
            "rules.A.key: must be one of",
        ),
        (
            '[[rules]]\nname = "A"\naction = "limit"\nkey = "helo"\nrate = "1/2y"',
            "rules.A.rate: not a rate",
        ),
        (
            '[[rules]]\nname = "A"\naction = "accept"\nrate = "1/m"',
            "rules.A.rate: unknown key",
        ),
        (
            '[[rules]]\nname = "A"\naction = "accept"\nreply = "421 4.7.0 x"',
            "rules.A.reply: an accept rule sends no reply",
        ),
        (
            '[[rules]]\nname = "A"\naction = "accept"\n[[rules]]\nname = "A"\n'
            'action = "accept"',
            "rules[1].name: duplicate 'A'",
        ),
        ("[proxy\n", "not valid TOML"),
        ('[[rules]]\nname = "A"', "rules.A.action: every rule needs one of accept"),
        (
            '[[rules]]\nname = "A"\naction = "limit"\nkey = "helo"\nrate = "1/'
            + "9" * 300
            + 'd"',
            "rules.A.rate: rate out of range",
        ),
        ("[proxy]\ntimeout = 0", "proxy.timeout: must be longer than 0s"),
        ('[proxy]\ntimeout = "0s"', "proxy.timeout: must be longer than 0s"),
        ("[proxy]\ntimeout = nan", "proxy.timeout: duration out of range"),
        ('[proxy]\nhostname = "mx.test\\r\\n554 x"', "proxy.hostname: not a host name"),
        ("[proxy]\nmax_message_size = 0", "max_message_size: must be larger than 0"),
        ('[backend]\ntimeout = "0s"', "backend.timeout: must be longer than 0s"),
        (
            '[greylist]\nreply = "550 5.7.1 No"',
            "greylist.reply: reply code must be 4xx",
        ),
        (
            '[greylist]\ndelay = "3d"',
            "greylist.retry_window: must be longer than delay",
        ),
        (
            "[greylist]\nipv4_prefix = 33",
            "greylist.ipv4_prefix: must be a prefix length",
        ),
        (
            '[store]\non_error = "ignore"',
            "store.on_error: must be one of tempfail, accept",
        ),
    ],
)
def test_bad_values_name_the_file_and_the_key(tmp_path, text, message):
    error = error_of(tmp_path, text)
    assert error.startswith(str(tmp_path / "greygeo.toml") + ": ")
    assert message in error


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "absent.toml")


def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
