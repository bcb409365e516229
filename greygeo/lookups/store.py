"""The SQLite store: migrations, and the rows of greylisting and limits.

All SQL of greygeo lives here and in ``migrations/``. Migrations are plain
SQL files named ``NNNN_name.sql``, applied in order, each in its own
transaction, and recorded in ``schema_migrations``; a file already recorded
is never applied again.

The database runs in WAL mode, so readers never wait for the writer, with
``synchronous = NORMAL``: a power cut may forget the last few decisions,
which costs a client one more retry, never a message. Every statement runs
in aiosqlite's worker thread, so a slow disk never blocks the event loop.
Each write is a single statement that names the row version it expects, so
concurrent sessions and other processes (``greygeo purge``) never lose an
update; ``busy_timeout`` bounds how long a statement waits for a lock.
Purging deletes in short batches so that deciding is never blocked for
long. Any SQLite failure leaves this module as ``StoreError``.
"""

import asyncio
import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import aiosqlite

from greygeo.rules.greylist import ClientRow, GreylistSettings, Triplet, TripletRow
from greygeo.rules.state import StateError

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
DEFAULT_LOCK_TIMEOUT = 2.0
PURGE_BATCH = 1000
PURGE_PAUSE = 0.005


class StoreError(StateError):
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
    async def open(
        cls, path: Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> "Store":
        """Create the file if needed, switch to WAL and apply migrations.
        A statement waits at most ``lock_timeout`` seconds for a lock."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open store {path}: {error}") from error

        store = cls(db, path)
        try:
            await db.execute(f"PRAGMA busy_timeout = {round(lock_timeout * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await store.migrate()
        except (sqlite3.Error, StoreError) as error:
            await db.close()
            raise StoreError(f"cannot prepare store {path}: {error}") from error
        return store

    @classmethod
    async def open_existing(cls, path: Path) -> "Store":
        """Open a store that must exist, to look only."""
        if not path.is_file():
            raise StoreError(
                f"no store at {path}: greygeo serve or greygeo migrate creates it"
            )
        return await cls.open_read_only(path)

    @classmethod
    async def open_read_only(cls, path: Path) -> "Store":
        """Open an existing store to look only; an empty one if there is none."""
        if not path.exists():
            return await cls.open(Path(":memory:"))
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            db = await aiosqlite.connect(uri, uri=True)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open store {path}: {error}") from error
        store = cls(db, path)
        try:
            version = await store.schema_version()
        except sqlite3.Error as error:
            await db.close()
            raise StoreError(f"cannot read store {path}: {error}") from error
        latest = max(m.version for m in load_migrations())
        if version < latest:
            await db.close()
            raise StoreError(
                f"store {path} is at schema version {version}, greygeo needs "
                f"{latest}: run greygeo migrate"
            )
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
        migrations = load_migrations()
        latest = max((m.version for m in migrations), default=0)
        if current > latest:
            raise StoreError(
                f"store {self.path} is at schema version {current}, newer than "
                f"this greygeo knows ({latest}): use a newer greygeo"
            )
        applied = []
        for migration in migrations:
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

    # -- rows ------------------------------------------------------------------

    async def _rows(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        try:
            return list(await self.db.execute_fetchall(sql, params))
        except sqlite3.Error as error:
            raise StoreError(f"store {self.path}: {error}") from error

    async def _write(self, sql: str, params: object) -> int:
        """Run one INSERT or UPDATE; the number of rows it wrote. RETURNING
        makes this one trip to the database thread instead of two."""
        try:
            rows = await self.db.execute_fetchall(sql + " RETURNING 1", params)
        except sqlite3.Error as error:
            raise StoreError(f"store {self.path}: {error}") from error
        return len(list(rows))

    async def _change(self, sql: str, params: tuple[object, ...]) -> int:
        """Run one writing statement; the number of rows it changed."""
        try:
            cursor = await self.db.execute(sql, params)
            changed = cursor.rowcount
            await cursor.close()
            return changed
        except sqlite3.Error as error:
            raise StoreError(f"store {self.path}: {error}") from error

    async def read_limit(self, rule: str, key: str) -> tuple[float, str] | None:
        rows = await self._rows(
            "SELECT tat, transaction_id FROM limits WHERE rule = ? AND key = ?",
            (rule, key),
        )
        return (float(rows[0][0]), str(rows[0][1])) if rows else None

    async def write_limit(
        self,
        rule: str,
        key: str,
        tat: float,
        transaction: str,
        expected_tat: float | None,
    ) -> bool:
        if expected_tat is None:
            changed = await self._write(
                "INSERT INTO limits (rule, key, tat, transaction_id)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (rule, key, tat, transaction),
            )
        else:
            changed = await self._write(
                "UPDATE limits SET tat = ?, transaction_id = ?"
                " WHERE rule = ? AND key = ? AND tat = ?",
                (tat, transaction, rule, key, expected_tat),
            )
        return changed == 1

    async def read_greylist(
        self, triplet: Triplet
    ) -> tuple[TripletRow | None, ClientRow | None]:
        rows = await self._rows(
            "SELECT t.first_seen, t.last_seen, t.passed_at, t.version,"
            " c.passes, c.last_counted, c.last_seen"
            " FROM (SELECT ? AS client_net, ? AS sender, ? AS recipient) AS k"
            " LEFT JOIN triplets AS t ON t.client_net = k.client_net"
            "  AND t.sender = k.sender AND t.recipient = k.recipient"
            " LEFT JOIN clients AS c ON c.client_net = k.client_net",
            (triplet.client_net, triplet.sender, triplet.recipient),
        )
        first, last, passed, version, passes, counted, client_seen = rows[0]
        row = None if first is None else TripletRow(first, last, passed, version)
        client = None if passes is None else ClientRow(passes, counted, client_seen)
        return row, client

    async def write_triplet(
        self, triplet: Triplet, row: TripletRow, expected_version: int | None
    ) -> bool:
        key = (triplet.client_net, triplet.sender, triplet.recipient)
        if expected_version is None:
            changed = await self._write(
                "INSERT INTO triplets (client_net, sender, recipient,"
                " first_seen, last_seen, passed_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (*key, row.first_seen, row.last_seen, row.passed_at),
            )
        else:
            changed = await self._write(
                "UPDATE triplets SET first_seen = ?, last_seen = ?, passed_at = ?,"
                " version = version + 1 WHERE client_net = ? AND sender = ?"
                " AND recipient = ? AND version = ?",
                (row.first_seen, row.last_seen, row.passed_at, *key, expected_version),
            )
        return changed == 1

    async def count_client_pass(
        self, client_net: str, now: float, count_every: float, seen_every: float
    ) -> None:
        """Count a pass (at most one per ``count_every``) and the client's
        last use (written at most once per ``seen_every``)."""
        await self._write(
            "INSERT INTO clients (client_net, passes, last_counted, last_seen)"
            " VALUES (:net, 1, :now, :now) ON CONFLICT (client_net) DO UPDATE SET"
            " passes = passes + (:now - last_counted >= :count_every),"
            " last_counted = CASE WHEN :now - last_counted >= :count_every"
            "  THEN :now ELSE last_counted END,"
            " last_seen = :now"
            " WHERE :now - last_counted >= :count_every"
            "  OR :now - clients.last_seen >= :seen_every",
            {
                "net": client_net,
                "now": now,
                "count_every": count_every,
                "seen_every": seen_every,
            },
        )

    # -- purge and stats ---------------------------------------------------------

    def _stale(
        self, now: float, settings: GreylistSettings
    ) -> dict[str, tuple[str, str, tuple[float, ...]]]:
        """What purge removes: table, condition, parameters, by kind."""
        return {
            "waiting triplets": (
                "triplets",
                "passed_at IS NULL AND first_seen < ?",
                (now - settings.retry_window,),
            ),
            "passed triplets": (
                "triplets",
                "passed_at IS NOT NULL AND last_seen < ?",
                (now - settings.max_age,),
            ),
            "clients": ("clients", "last_seen < ?", (now - settings.max_age,)),
            "limit keys": ("limits", "tat < ?", (now,)),
        }

    async def purge(
        self, now: float, settings: GreylistSettings, *, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete what has expired, in batches; counts by kind."""
        removed: dict[str, int] = {}
        for kind, (table, where, params) in self._stale(now, settings).items():
            if dry_run:
                rows = await self._rows(
                    f"SELECT count(*) FROM {table} WHERE {where}", params
                )
                removed[kind] = int(rows[0][0])
                continue
            removed[kind] = 0
            while True:
                changed = await self._change(
                    f"DELETE FROM {table} WHERE rowid IN"
                    f" (SELECT rowid FROM {table} WHERE {where} LIMIT {PURGE_BATCH})",
                    params,
                )
                removed[kind] += changed
                if changed < PURGE_BATCH:
                    break
                # Let writers waiting for the lock in (their busy handler
                # polls); a purge that hogs the lock shows as decision latency.
                await asyncio.sleep(PURGE_PAUSE)
        return removed

    async def stats(self, settings: GreylistSettings) -> dict[str, object]:
        rows = await self._rows(
            "SELECT"
            " (SELECT count(*) FROM triplets WHERE passed_at IS NULL),"
            " (SELECT count(*) FROM triplets WHERE passed_at IS NOT NULL),"
            " (SELECT count(*) FROM clients WHERE passes >= ?),"
            " (SELECT min(first_seen) FROM triplets),"
            " (SELECT count(*) FROM limits),"
            " (SELECT value FROM store_info WHERE key = 'created_at')",
            (max(1, settings.auto_allow_after),),
        )
        waiting, passed, allowed, oldest, limit_keys, created = rows[0]
        size = sum(
            path.stat().st_size
            for path in (self.path, Path(f"{self.path}-wal"))
            if path.exists()
        )
        return {
            "triplets_waiting": waiting,
            "triplets_passed": passed,
            "clients_auto_allowed": allowed if settings.auto_allow_after else 0,
            "limit_keys": limit_keys,
            "oldest_entry": oldest,
            "store_created": created,
            "database_bytes": size,
        }
