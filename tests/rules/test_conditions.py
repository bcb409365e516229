"""Each condition of a rule, alone."""

from ipaddress import ip_address

import pytest

from greygeo.rules import conditions
from greygeo.rules.facts import Facts, plain_address


def facts(**changes) -> Facts:
    values = dict(
        client=ip_address("203.0.113.5"),
        country="US",
        helo="mx.sender.test",
        sender="Foo@Example.ORG",
        recipient="bar@Sub.Example.NET.",
    )
    values.update(changes)
    return Facts(**values)


def test_country_matches_iso_codes_and_zz_for_unknown():
    rule = conditions.country_in(["jp", "ZZ"])
    assert rule.explain(facts(country="JP")) is None
    assert rule.explain(facts(country="ZZ")) is None
    assert rule.explain(facts(country="US")) == "country US not in JP,ZZ"


def test_bad_country_code_is_refused():
    with pytest.raises(ValueError, match="ISO country code"):
        conditions.country_in(["Japan"])


def test_client_networks_v4_v6_and_mapped_addresses():
    rule = conditions.client_in(
        ["192.0.2.0/24", "2001:db8::/32", "::ffff:198.51.100.0/120"]
    )
    assert rule.explain(facts(client=ip_address("192.0.2.77"))) is None
    assert rule.explain(facts(client=ip_address("2001:db8::1"))) is None
    assert rule.explain(facts(client=plain_address("::ffff:192.0.2.1"))) is None
    assert rule.explain(facts(client=ip_address("198.51.100.9"))) is None
    assert rule.explain(facts(client=ip_address("203.0.113.5"))) is not None


def test_plain_address_turns_mapped_ipv6_into_ipv4():
    assert plain_address("::ffff:192.0.2.1") == ip_address("192.0.2.1")
    assert plain_address("2001:db8::1") == ip_address("2001:db8::1")


def test_regex_conditions_are_case_insensitive_searches():
    helo = conditions.matches("helo", r"\.(google|outlook)\.com$")
    assert helo.explain(facts(helo="MAIL-OUT.Google.COM")) is None
    assert helo.explain(facts(helo="google.com.evil.test")) is not None
    sender = conditions.matches("sender", "^foo@")
    assert sender.explain(facts()) is None


def test_bad_regex_is_refused_with_the_pattern():
    with pytest.raises(ValueError, match=r"bad regular expression '\('"):
        conditions.matches("helo", "(")


def test_domain_lists_ignore_case_and_trailing_dot():
    rule = conditions.domain_in("sender_domain", ["EXAMPLE.org."])
    assert rule.explain(facts()) is None
    assert rule.explain(facts(sender="x@sub.example.org")) is not None


def test_leading_dot_matches_the_domain_and_its_subdomains():
    rule = conditions.domain_in("recipient_domain", [".example.net"])
    assert rule.explain(facts()) is None  # bar@Sub.Example.NET.
    assert rule.explain(facts(recipient="x@example.net")) is None
    assert rule.explain(facts(recipient="x@badexample.net")) is not None


def test_null_sender_has_no_domain():
    rule = conditions.domain_in("sender_domain", ["example.org"])
    assert rule.explain(facts(sender="")) == "sender_domain '(none)' not in the list"
