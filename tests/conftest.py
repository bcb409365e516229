"""Shared fixtures: a test GeoIP database, configs, a real Postfix."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.postfix import Postfix, start_postfix

TEST_COUNTRIES = {
    "127.0.1.0/24": "US",
    "127.0.2.0/24": "JP",
    "127.0.3.0/24": "DE",
    "::1/128": "JP",
}


@pytest.fixture(scope="session")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GeoLite2-Country database mapping loopback ranges to countries."""
    writer = MMDBWriter(
        ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True
    )
    for network, country in TEST_COUNTRIES.items():
        writer.insert_network(IPSet([network]), {"country": {"iso_code": country}})
    path = tmp_path_factory.mktemp("geoip") / "test-country.mmdb"
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "mail"


def postfix_required() -> None:
    """In CI a missing Postfix fails the run; elsewhere it is said clearly."""
    if shutil.which("postfix") is None or os.geteuid() != 0:
        pytest.fail("these tests need Postfix installed and root (see .ci/run)")


@pytest.fixture(scope="session")
def postfix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postfix]:
    """One Postfix for the session, with mailboxes bar@ and baz@example.com.

    Its folder is outside pytest's private temporary tree, which the postfix
    user could not enter.
    """
    postfix_required()
    root = Path(tempfile.mkdtemp(prefix="greygeo-postfix-"))
    instance = start_postfix(root, ("bar", "baz"))
    yield instance
    instance.stop()
    shutil.rmtree(root, ignore_errors=True)
