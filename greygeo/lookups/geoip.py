"""The client's country from a GeoIP2 or GeoLite2 database.

Any MaxMind-format ``.mmdb`` with a ``country.iso_code`` works: Country and
City editions alike. A client the database does not know, a private
address, or no database at all gives ``ZZ``, which rules can match. Lookups
are memory-mapped reads that take microseconds, so they run inline on the
event loop.
"""

import logging
from datetime import UTC, datetime
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb

from greygeo.rules.facts import UNKNOWN_COUNTRY, Address, plain_address

log = logging.getLogger(__name__)

# Database types whose records carry country.iso_code.
_COUNTRY_KINDS = ("Country", "City", "Enterprise")


class GeoipError(Exception):
    """The database file cannot be used."""


class CountryLookup:
    """Maps a client address to an ISO country code."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._reader: geoip2.database.Reader | None = None
        self._city = False
        if path is None:
            return
        try:
            self._reader = geoip2.database.Reader(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
            raise GeoipError(f"cannot open GeoIP database {path}: {error}") from error
        database_type = self._reader.metadata().database_type
        if not any(kind in database_type for kind in _COUNTRY_KINDS):
            self._reader.close()
            raise GeoipError(
                f"GeoIP database {path} is of type {database_type}; greygeo "
                "needs a Country or City database"
            )
        self._city = "City" in database_type or "Enterprise" in database_type

    @property
    def built(self) -> datetime | None:
        """When the database was built, from its metadata."""
        if self._reader is None:
            return None
        return datetime.fromtimestamp(self._reader.metadata().build_epoch, UTC)

    def country(self, client: Address | str) -> str:
        """The client's ISO country code, or ``ZZ`` when unknown."""
        if self._reader is None:
            return UNKNOWN_COUNTRY
        address = str(plain_address(client))
        try:
            if self._city:
                code = self._reader.city(address).country.iso_code
            else:
                code = self._reader.country(address).country.iso_code
        except geoip2.errors.AddressNotFoundError:
            return UNKNOWN_COUNTRY
        except (ValueError, TypeError, maxminddb.InvalidDatabaseError) as error:
            log.warning("geoip lookup failed client=%s error=%s", address, error)
            return UNKNOWN_COUNTRY
        return code or UNKNOWN_COUNTRY

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
