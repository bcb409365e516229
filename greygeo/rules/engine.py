"""The engine: runs the policy's rules in order for one recipient.

Rules are checked in file order; the first rule that decides wins.
``accept``, ``tempfail`` and ``reject`` decide when their conditions hold.
``limit`` decides only when its key is over the rate, and ``greylist`` only
when the triplet must wait; otherwise they let the next rule speak. When no
rule decides, the recipient is accepted.

Limits are counted only when the decision is to accept: a recipient refused
by a later rule (greylisting, say) uses up no allowance, whatever the rule
order.

The engine reads no clock and opens no socket: the caller passes ``now``
(Unix seconds) and the state. ``commit=False`` evaluates without changing
any state, which is what ``greygeo check`` needs.
"""

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from greygeo.rules import greylist, limits
from greygeo.rules.facts import Facts
from greygeo.rules.greylist import GreylistSettings, GreylistStore
from greygeo.rules.reply import Reply
from greygeo.rules.rule import Action, Rule
from greygeo.rules.state import LimitStore

DEFAULT_RULE = "default"


class Verdict(StrEnum):
    ACCEPT = "accept"
    DEFER = "defer"
    REJECT = "reject"


class State(LimitStore, GreylistStore, Protocol):
    """Everything the rules keep between decisions."""


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
    greylist_delay: float | None = None
    """Set when this recipient's triplet just passed greylisting."""


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    tempfail: Reply
    reject: Reply
    greylist: GreylistSettings = field(default_factory=GreylistSettings)


@dataclass
class _Run:
    """One evaluation in progress."""

    policy: Policy
    facts: Facts
    now: float
    state: State
    commit: bool
    steps: list[Step] = field(default_factory=list)
    pending: list[tuple[Rule, str, limits.Look]] = field(default_factory=list)
    greylist_delay: float | None = None

    def decision(
        self,
        verdict: Verdict,
        rule: Rule | None,
        reason: str,
        reply: Reply | None = None,
        limit_key: str = "",
    ) -> Decision:
        return Decision(
            verdict,
            rule.name if rule else DEFAULT_RULE,
            str(rule.action) if rule else "accept",
            reason,
            reply,
            limit_key,
            tuple(self.steps),
            self.greylist_delay,
        )


async def decide(
    policy: Policy,
    facts: Facts,
    now: float,
    state: State,
    *,
    commit: bool = True,
) -> Decision:
    """Run the rules for one recipient and return the decision."""
    run = _Run(policy, facts, now, state, commit)
    for rule in policy.rules:
        if not rule.enabled:
            run.steps.append(Step(rule.name, "disabled"))
            continue

        mismatch = rule.explain_mismatch(facts)
        if mismatch is not None:
            run.steps.append(Step(rule.name, f"no match: {mismatch}"))
            continue

        decision = await _apply(run, rule)
        if decision is not None:
            return decision

    run.steps.append(Step(DEFAULT_RULE, "no rule decided: accept"))
    return await _accept(run, None, "no rule decided")


async def _apply(run: _Run, rule: Rule) -> Decision | None:
    """Apply a matching rule; None when it lets the next rule decide."""
    if rule.action is Action.ACCEPT:
        run.steps.append(Step(rule.name, "match: accept"))
        return await _accept(run, rule, "matched")

    if rule.action is Action.TEMPFAIL:
        run.steps.append(Step(rule.name, "match: tempfail"))
        reply = rule.reply or run.policy.tempfail
        return run.decision(Verdict.DEFER, rule, "matched", reply)

    if rule.action is Action.REJECT:
        run.steps.append(Step(rule.name, "match: reject"))
        reply = rule.reply or run.policy.reject
        return run.decision(Verdict.REJECT, rule, "matched", reply)

    if rule.action is Action.GREYLIST:
        return await _greylist(run, rule)

    return await _limit(run, rule)


async def _limit(run: _Run, rule: Rule) -> Decision | None:
    """Look at the key's allowance; it is taken only if the recipient is
    accepted in the end."""
    assert rule.limit is not None
    key = rule.limit.key.of(run.facts)
    seen = await limits.look(
        run.state,
        rule.name,
        key,
        rule.limit.rate,
        rule.limit.burst,
        run.now,
        run.facts.transaction,
    )
    where = f"{rule.limit.key}={key}"
    if seen.allowed:
        run.steps.append(Step(rule.name, f"within {rule.limit.rate} for {where}"))
        run.pending.append((rule, key, seen))
        return None
    return _over_limit(run, rule, key, seen)


def _over_limit(run: _Run, rule: Rule, key: str, seen: limits.Look) -> Decision:
    assert rule.limit is not None
    run.steps.append(
        Step(
            rule.name,
            f"over {rule.limit.rate} for {rule.limit.key}={key}, "
            f"next allowed in {seen.retry_after:.0f}s",
        )
    )
    reply = rule.reply or run.policy.tempfail
    verdict = Verdict.DEFER if reply.code < 500 else Verdict.REJECT
    return run.decision(verdict, rule, "rate exceeded", reply, key)


async def _greylist(run: _Run, rule: Rule) -> Decision | None:
    settings = run.policy.greylist
    result = await greylist.check(
        run.state, run.facts, run.now, settings, commit=run.commit
    )
    if result.passes:
        run.steps.append(Step(rule.name, f"pass: {result.outcome}"))
        if result.delayed is not None:
            run.greylist_delay = result.delayed
        return None

    run.steps.append(
        Step(rule.name, f"defer: {result.outcome}, {result.wait:.0f}s left")
    )
    reply = settings.reply_for(result.wait)
    if rule.reply is not None:
        seconds = str(max(1, round(result.wait)))
        reply = replace(rule.reply, text=rule.reply.text.replace("%s", seconds))
    return run.decision(Verdict.DEFER, rule, str(result.outcome), reply)


async def _accept(run: _Run, rule: Rule | None, reason: str) -> Decision:
    """Accept, after taking the allowances the limits granted."""
    if run.commit:
        for limit_rule, key, seen in run.pending:
            assert limit_rule.limit is not None
            taken = await limits.take(
                run.state,
                limit_rule.name,
                key,
                limit_rule.limit.rate,
                limit_rule.limit.burst,
                run.now,
                run.facts.transaction,
                seen,
            )
            if not taken.allowed:
                return _over_limit(run, limit_rule, key, taken)
    return run.decision(Verdict.ACCEPT, rule, reason)
