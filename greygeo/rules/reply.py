"""SMTP replies as values: a code, an enhanced status code and a text.

A reply written by an admin in the configuration is checked here once, at
load time, so that nothing malformed ever reaches the wire (RFC 5321 4.2,
RFC 3463 for the enhanced status code, whose class must match the code).
"""

import re
from dataclasses import dataclass

_REPLY = re.compile(r"^([245]\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?$")


@dataclass(frozen=True)
class Reply:
    """One single-line SMTP reply."""

    code: int
    status: str
    text: str

    @property
    def closes(self) -> bool:
        """A 421 ends the session once it is sent (RFC 5321 3.8)."""
        return self.code == 421

    def __str__(self) -> str:
        parts = [str(self.code), self.status, self.text]
        return " ".join(part for part in parts if part)


def parse_reply(text: str, *, allowed_classes: str = "45") -> Reply:
    """Parse ``421 4.7.0 Please Try Again Later.``; ValueError when malformed."""
    if any(char in text for char in "\r\n\x00"):
        raise ValueError(f"a reply is one line of text: {text!r}")
    match = _REPLY.match(text.strip())
    if not match:
        raise ValueError(f"not an SMTP reply (like '421 4.7.0 Text'): {text!r}")

    code, status, rest = match.groups()
    if code[0] not in allowed_classes:
        classes = " or ".join(f"{c}xx" for c in allowed_classes)
        raise ValueError(f"reply code must be {classes}: {text!r}")
    if status and status[0] != code[0]:
        raise ValueError(f"enhanced status class differs from the code: {text!r}")

    return Reply(int(code), status or f"{code[0]}.7.1", rest or "")
