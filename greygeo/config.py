"""The configuration file: TOML read into frozen dataclasses.

All defaults live here, in the dataclasses. Every key is checked when the
file is loaded; an unknown key, a wrong type or a bad value is a
``ConfigError`` whose message names the file, the key and the value, so a
broken file never starts a daemon that fails later.
"""

import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal

from greygeo.rules import conditions
from greygeo.rules.engine import Policy
from greygeo.rules.greylist import GreylistSettings
from greygeo.rules.reply import Reply, parse_reply
from greygeo.rules.rule import Action, Limit, LimitKey, Rule
from greygeo.rules.schedule import (
    Period,
    RuleOverride,
    Schedule,
    parse_days,
    parse_hours,
)
from greygeo.units import parse_duration, parse_rate, parse_size

T = TypeVar("T")

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

DEFAULT_TEMPFAIL = "421 4.7.0 Please Try Again Later."
DEFAULT_REJECT = "550 5.7.1 Message refused"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    listen: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 2525),)
    hostname: str = field(default_factory=socket.getfqdn)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 20
    timeout: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class BackendConfig:
    address: str = "127.0.0.1:10025"
    client_identity: str = "xclient"
    source_address: str = ""
    connect_timeout: float = 10.0
    timeout: float = 120.0

    @property
    def maildir(self) -> Path | None:
        """The Maildir path for ``maildir:PATH``, else None."""
        if self.address.startswith("maildir:"):
            return Path(self.address.removeprefix("maildir:"))
        return None

    @property
    def endpoint(self) -> Endpoint:
        return parse_endpoint(self.address)


@dataclass(frozen=True)
class GeoipConfig:
    database: Path | None = None


@dataclass(frozen=True)
class StoreConfig:
    path: Path = Path("/var/lib/greygeo/greygeo.sqlite3")
    on_error: str = "tempfail"
    lock_timeout: float = 2.0


@dataclass(frozen=True)
class Config:
    source: Path
    proxy: ProxyConfig
    backend: BackendConfig
    geoip: GeoipConfig
    store: StoreConfig
    policy: Policy
    schedule: Schedule = field(default_factory=lambda: Schedule(_local_zone()))


CLIENT_IDENTITIES = ("xclient", "proxy-v1", "proxy-v2", "none")


def parse_endpoint(text: str) -> Endpoint:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port or [v6]:port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address as [addr]:port: {text!r}")
    return Endpoint(host, int(port))


class _Table:
    """One TOML table being read: takes known keys, complains about the rest."""

    def __init__(self, data: Any, where: str, source: Path) -> None:
        self.where = where
        self.source = source
        if not isinstance(data, dict):
            raise self.error("", f"must be a table, not {data!r}")
        self.data = dict(data)

    def error(self, key: str, message: str) -> ConfigError:
        name = f"{self.where}.{key}" if self.where and key else self.where or key
        return ConfigError(f"{self.source}: {name}: {message}")

    def take(self, key: str, default: T, convert: Callable[[Any], T]) -> T:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        try:
            return convert(value)
        except (ValueError, TypeError, OverflowError) as error:
            raise self.error(key, str(error)) from error

    def table(self, key: str) -> "_Table":
        where = f"{self.where}.{key}" if self.where else key
        return _Table(self.data.pop(key, {}), where, self.source)

    def finish(self) -> None:
        for key in self.data:
            raise self.error(key, "unknown key")


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"must be a list of strings, not {value!r}")
    return tuple(value)


def _positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"must be a whole number of at least 1, not {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {value!r}")
    return value


def _ip_text(value: Any) -> str:
    return str(ip_address(_string(value)))


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return convert


def load_config(path: str | Path) -> Config:
    """Read and check the whole file; raise ConfigError on the first problem."""
    source = Path(path)
    try:
        with source.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error

    root = _Table(data, "", source)
    proxy = _proxy(root.table("proxy"))
    backend = _backend(root.table("backend"))
    geoip = _geoip(root.table("geoip"))
    store = _store(root.table("store"))
    policy = _policy(root, source)
    schedule = _schedule(root.table("schedule"), policy)
    root.finish()
    return Config(source, proxy, backend, geoip, store, policy, schedule)


def _proxy(table: _Table) -> ProxyConfig:
    base = ProxyConfig()
    listen = table.take(
        "listen", base.listen, lambda v: tuple(map(parse_endpoint, _strings(v)))
    )
    if not listen:
        raise table.error("listen", "needs at least one address")
    proxy = ProxyConfig(
        listen=listen,
        hostname=table.take("hostname", base.hostname, _string),
        max_message_size=table.take(
            "max_message_size", base.max_message_size, parse_size
        ),
        max_recipients=table.take("max_recipients", base.max_recipients, _positive_int),
        max_errors=table.take("max_errors", base.max_errors, _positive_int),
        timeout=table.take("timeout", base.timeout, parse_duration),
        tls_cert=table.take("tls_cert", None, lambda v: Path(_string(v))),
        tls_key=table.take("tls_key", None, lambda v: Path(_string(v))),
    )
    if not _HOSTNAME.match(proxy.hostname):
        raise table.error("hostname", f"not a host name: {proxy.hostname!r}")
    if proxy.timeout <= 0:
        raise table.error("timeout", "must be longer than 0s")
    if proxy.max_message_size <= 0:
        raise table.error("max_message_size", "must be larger than 0")
    if (proxy.tls_cert is None) != (proxy.tls_key is None):
        raise table.error("tls_cert", "tls_cert and tls_key go together")
    table.finish()
    return proxy


def _backend(table: _Table) -> BackendConfig:
    base = BackendConfig()

    def address(value: Any) -> str:
        text = _string(value)
        if text.startswith("maildir:"):
            if not text.removeprefix("maildir:"):
                raise ValueError("maildir: needs a path, as in maildir:./mail")
        else:
            parse_endpoint(text)
        return text

    backend = BackendConfig(
        address=table.take("address", base.address, address),
        client_identity=table.take(
            "client_identity", base.client_identity, _one_of(*CLIENT_IDENTITIES)
        ),
        source_address=table.take("source_address", "", _ip_text),
        connect_timeout=table.take(
            "connect_timeout", base.connect_timeout, parse_duration
        ),
        timeout=table.take("timeout", base.timeout, parse_duration),
    )
    for key in ("connect_timeout", "timeout"):
        if getattr(backend, key) <= 0:
            raise table.error(key, "must be longer than 0s")
    table.finish()
    return backend


def _geoip(table: _Table) -> GeoipConfig:
    geoip = GeoipConfig(
        database=table.take("database", None, lambda v: Path(_string(v)))
    )
    table.finish()
    return geoip


def _store(table: _Table) -> StoreConfig:
    store = StoreConfig(
        path=table.take("path", StoreConfig.path, lambda v: Path(_string(v))),
        on_error=table.take("on_error", "tempfail", _one_of("tempfail", "accept")),
        lock_timeout=table.take("lock_timeout", 2.0, parse_duration),
    )
    table.finish()
    return store


def _greylist(table: _Table) -> GreylistSettings:
    base = GreylistSettings()
    settings = GreylistSettings(
        delay=table.take("delay", base.delay, parse_duration),
        retry_window=table.take("retry_window", base.retry_window, parse_duration),
        max_age=table.take("max_age", base.max_age, parse_duration),
        auto_allow_after=table.take(
            "auto_allow_after", base.auto_allow_after, _non_negative_int
        ),
        ipv4_prefix=table.take("ipv4_prefix", base.ipv4_prefix, _prefix(32)),
        ipv6_prefix=table.take("ipv6_prefix", base.ipv6_prefix, _prefix(128)),
        reply=table.take("reply", base.reply, _string),
        header=table.take("header", base.header, _bool),
        purge_every=table.take("purge_every", base.purge_every, parse_duration),
    )
    try:
        settings.reply_for(1)
    except ValueError as error:
        raise table.error("reply", str(error)) from error
    if settings.retry_window <= settings.delay:
        raise table.error("retry_window", "must be longer than delay")
    if settings.purge_every <= 0:
        raise table.error("purge_every", "must be longer than 0s")
    table.finish()
    return settings


def _prefix(most: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= most
        ):
            raise ValueError(f"must be a prefix length from 0 to {most}, not {value!r}")
        return value

    return convert


def _policy(root: _Table, source: Path) -> Policy:
    replies = root.table("replies")
    tempfail = replies.take("tempfail", parse_reply(DEFAULT_TEMPFAIL), _tempfail_reply)
    reject = replies.take("reject", parse_reply(DEFAULT_REJECT), _reject_reply)
    replies.finish()
    greylist = _greylist(root.table("greylist"))

    raw_rules = root.data.pop("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: rules: write each rule as a [[rules]] table")
    rules = tuple(
        _rule(_Table(raw, f"rules[{index}]", source))
        for index, raw in enumerate(raw_rules)
    )

    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{source}: rules[{index}].name: duplicate {rule.name!r}")
        seen.add(rule.name)
    return Policy(rules, tempfail, reject, greylist)


def _tempfail_reply(value: Any) -> Reply:
    return parse_reply(_string(value), allowed_classes="4")


def _reject_reply(value: Any) -> Reply:
    return parse_reply(_string(value), allowed_classes="5")


_CONDITIONS: dict[str, Callable[[Any], conditions.Condition]] = {
    "country": lambda v: conditions.country_in(_strings(v)),
    "client": lambda v: conditions.client_in(_strings(v)),
    "helo": lambda v: conditions.matches("helo", _string(v)),
    "sender": lambda v: conditions.matches("sender", _string(v)),
    "recipient": lambda v: conditions.matches("recipient", _string(v)),
    "sender_domain": lambda v: conditions.domain_in("sender_domain", _strings(v)),
    "recipient_domain": lambda v: conditions.domain_in("recipient_domain", _strings(v)),
}


def _rule(table: _Table) -> Rule:
    name = table.take("name", "", _string)
    if not name:
        raise table.error("name", "every rule needs a name")
    table.where = f"rules.{name}"
    if "action" not in table.data:
        raise table.error("action", f"every rule needs one of {', '.join(Action)}")
    action = Action(table.take("action", "", _one_of(*Action)))

    found = [table.take(key, None, convert) for key, convert in _CONDITIONS.items()]
    rule_conditions = tuple(c for c in found if c is not None)

    reply_parser = _reject_reply if action is Action.REJECT else _tempfail_reply
    reply = table.take("reply", None, reply_parser)
    if reply is not None and action is Action.ACCEPT:
        raise table.error("reply", "an accept rule sends no reply")

    limit = None
    if action is Action.LIMIT:
        limit = _limit(table)
    enabled = table.take("enabled", True, _bool)
    table.finish()
    return Rule(name, action, rule_conditions, reply, limit, enabled)


def _limit(table: _Table) -> Limit:
    if "key" not in table.data or "rate" not in table.data:
        raise table.error("key", "a limit rule needs key and rate")
    key = LimitKey(table.take("key", "", _one_of(*LimitKey)))
    rate = table.take("rate", None, parse_rate)
    assert rate is not None
    burst = table.take("burst", 0, _non_negative_int)
    return Limit(key, rate, burst)


def _non_negative_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"must be a whole number of at least 0, not {value!r}")
    return value


def _local_zone() -> ZoneInfo:
    """The system's zone, or UTC when it has no IANA name."""
    try:
        return ZoneInfo(str(tzlocal.get_localzone()))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _zone(value: Any) -> ZoneInfo:
    name = _string(value)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"not an IANA time zone: {name!r}") from error


def _schedule(table: _Table, policy: Policy) -> Schedule:
    zone = table.take("timezone", None, _zone) or _local_zone()
    raw_periods = table.data.pop("periods", [])
    if not isinstance(raw_periods, list):
        raise table.error(
            "periods", "write each period as a [[schedule.periods]] table"
        )
    periods = [
        _period(_Table(raw, f"schedule.periods[{index}]", table.source), policy)
        for index, raw in enumerate(raw_periods)
    ]
    names = [period.name for period in periods]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise table.error(f"periods[{index}].name", f"duplicate {name!r}")
    table.finish()
    return Schedule(zone, tuple(periods))


def _period(table: _Table, policy: Policy) -> Period:
    name = table.take("name", "", _string)
    if not name:
        raise table.error("name", "every period needs a name")
    table.where = f"schedule.periods.{name}"
    if "hours" not in table.data:
        raise table.error("hours", "every period needs hours, like 22:00-07:00")
    start, end = table.take(
        "hours", (time(0), time(0)), lambda v: parse_hours(_string(v))
    )
    days = table.take("days", frozenset(range(7)), lambda v: parse_days(_string(v)))

    rules_table = table.table("rules")
    by_name = {rule.name: rule for rule in policy.rules}
    overrides = {}
    for rule_name in list(rules_table.data):
        if rule_name not in by_name:
            raise rules_table.error(rule_name, f"no rule named {rule_name!r}")
        overrides[rule_name] = _rule_override(
            rules_table.table(rule_name), by_name[rule_name]
        )
    rules_table.finish()

    greylist_table = table.table("greylist")
    delay = greylist_table.take("delay", None, parse_duration)
    greylist_table.finish()
    if delay is not None and delay >= policy.greylist.retry_window:
        raise greylist_table.error(
            "delay", "must be shorter than [greylist] retry_window"
        )
    table.finish()
    return Period(name, start, end, days, overrides, delay)


def _rule_override(table: _Table, rule: Rule) -> RuleOverride:
    is_limit = rule.action is Action.LIMIT
    for key in ("rate", "burst"):
        if key in table.data and not is_limit:
            raise table.error(key, f"rule {rule.name} is not a limit rule")
    if "reply" in table.data and rule.action is Action.ACCEPT:
        raise table.error("reply", "an accept rule sends no reply")
    reply_parser = _reject_reply if rule.action is Action.REJECT else _tempfail_reply
    override = RuleOverride(
        rate=table.take("rate", None, parse_rate),
        burst=table.take("burst", None, _non_negative_int),
        reply=table.take("reply", None, reply_parser),
        enabled=table.take("enabled", None, _bool),
    )
    table.finish()
    return override
