"""Reading TOML tables: known keys taken, unknown keys refused, values
converted with messages that name the file, the key and the value."""

from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

from greygeo.rules.reply import Reply, parse_reply

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class Table:
    """One TOML table being read: takes known keys, complains about the rest."""

    def __init__(self, data: Any, where: str, source: Path) -> None:
        self.where = where
        self.source = source
        if not isinstance(data, dict):
            raise self.error("", f"must be a table, not {data!r}")
        self.data = dict(data)

    def error(self, key: str, message: str) -> ConfigError:
        name = f"{self.where}.{key}" if self.where and key else self.where or key
        return ConfigError(f"{self.source}: {name}: {message}")

    def take(self, key: str, default: T, convert: Callable[[Any], T]) -> T:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        try:
            return convert(value)
        except (ValueError, TypeError, OverflowError) as error:
            raise self.error(key, str(error)) from error

    def table(self, key: str) -> "Table":
        where = f"{self.where}.{key}" if self.where else key
        return Table(self.data.pop(key, {}), where, self.source)

    def finish(self) -> None:
        for key in self.data:
            raise self.error(key, "unknown key")


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {value!r}")
    return value


def strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"must be a list of strings, not {value!r}")
    return tuple(value)


def positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"must be a whole number of at least 1, not {value!r}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {value!r}")
    return value


def ip_text(value: Any) -> str:
    return str(ip_address(string(value)))


def one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return convert


def prefix(most: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= most
        ):
            raise ValueError(f"must be a prefix length from 0 to {most}, not {value!r}")
        return value

    return convert


def tempfail_reply(value: Any) -> Reply:
    return parse_reply(string(value), allowed_classes="4")


def reject_reply(value: Any) -> Reply:
    return parse_reply(string(value), allowed_classes="5")


def non_negative_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"must be a whole number of at least 0, not {value!r}")
    return value
