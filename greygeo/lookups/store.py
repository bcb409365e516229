"""The SQLite store: opening it, and the versioned SQL migrations.

All SQL of greygeo lives here and in ``migrations/``. Migrations are plain
SQL files named ``NNNN_name.sql``, applied in order, each in its own
transaction, and recorded in ``schema_migrations``; a file already recorded
is never applied again. The database runs in WAL mode so that readers do
not wait for a writer.
"""

import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The store cannot be opened, migrated or used."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_dir() -> Path:
    """The migrations shipped in the wheel, or the source tree's folder."""
    shipped = resources.files("greygeo") / "migrations"
    if shipped.is_dir():
        return Path(str(shipped))
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every migration file, in version order; a bad name is an error."""
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise StoreError(f"migration file name not NNNN_name.sql: {path}")
        found.append(Migration(int(match[1]), match[2], path.read_text()))

    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migrations share a version in {folder}")
    return found


class Store:
    """An open SQLite database, migrated to the newest schema."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> "Store":
        """Create the file if needed, switch to WAL and apply migrations."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open store {path}: {error}") from error

        store = cls(db, path)
        try:
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            await store.migrate()
        except (sqlite3.Error, StoreError) as error:
            await db.close()
            raise StoreError(f"cannot prepare store {path}: {error}") from error
        return store

    async def schema_version(self) -> int:
        cursor = await self.db.execute(
            "SELECT coalesce(max(version), 0) FROM schema_migrations"
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self) -> list[Migration]:
        """Apply the migrations not yet recorded; return those applied."""
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT"
            " (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))"
        )
        current = await self.schema_version()
        applied = []
        for migration in load_migrations():
            if migration.version <= current:
                continue
            await self._apply(migration)
            applied.append(migration)
            log.info(
                "store migrated path=%s version=%d name=%s",
                self.path,
                migration.version,
                migration.name,
            )
        return applied

    async def _apply(self, migration: Migration) -> None:
        """One migration and its record, in one transaction."""
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{migration.sql}\n;"
            "INSERT INTO schema_migrations (version, name) "
            f"VALUES ({migration.version}, '{migration.name}');\n"
            "COMMIT;"
        )
        try:
            await self.db.executescript(script)
        except sqlite3.Error as error:
            if self.db.in_transaction:
                await self.db.execute("ROLLBACK")
            raise StoreError(
                f"migration {migration.version:04d}_{migration.name} failed: {error}"
            ) from error

    async def close(self) -> None:
        await self.db.close()
