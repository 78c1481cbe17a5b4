"""One small transaction interface over SQLite (embedded) and PostgreSQL (distributed).

SQL is written once with ``?`` placeholders; the PostgreSQL side rewrites them to ``%s``.
Every failure to reach the database becomes :class:`CatalogUnavailable`, which the listener
turns into a "retry later" status, so an outage never looks like a bad instance.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from shared.storage.catalog.migrations import MIGRATIONS, Dialect

Row = tuple[Any, ...]


class CatalogError(Exception):
    """Base class of catalog errors."""


class CatalogUnavailable(CatalogError):
    """The catalog database cannot be reached or is busy; retrying may succeed."""


class Transaction(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; returns its rows (empty for statements without a result)."""
        ...


class Database(Protocol):
    dialect: Dialect

    @contextmanager
    def transaction(self, write: bool = True, durable: bool = True) -> Iterator[Transaction]:
        """A transaction that commits when the block ends and rolls back on an exception.

        ``write=False`` promises only reads, which lets SQLite skip the write lock.
        ``durable=False`` is for state the pipeline can derive again (a stage's result): the
        commit is atomic but may be rolled back by a power cut, which spares SQLite a flush.
        """
        ...

    def close(self) -> None: ...


class _SqliteTransaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._connection.execute(sql, tuple(params)).fetchall()


class SqliteDatabase:
    """SQLite in WAL mode with ``synchronous=FULL``: a committed row survives power loss.

    Connections come from a small pool rather than one per thread: pynetdicom runs every
    association on a new thread, and per-thread connections would leak one file handle per
    association. Writers take the lock up front (``BEGIN IMMEDIATE``) so concurrent
    associations queue on ``busy_timeout`` instead of failing with "database is locked";
    readers use a deferred transaction and never wait for a writer (WAL).
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float = 30.0, max_idle: int = 8) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._max_idle = max_idle

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    def _acquire(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def _release(self, connection: sqlite3.Connection) -> None:
        if self._idle.qsize() < self._max_idle:
            self._idle.put(connection)
        else:
            connection.close()

    @contextmanager
    def transaction(self, write: bool = True, durable: bool = True) -> Iterator[Transaction]:
        try:
            connection = self._acquire()
            connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise CatalogUnavailable(f"SQLite catalog {self.path}: {exc}") from exc
        try:
            try:
                yield _SqliteTransaction(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                connection.execute("ROLLBACK")
                raise CatalogUnavailable(f"SQLite catalog {self.path}: commit failed: {exc}") from exc
        finally:
            self._release(connection)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _PostgresTransaction:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(sql.replace("?", "%s"), tuple(params))
        return self._cursor.fetchall() if self._cursor.description else []


class PostgresDatabase:
    """PostgreSQL through a psycopg 3 connection pool that checks connections before use.

    Checking on checkout lets the pool recover by itself after the server restarts: dead
    connections are dropped and replaced rather than handed to a caller.

    ``reconnect_timeout`` is the request timeout, not psycopg_pool's 5 minutes: a failed
    reconnection is retried with exponential backoff until it gives up, so after a
    10-second outage the next retry could be 8-16 s away and the first C-STORE after the
    server is back would still time out (0xA700). Giving up within one request's timeout
    lets the next request start a fresh attempt at once.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, max_connections: int = 20, timeout_s: float = 5.0) -> None:
        from psycopg_pool import ConnectionPool

        self.url = url
        self._timeout_s = timeout_s
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            timeout=timeout_s,
            reconnect_timeout=timeout_s,
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(timeout_s)), "autocommit": False},
            open=False,
            name="medhash-catalog",
        )
        self._pool.open(wait=False)

    @contextmanager
    def transaction(self, write: bool = True, durable: bool = True) -> Iterator[Transaction]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection(timeout=self._timeout_s) as connection:
                with connection.cursor() as cursor:
                    yield _PostgresTransaction(cursor)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise CatalogUnavailable(f"PostgreSQL catalog unreachable: {exc}") from exc

    def close(self) -> None:
        self._pool.close()


def open_database(database_url: str | None, sqlite_path: Path) -> Database:
    """PostgreSQL when a URL is configured, else SQLite at ``sqlite_path``; migrated."""
    database: Database
    if database_url:
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise CatalogError(
                f"MEDHASH_DATABASE_URL must be a postgresql:// URL, got {database_url.split(':')[0]}://"
            )
        database = PostgresDatabase(database_url)
    else:
        database = SqliteDatabase(sqlite_path)
    migrate(database)
    return database


def migrate(database: Database) -> int:
    """Apply every migration newer than the database's version; returns the version reached.

    Runs in one transaction per migration, and PostgreSQL takes an advisory lock first so
    several services starting at once do not race to create the same tables.
    """
    with database.transaction() as tx:
        if database.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(7243901)")
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
            "applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
        )
    current = 0
    for migration in MIGRATIONS:
        with database.transaction() as tx:
            if database.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(7243901)")
            applied = tx.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            )
            if not applied:
                for statement in migration.render(database.dialect):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                    (migration.version, migration.description),
                )
        current = migration.version
    return current
