"""The engine runs the rules in order; the first that decides wins."""

from ipaddress import ip_address

from greygeo.config import DEFAULT_REJECT, DEFAULT_TEMPFAIL
from greygeo.rules import conditions
from greygeo.rules.engine import Policy, Verdict, decide
from greygeo.rules.facts import Facts
from greygeo.rules.limits import RateLimiter
from greygeo.rules.reply import parse_reply
from greygeo.rules.rule import Action, Limit, LimitKey, Rule
from greygeo.units import parse_rate

TEMPFAIL = parse_reply(DEFAULT_TEMPFAIL)
REJECT = parse_reply(DEFAULT_REJECT)


def policy(*rules: Rule) -> Policy:
    return Policy(rules, TEMPFAIL, REJECT)


def facts(transaction="t1", **changes) -> Facts:
    values = dict(
        client=ip_address("203.0.113.5"),
        country="US",
        helo="mx.test",
        sender="a@sender.test",
        recipient="b@example.com",
    )
    values.update(changes)
    return Facts(transaction=transaction, **values)


LIMIT = Rule(
    "LIMIT", Action.LIMIT, limit=Limit(LimitKey.RECIPIENT_DOMAIN, parse_rate("1/m"))
)


def test_no_rule_decides_means_accept():
    decision = decide(policy(), facts(), 0, RateLimiter())
    assert (decision.verdict, decision.rule, decision.reply) == (
        Verdict.ACCEPT,
        "default",
        None,
    )


def test_first_matching_rule_wins():
    rules = policy(
        Rule("JP", Action.ACCEPT, (conditions.country_in(["JP"]),)),
        Rule("LOCALHOST", Action.TEMPFAIL, (conditions.matches("helo", "^mx"),)),
        Rule("ALL", Action.REJECT),
    )
    decision = decide(rules, facts(), 0, RateLimiter())
    assert decision.rule == "LOCALHOST"
    assert decision.verdict is Verdict.DEFER
    assert str(decision.reply) == "421 4.7.0 Please Try Again Later."
    assert [s.rule for s in decision.steps] == ["JP", "LOCALHOST"]
    assert decision.steps[0].outcome == "no match: country US not in JP"


def test_reject_uses_the_rules_own_reply():
    rule = Rule(
        "NO", Action.REJECT, reply=parse_reply("554 5.7.1 Go away", allowed_classes="5")
    )
    decision = decide(policy(rule), facts(), 0, RateLimiter())
    assert (decision.verdict, str(decision.reply)) == (
        Verdict.REJECT,
        "554 5.7.1 Go away",
    )


def test_limit_within_rate_lets_the_next_rule_decide():
    rules = policy(LIMIT, Rule("LAST", Action.REJECT))
    decision = decide(rules, facts(), 0, RateLimiter())
    assert decision.rule == "LAST"


def test_limit_over_rate_defers_with_the_key():
    limiter = RateLimiter()
    decide(policy(LIMIT), facts("t1"), 0, limiter)
    decision = decide(policy(LIMIT), facts("t2"), 10, limiter)
    assert (decision.verdict, decision.rule, decision.limit_key) == (
        Verdict.DEFER,
        "LIMIT",
        "example.com",
    )
    assert decision.reason == "rate exceeded"


def test_disabled_rule_is_skipped():
    rule = Rule("OFF", Action.REJECT, enabled=False)
    assert decide(policy(rule), facts(), 0, RateLimiter()).verdict is Verdict.ACCEPT


def test_check_mode_changes_no_state():
    limiter = RateLimiter()
    for _ in range(3):
        decision = decide(policy(LIMIT), facts(), 0, limiter, commit=False)
        assert decision.verdict is Verdict.ACCEPT
    assert len(limiter) == 0
