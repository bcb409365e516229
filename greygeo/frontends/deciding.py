"""What every front end does with one recipient: ask the engine, apply the
store's fail mode when the state fails, and write the decision line.

The SMTP proxy, the Postfix policy service and nginx auth_http share one
``Decider``, so the same input and state give the same decision, the same
X-Greylist header and the same log line from each. Schedules and reloads
replace its ``policy``; every front end sees the change at once.
"""

import email.utils
import logging
from collections.abc import Callable

from greygeo.lookups.geoip import CountryLookup
from greygeo.rules.engine import Decision, Policy, State, Verdict, decide
from greygeo.rules.facts import Address, Facts
from greygeo.rules.reply import parse_reply
from greygeo.rules.state import StateError

log = logging.getLogger(__name__)

STORE_FAILED = parse_reply("451 4.3.0 Temporary local problem, try again later")


class Decider:
    """The policy in force and everything a decision needs."""

    def __init__(
        self,
        *,
        policy: Policy,
        countries: CountryLookup,
        state: State,
        clock: Callable[[], float],
        on_error: str,
    ) -> None:
        self.policy = policy
        self.countries = countries
        self.state = state
        self.clock = clock
        self.on_error = on_error

    def country(self, client: Address) -> str:
        return self.countries.country(client)

    async def decide(self, facts: Facts) -> Decision:
        """The engine's decision; when the state fails, the fail mode's."""
        try:
            return await decide(self.policy, facts, self.clock(), self.state)
        except StateError as error:
            log.error(
                "state failed, applied on_error=%s session=%s error=%s",
                self.on_error,
                facts.transaction,
                error,
            )
            if self.on_error == "accept":
                return Decision(
                    Verdict.ACCEPT, "on_error", "accept", "store failed", None
                )
            return Decision(
                Verdict.DEFER, "on_error", "tempfail", "store failed", STORE_FAILED
            )

    def greylist_header(self, decision_delay: float | None) -> str | None:
        """The X-Greylist header for a message whose triplet was delayed, if
        the policy wants one."""
        if decision_delay is None or not self.policy.greylist.header:
            return None
        date = email.utils.formatdate(self.clock(), localtime=True)
        return f"X-Greylist: delayed {round(decision_delay)} seconds by greygeo; {date}"


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
