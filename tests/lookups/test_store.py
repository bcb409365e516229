"""The SQLite store: created, migrated in order, recorded, idempotent."""

import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from greygeo.lookups.store import Store, StoreError, load_migrations, migrations_dir


def test_migration_files_are_numbered_in_order():
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations_dir().name == "migrations"


async def test_empty_database_is_migrated_through_every_file(tmp_path: Path):
    path = tmp_path / "new" / "greygeo.sqlite3"
    store = await Store.open(path)
    assert await store.schema_version() == len(load_migrations())
    await store.close()

    with sqlite3.connect(path) as db:
        tables = {
            row[0]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert tables >= {
            "schema_migrations",
            "store_info",
            "triplets",
            "clients",
            "limits",
        }
        columns = {row[1] for row in db.execute("PRAGMA table_info(triplets)")}
        assert columns == {
            "client_net",
            "sender",
            "recipient",
            "first_seen",
            "last_seen",
            "passed_at",
            "version",
        }
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        recorded = [
            row[0]
            for row in db.execute("SELECT name FROM schema_migrations ORDER BY version")
        ]
        assert recorded == [m.name for m in load_migrations()]


async def test_opening_again_applies_nothing(tmp_path: Path):
    store = await Store.open(tmp_path / "g.sqlite3")
    await store.close()
    store = await Store.open(tmp_path / "g.sqlite3")
    assert await store.migrate() == []
    await store.close()


async def test_a_file_that_is_not_sqlite_is_a_store_error(tmp_path: Path):
    path = tmp_path / "g.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot prepare store"):
        await Store.open(path)


async def test_an_unwritable_folder_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open store"):
        await Store.open(blocker / "g.sqlite3")


def test_the_wheel_ships_the_migrations(tmp_path: Path):
    """Installed from a wheel, greygeo finds its migrations inside the package."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("greygeo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"greygeo/migrations/{m.version:04d}_{m.name}.sql" for m in load_migrations()
    }
    assert shipped <= names


async def test_a_store_newer_than_this_greygeo_is_refused(tmp_path: Path):
    path = tmp_path / "g.sqlite3"
    store = await Store.open(path)
    await store.db.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (99, 'x')"
    )
    await store.close()
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        await Store.open(path)
