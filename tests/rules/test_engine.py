"""The engine runs the rules in order; the first that decides wins."""

from ipaddress import ip_address

import pytest

from greygeo.config import DEFAULT_REJECT, DEFAULT_TEMPFAIL
from greygeo.lookups.store import Store
from greygeo.rules import conditions
from greygeo.rules.engine import Policy, Verdict, decide
from greygeo.rules.facts import Facts
from greygeo.rules.reply import parse_reply
from greygeo.rules.rule import Action, Limit, LimitKey, Rule
from greygeo.units import parse_rate

TEMPFAIL = parse_reply(DEFAULT_TEMPFAIL)
REJECT = parse_reply(DEFAULT_REJECT)


@pytest.fixture
async def state(tmp_path):
    store = await Store.open(tmp_path / "engine.sqlite3")
    yield store
    await store.close()


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


async def test_no_rule_decides_means_accept(state):
    decision = await decide(policy(), facts(), 0, state)
    assert (decision.verdict, decision.rule, decision.reply) == (
        Verdict.ACCEPT,
        "default",
        None,
    )


async def test_first_matching_rule_wins(state):
    rules = policy(
        Rule("JP", Action.ACCEPT, (conditions.country_in(["JP"]),)),
        Rule("LOCALHOST", Action.TEMPFAIL, (conditions.matches("helo", "^mx"),)),
        Rule("ALL", Action.REJECT),
    )
    decision = await decide(rules, facts(), 0, state)
    assert decision.rule == "LOCALHOST"
    assert decision.verdict is Verdict.DEFER
    assert str(decision.reply) == "421 4.7.0 Please Try Again Later."
    assert [s.rule for s in decision.steps] == ["JP", "LOCALHOST"]
    assert decision.steps[0].outcome == "no match: country US not in JP"


async def test_reject_uses_the_rules_own_reply(state):
    rule = Rule(
        "NO", Action.REJECT, reply=parse_reply("554 5.7.1 Go away", allowed_classes="5")
    )
    decision = await decide(policy(rule), facts(), 0, state)
    assert (decision.verdict, str(decision.reply)) == (
        Verdict.REJECT,
        "554 5.7.1 Go away",
    )


async def test_limit_within_rate_lets_the_next_rule_decide(state):
    rules = policy(LIMIT, Rule("LAST", Action.REJECT))
    decision = await decide(rules, facts(), 0, state)
    assert decision.rule == "LAST"


async def test_limit_over_rate_defers_with_the_key(state):
    await decide(policy(LIMIT), facts("t1"), 0, state)
    decision = await decide(policy(LIMIT), facts("t2"), 10, state)
    assert (decision.verdict, decision.rule, decision.limit_key) == (
        Verdict.DEFER,
        "LIMIT",
        "example.com",
    )
    assert decision.reason == "rate exceeded"


async def test_disabled_rule_is_skipped(state):
    rule = Rule("OFF", Action.REJECT, enabled=False)
    decision = await decide(policy(rule), facts(), 0, state)
    assert decision.verdict is Verdict.ACCEPT


async def test_check_mode_changes_no_state(state):
    for _ in range(3):
        decision = await decide(policy(LIMIT), facts(), 0, state, commit=False)
        assert decision.verdict is Verdict.ACCEPT
    assert await state.read_limit("LIMIT", "example.com") is None


GREYLIST = Rule("GREYLIST", Action.GREYLIST)


async def test_greylisted_attempt_uses_up_no_limit_whatever_the_order(state):
    """A sender retrying within the minute must get through: a deferred
    attempt takes no allowance, with the limit before or after."""
    for rules in (policy(LIMIT, GREYLIST), policy(GREYLIST, LIMIT)):
        await state.db.execute("DELETE FROM limits")
        await state.db.execute("DELETE FROM triplets")
        first = await decide(rules, facts("t1"), 0, state)
        assert (first.verdict, first.rule) == (Verdict.DEFER, "GREYLIST")
        assert (
            str(first.reply) == "451 4.7.1 Greylisted, please try again in 300 seconds"
        )
        retry = await decide(rules, facts("t2"), 330, state)
        assert retry.verdict is Verdict.ACCEPT
        assert retry.greylist_delay == 330


async def test_greylist_pass_lets_the_next_rule_decide(state):
    rules = policy(GREYLIST, Rule("LAST", Action.REJECT))
    await decide(rules, facts("t1"), 0, state)
    decision = await decide(rules, facts("t2"), 300, state)
    assert decision.rule == "LAST"
    assert decision.steps[0].outcome == "pass: passed now"
