"""What the rules need from stored state, as protocols, and its failure.

The store in ``greygeo.lookups.store`` implements these; the rules never
import it. A failure of the state (a locked, read-only or corrupt
database) is a ``StateError``: the front end catches it and applies the
configured fail mode.
"""

from typing import Protocol


class StateError(Exception):
    """Stored state cannot be read or written."""


class LimitStore(Protocol):
    async def read_limit(self, rule: str, key: str) -> tuple[float, str] | None:
        """The key's (TAT, last admitted transaction), or None."""

    async def write_limit(
        self,
        rule: str,
        key: str,
        tat: float,
        transaction: str,
        expected_tat: float | None,
    ) -> bool:
        """Store a new TAT unless the stored one is no longer
        ``expected_tat`` (None: the key must be absent); False on conflict."""
