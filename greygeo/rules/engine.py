"""The engine: runs the policy's rules in order for one recipient.

Rules are checked in file order; the first rule that decides wins. ``accept``,
``tempfail`` and ``reject`` decide when their conditions hold; ``limit``
decides only when the key is over its rate, and otherwise lets the next rule
speak. When no rule decides, the recipient is accepted.

The engine reads no clock and opens no socket: the caller passes ``now``
(seconds, any monotonic-enough epoch shared with the limiter) and the
limiter that holds rate state. ``commit=False`` evaluates without using up
any allowance, which is what ``greygeo check`` needs.
"""

from dataclasses import dataclass
from enum import StrEnum

from greygeo.rules.facts import Facts
from greygeo.rules.limits import RateLimiter
from greygeo.rules.reply import Reply
from greygeo.rules.rule import Action, Rule

DEFAULT_RULE = "default"


class Verdict(StrEnum):
    ACCEPT = "accept"
    DEFER = "defer"
    REJECT = "reject"


@dataclass(frozen=True)
class Step:
    """What one rule did with the facts, for ``greygeo check``."""

    rule: str
    outcome: str


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str
    action: str
    reason: str
    reply: Reply | None
    """What to answer when refused; None when accepted."""
    limit_key: str = ""
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    tempfail: Reply
    reject: Reply


def decide(
    policy: Policy,
    facts: Facts,
    now: float,
    limiter: RateLimiter,
    *,
    commit: bool = True,
) -> Decision:
    """Run the rules for one recipient and return the decision."""
    steps: list[Step] = []
    for rule in policy.rules:
        if not rule.enabled:
            steps.append(Step(rule.name, "disabled"))
            continue

        mismatch = rule.explain_mismatch(facts)
        if mismatch is not None:
            steps.append(Step(rule.name, f"no match: {mismatch}"))
            continue

        decision = _apply(policy, rule, facts, now, limiter, commit, steps)
        if decision is not None:
            return decision

    steps.append(Step(DEFAULT_RULE, "no rule decided: accept"))
    return Decision(
        Verdict.ACCEPT,
        DEFAULT_RULE,
        "accept",
        "no rule decided",
        None,
        "",
        tuple(steps),
    )


def _apply(
    policy: Policy,
    rule: Rule,
    facts: Facts,
    now: float,
    limiter: RateLimiter,
    commit: bool,
    steps: list[Step],
) -> Decision | None:
    """Apply a matching rule; None when it lets the next rule decide."""
    if rule.action is Action.ACCEPT:
        steps.append(Step(rule.name, "match: accept"))
        return Decision(
            Verdict.ACCEPT, rule.name, rule.action, "matched", None, "", tuple(steps)
        )

    if rule.action is Action.TEMPFAIL:
        steps.append(Step(rule.name, "match: tempfail"))
        reply = rule.reply or policy.tempfail
        return Decision(
            Verdict.DEFER, rule.name, rule.action, "matched", reply, "", tuple(steps)
        )

    if rule.action is Action.REJECT:
        steps.append(Step(rule.name, "match: reject"))
        reply = rule.reply or policy.reject
        return Decision(
            Verdict.REJECT, rule.name, rule.action, "matched", reply, "", tuple(steps)
        )

    # A limit: count the transaction, refuse only when over the rate.
    assert rule.limit is not None
    key = rule.limit.key.of(facts)
    result = limiter.hit(
        rule.name,
        key,
        rule.limit.rate,
        rule.limit.burst,
        now,
        facts.transaction,
        commit=commit,
    )
    where = f"{rule.limit.key}={key}"
    if result.allowed:
        steps.append(Step(rule.name, f"within {rule.limit.rate} for {where}"))
        return None

    steps.append(
        Step(
            rule.name,
            f"over {rule.limit.rate} for {where}, "
            f"next allowed in {result.retry_after:.0f}s",
        )
    )
    reply = rule.reply or policy.tempfail
    verdict = Verdict.DEFER if reply.code < 500 else Verdict.REJECT
    return Decision(
        verdict, rule.name, rule.action, "rate exceeded", reply, key, tuple(steps)
    )
