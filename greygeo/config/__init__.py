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
from pathlib import Path
from typing import Any

from greygeo.config.schedule import local_zone, read_schedule
from greygeo.config.table import (
    ConfigError,
    Table,
    boolean,
    ip_text,
    non_negative_int,
    one_of,
    positive_int,
    prefix,
    reject_reply,
    string,
    strings,
    tempfail_reply,
)
from greygeo.rules import conditions
from greygeo.rules.engine import Policy
from greygeo.rules.greylist import GreylistSettings
from greygeo.rules.reply import parse_reply
from greygeo.rules.rule import Action, Limit, LimitKey, Rule
from greygeo.rules.schedule import Schedule
from greygeo.units import parse_duration, parse_rate, parse_size

__all__ = [
    "CLIENT_IDENTITIES",
    "DEFAULT_REJECT",
    "DEFAULT_TEMPFAIL",
    "AuthHttpConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "Endpoint",
    "GeoipConfig",
    "PolicyServiceConfig",
    "ProxyConfig",
    "StoreConfig",
    "load_config",
    "parse_endpoint",
]


_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

DEFAULT_TEMPFAIL = "421 4.7.0 Please Try Again Later."
DEFAULT_REJECT = "550 5.7.1 Message refused"


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
class PolicyServiceConfig:
    """``[policy]``: the Postfix policy delegation listeners (none by default)."""

    listen: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthHttpConfig:
    """``[auth_http]``: the nginx mail auth_http listeners (none by default)."""

    listen: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class Config:
    source: Path
    proxy: ProxyConfig
    backend: BackendConfig
    geoip: GeoipConfig
    store: StoreConfig
    policy: Policy
    schedule: Schedule = field(default_factory=lambda: Schedule(local_zone()))
    policy_service: PolicyServiceConfig = field(default_factory=PolicyServiceConfig)
    auth_http: AuthHttpConfig = field(default_factory=AuthHttpConfig)


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

    root = Table(data, "", source)
    proxy = _proxy(root.table("proxy"))
    backend = _backend(root.table("backend"))
    geoip = _geoip(root.table("geoip"))
    store = _store(root.table("store"))
    policy = _policy(root, source)
    schedule = read_schedule(root.table("schedule"), policy)
    policy_service = _policy_service(root.table("policy"))
    auth_http = _auth_http(root.table("auth_http"), backend)
    root.finish()
    return Config(
        source,
        proxy,
        backend,
        geoip,
        store,
        policy,
        schedule,
        policy_service,
        auth_http,
    )


def _auth_http(table: Table, backend: BackendConfig) -> AuthHttpConfig:
    none: tuple[Endpoint, ...] = ()
    listen = table.take(
        "listen", none, lambda v: tuple(map(parse_endpoint, strings(v)))
    )
    table.finish()
    if listen and backend.maildir is not None:
        raise table.error("listen", "auth_http needs an SMTP [backend] address")
    return AuthHttpConfig(listen)


def _policy_service(table: Table) -> PolicyServiceConfig:
    def listener(value: str) -> str:
        if value.startswith("unix:"):
            if not value.removeprefix("unix:"):
                raise ValueError("unix: needs a socket path")
            return value
        parse_endpoint(value)
        return value

    none: tuple[str, ...] = ()
    listen = table.take("listen", none, lambda v: tuple(map(listener, strings(v))))
    table.finish()
    return PolicyServiceConfig(listen)


def _proxy(table: Table) -> ProxyConfig:
    base = ProxyConfig()
    listen = table.take(
        "listen", base.listen, lambda v: tuple(map(parse_endpoint, strings(v)))
    )
    if not listen:
        raise table.error("listen", "needs at least one address")
    proxy = ProxyConfig(
        listen=listen,
        hostname=table.take("hostname", base.hostname, string),
        max_message_size=table.take(
            "max_message_size", base.max_message_size, parse_size
        ),
        max_recipients=table.take("max_recipients", base.max_recipients, positive_int),
        max_errors=table.take("max_errors", base.max_errors, positive_int),
        timeout=table.take("timeout", base.timeout, parse_duration),
        tls_cert=table.take("tls_cert", None, lambda v: Path(string(v))),
        tls_key=table.take("tls_key", None, lambda v: Path(string(v))),
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


def _backend(table: Table) -> BackendConfig:
    base = BackendConfig()

    def address(value: Any) -> str:
        text = string(value)
        if text.startswith("maildir:"):
            if not text.removeprefix("maildir:"):
                raise ValueError("maildir: needs a path, as in maildir:./mail")
        else:
            parse_endpoint(text)
        return text

    backend = BackendConfig(
        address=table.take("address", base.address, address),
        client_identity=table.take(
            "client_identity", base.client_identity, one_of(*CLIENT_IDENTITIES)
        ),
        source_address=table.take("source_address", "", ip_text),
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


def _geoip(table: Table) -> GeoipConfig:
    geoip = GeoipConfig(
        database=table.take("database", None, lambda v: Path(string(v)))
    )
    table.finish()
    return geoip


def _store(table: Table) -> StoreConfig:
    store = StoreConfig(
        path=table.take("path", StoreConfig.path, lambda v: Path(string(v))),
        on_error=table.take("on_error", "tempfail", one_of("tempfail", "accept")),
        lock_timeout=table.take("lock_timeout", 2.0, parse_duration),
    )
    table.finish()
    return store


def _greylist(table: Table) -> GreylistSettings:
    base = GreylistSettings()
    settings = GreylistSettings(
        delay=table.take("delay", base.delay, parse_duration),
        retry_window=table.take("retry_window", base.retry_window, parse_duration),
        max_age=table.take("max_age", base.max_age, parse_duration),
        auto_allow_after=table.take(
            "auto_allow_after", base.auto_allow_after, non_negative_int
        ),
        ipv4_prefix=table.take("ipv4_prefix", base.ipv4_prefix, prefix(32)),
        ipv6_prefix=table.take("ipv6_prefix", base.ipv6_prefix, prefix(128)),
        reply=table.take("reply", base.reply, string),
        header=table.take("header", base.header, boolean),
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


def _policy(root: Table, source: Path) -> Policy:
    replies = root.table("replies")
    tempfail = replies.take("tempfail", parse_reply(DEFAULT_TEMPFAIL), tempfail_reply)
    reject = replies.take("reject", parse_reply(DEFAULT_REJECT), reject_reply)
    replies.finish()
    greylist = _greylist(root.table("greylist"))

    raw_rules = root.data.pop("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: rules: write each rule as a [[rules]] table")
    rules = tuple(
        _rule(Table(raw, f"rules[{index}]", source))
        for index, raw in enumerate(raw_rules)
    )

    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{source}: rules[{index}].name: duplicate {rule.name!r}")
        seen.add(rule.name)
    return Policy(rules, tempfail, reject, greylist)


_CONDITIONS: dict[str, Callable[[Any], conditions.Condition]] = {
    "country": lambda v: conditions.country_in(strings(v)),
    "client": lambda v: conditions.client_in(strings(v)),
    "helo": lambda v: conditions.matches("helo", string(v)),
    "sender": lambda v: conditions.matches("sender", string(v)),
    "recipient": lambda v: conditions.matches("recipient", string(v)),
    "sender_domain": lambda v: conditions.domain_in("sender_domain", strings(v)),
    "recipient_domain": lambda v: conditions.domain_in("recipient_domain", strings(v)),
}


def _rule(table: Table) -> Rule:
    name = table.take("name", "", string)
    if not name:
        raise table.error("name", "every rule needs a name")
    table.where = f"rules.{name}"
    if "action" not in table.data:
        raise table.error("action", f"every rule needs one of {', '.join(Action)}")
    action = Action(table.take("action", "", one_of(*Action)))

    found = [table.take(key, None, convert) for key, convert in _CONDITIONS.items()]
    rule_conditions = tuple(c for c in found if c is not None)

    reply_parser = reject_reply if action is Action.REJECT else tempfail_reply
    reply = table.take("reply", None, reply_parser)
    if reply is not None and action is Action.ACCEPT:
        raise table.error("reply", "an accept rule sends no reply")

    limit = None
    if action is Action.LIMIT:
        limit = _limit(table)
    enabled = table.take("enabled", True, boolean)
    table.finish()
    return Rule(name, action, rule_conditions, reply, limit, enabled)


def _limit(table: Table) -> Limit:
    if "key" not in table.data or "rate" not in table.data:
        raise table.error("key", "a limit rule needs key and rate")
    key = LimitKey(table.take("key", "", one_of(*LimitKey)))
    rate = table.take("rate", None, parse_rate)
    assert rate is not None
    burst = table.take("burst", 0, non_negative_int)
    return Limit(key, rate, burst)
