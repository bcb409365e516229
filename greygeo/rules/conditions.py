"""The conditions a rule can test, and how each one matches.

A rule matches when every condition it names holds. Each condition is a
small value object with one method, ``explain``: it returns ``None`` when the
condition holds and a short reason when it does not. That reason is what
``greygeo check`` prints, so admins see which condition failed.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Protocol

from greygeo.rules.facts import Facts, normal_domain, plain_address

Network = IPv4Network | IPv6Network


class Condition(Protocol):
    def explain(self, facts: Facts) -> str | None:
        """None when the condition holds, else why it does not."""


@dataclass(frozen=True)
class CountryIn:
    countries: frozenset[str]

    def explain(self, facts: Facts) -> str | None:
        if facts.country in self.countries:
            return None
        return f"country {facts.country} not in {','.join(sorted(self.countries))}"


@dataclass(frozen=True)
class ClientIn:
    networks: tuple[Network, ...]

    def explain(self, facts: Facts) -> str | None:
        client = plain_address(facts.client)
        if any(client in network for network in self.networks):
            return None
        return f"client {client} not in the listed networks"


@dataclass(frozen=True)
class Matches:
    """A case-insensitive regex search on one field of the facts."""

    field: str
    pattern: re.Pattern[str]

    def explain(self, facts: Facts) -> str | None:
        value = getattr(facts, self.field)
        if self.pattern.search(value):
            return None
        return f"{self.field} {value!r} does not match '{self.pattern.pattern}'"


@dataclass(frozen=True)
class DomainIn:
    """A domain list: ``example.com`` matches itself, ``.example.com`` also
    matches every subdomain."""

    field: str
    exact: frozenset[str]
    parents: tuple[str, ...]

    def explain(self, facts: Facts) -> str | None:
        domain = getattr(facts, self.field)
        if domain and (
            domain in self.exact
            or any(domain.endswith("." + parent) for parent in self.parents)
        ):
            return None
        return f"{self.field} {domain or '(none)'!r} not in the list"


def country_in(values: Iterable[str]) -> CountryIn:
    countries = frozenset(value.strip().upper() for value in values)
    for country in countries:
        if not re.fullmatch(r"[A-Z]{2}", country):
            raise ValueError(f"not an ISO country code: {country!r}")
    return CountryIn(countries)


def client_in(values: Iterable[str]) -> ClientIn:
    networks = []
    for value in values:
        try:
            network = ip_network(value.strip(), strict=False)
        except ValueError as error:
            raise ValueError(f"not an IP address or network: {value!r}") from error
        mapped = getattr(network.network_address, "ipv4_mapped", None)
        if mapped is not None and network.prefixlen >= 96:
            network = ip_network(f"{mapped}/{network.prefixlen - 96}")
        networks.append(network)
    return ClientIn(tuple(networks))


def matches(field: str, pattern: str) -> Matches:
    try:
        return Matches(field, re.compile(pattern, re.IGNORECASE))
    except re.error as error:
        raise ValueError(f"bad regular expression {pattern!r}: {error}") from error


def domain_in(field: str, values: Iterable[str]) -> DomainIn:
    exact: set[str] = set()
    parents: list[str] = []
    for value in values:
        domain = normal_domain(value)
        if domain.startswith("."):
            parents.append(domain[1:])
            exact.add(domain[1:])
        elif domain:
            exact.add(domain)
        else:
            raise ValueError(f"empty domain in the list: {value!r}")
    return DomainIn(field, frozenset(exact), tuple(parents))
