"""What every front end does with one recipient: ask the engine, apply the
store's fail mode when the state fails, and write the decision line.

The SMTP proxy and the Postfix policy service share this, so the same input
and state give the same decision and the same log line from either.
"""

import logging

from greygeo.rules.engine import Decision, Policy, State, Verdict, decide
from greygeo.rules.facts import Facts
from greygeo.rules.reply import parse_reply
from greygeo.rules.state import StateError

log = logging.getLogger(__name__)

STORE_FAILED = parse_reply("451 4.3.0 Temporary local problem, try again later")


async def decide_or_fail(
    policy: Policy, facts: Facts, now: float, state: State, on_error: str
) -> Decision:
    """The engine's decision; when the state fails, the fail mode's."""
    try:
        return await decide(policy, facts, now, state)
    except StateError as error:
        log.error(
            "state failed, applied on_error=%s session=%s error=%s",
            on_error,
            facts.transaction,
            error,
        )
        if on_error == "accept":
            return Decision(Verdict.ACCEPT, "on_error", "accept", "store failed", None)
        return Decision(
            Verdict.DEFER, "on_error", "tempfail", "store failed", STORE_FAILED
        )


def log_decision(
    facts: Facts, decision: Decision, reply: int | str, front: str
) -> None:
    """The one INFO line per decision, with the keys operators grep."""
    log.info(
        "decision",
        extra={
            "front": front,
            "session": facts.transaction,
            "client": str(facts.client),
            "country": facts.country,
            "helo": facts.helo,
            "sender": facts.sender,
            "recipient": facts.recipient,
            "rule": decision.rule,
            "action": decision.action,
            "limit_key": decision.limit_key,
            "verdict": decision.verdict,
            "reason": decision.reason,
            "reply": reply,
        },
    )
