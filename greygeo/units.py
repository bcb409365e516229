"""Human units in the configuration: durations, sizes and rates.

Only parsing lives here; every value comes back in plain SI numbers
(seconds, bytes, events per second) so the rest of the code never sees a
unit suffix. Errors are ``ValueError`` with a message meant for the admin.
"""

import re
from dataclasses import dataclass, field

_LONGEST = 10 * 365 * 86400
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$", re.IGNORECASE)


def parse_duration(text: str | int | float) -> float:
    """Return seconds for ``300s``, ``5m``, ``35d``; a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not 0 <= text < _LONGEST:
            raise ValueError(f"duration out of range (0 to ten years): {text!r}")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration (use 300s, 5m, 2h, 35d): {text!r}")
    number, unit = match.groups()
    seconds = float(number) * _DURATION_UNITS[unit.lower() or "s"]
    if not seconds < _LONGEST:
        raise ValueError(f"duration longer than ten years: {text!r}")
    return seconds


def parse_size(text: str | int) -> int:
    """Return bytes for ``25M``, ``512K``, ``1G``; a bare number is bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text!r}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size (use 25M, 512K, 1G): {text!r}")
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[unit.lower()]


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``period`` seconds, as written in ``1/m``."""

    count: int
    period: float
    text: str = field(default="", compare=False)
    """As written in the configuration, for messages."""

    @property
    def interval(self) -> float:
        """Seconds between two events at a steady pace."""
        return self.period / self.count

    def __str__(self) -> str:
        return self.text or f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """Return the rate of ``1/m``, ``20/1h`` or ``1/10m``."""
    match = _RATE.match(str(text))
    if not match:
        raise ValueError(f"not a rate (use 1/m, 20/1h, 1/10m): {text!r}")
    count, multiple, unit = match.groups()
    if int(count) == 0:
        raise ValueError(f"rate must allow at least one event: {text!r}")
    period = int(multiple or "1") * _DURATION_UNITS[unit.lower()]
    if period >= _LONGEST or int(count) > 10**9:
        raise ValueError(f"rate out of range: {text!r}")
    if period == 0:
        raise ValueError(f"rate period must not be zero: {text!r}")
    return Rate(int(count), float(period), str(text).strip())
