"""One rule of the policy: conditions, an action, and what to answer.

Rules are values built by the configuration loader; the engine runs them.
"""

from dataclasses import dataclass
from enum import StrEnum

from greygeo.rules.conditions import Condition
from greygeo.rules.facts import Facts
from greygeo.rules.reply import Reply
from greygeo.units import Rate


class Action(StrEnum):
    ACCEPT = "accept"
    TEMPFAIL = "tempfail"
    REJECT = "reject"
    LIMIT = "limit"
    GREYLIST = "greylist"


class LimitKey(StrEnum):
    """What a ``limit`` rule counts per: the field of the facts it reads."""

    RECIPIENT_DOMAIN = "recipient_domain"
    RECIPIENT = "recipient"
    SENDER = "sender"
    SENDER_DOMAIN = "sender_domain"
    CLIENT = "client"
    HELO = "helo"

    def of(self, facts: Facts) -> str:
        """The key's value for these facts, lower-cased."""
        return str(getattr(facts, self)).lower()


@dataclass(frozen=True)
class Limit:
    key: LimitKey
    rate: Rate
    burst: int = 0


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    conditions: tuple[Condition, ...] = ()
    reply: Reply | None = None
    limit: Limit | None = None
    enabled: bool = True

    def explain_mismatch(self, facts: Facts) -> str | None:
        """None when every condition holds, else the first that does not."""
        for condition in self.conditions:
            reason = condition.explain(facts)
            if reason is not None:
                return reason
        return None
