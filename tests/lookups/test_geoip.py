"""Country lookups from GeoIP2 databases, Country and City editions."""

from pathlib import Path

import _maxminddb_geolite2
import pytest

from greygeo.lookups.geoip import CountryLookup, GeoipError

GEOLITE2_CITY = Path(_maxminddb_geolite2.__file__).parent / "GeoLite2-City.mmdb"


def test_test_database_maps_loopback_ranges(geoip_db):
    lookup = CountryLookup(geoip_db)
    assert lookup.country("127.0.1.10") == "US"
    assert lookup.country("127.0.2.10") == "JP"
    assert lookup.country("::ffff:127.0.2.10") == "JP"
    assert lookup.country("::1") == "JP"
    assert lookup.country("127.0.9.9") == "ZZ"
    assert lookup.built is not None


def test_real_geolite2_city_database():
    lookup = CountryLookup(GEOLITE2_CITY)
    assert lookup.country("133.242.186.90") == "JP"
    assert lookup.country("20.1.1.1") == "US"
    assert lookup.country("10.0.0.1") == "ZZ"
    assert lookup.built.year == 2018


def test_no_database_gives_zz():
    assert CountryLookup(None).country("133.242.186.90") == "ZZ"


@pytest.mark.parametrize("content", [None, b"garbage" * 50])
def test_unusable_file_is_a_geoip_error(tmp_path, content):
    path = tmp_path / "x.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GeoipError, match="cannot open GeoIP database"):
        CountryLookup(path)


def test_a_database_without_countries_is_refused(tmp_path):
    """An ASN database would fail on every lookup: refuse it at start."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-ASN")
    writer.insert_network(IPSet(["192.0.2.0/24"]), {"autonomous_system_number": 1})
    path = tmp_path / "asn.mmdb"
    writer.to_db_file(str(path))
    with pytest.raises(GeoipError, match="of type GeoLite2-ASN; greygeo needs"):
        CountryLookup(path)
