"""Tenant persistence: tool-call records and caller context in the department's schema.

Writes never make a caller wait. `record_tool_call` and `save_context` put the row on a bounded
in-memory queue (capacity database.queue_size) and return at once; one background task drains it
in batches (one transaction per batch, a span and metrics per batch). When the queue is full the
write is dropped: counted (`dropped`, aio_db_queue_dropped_total) and logged at most every 10 s.
When the database is unreachable the writer keeps the batch and retries with backoff (0.5 s up to
5 s) while new writes queue up (and overflow); a row PostgreSQL refuses for its content is logged
and skipped, never retried. `stop()` flushes the queue for up to `flush_timeout` seconds and logs
(and counts as dropped) whatever it could not write.

Connections use the tenant role's URL with `search_path` and `app.department_id` set
(`naming.tenant_server_settings`), so row-level security sees the department. The pool is lazy
(min_size 0): a database that is down when the agent starts does not stop it; reads then fail
(`load_context` returns None, `search_documents` raises StoreError, `ping` is False).
Sensitive JSON is sealed/opened by `aio_agent.crypto.DataCipher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from aio_agent import metrics
from aio_agent.crypto import DataCipher, DecryptionError
from aio_agent.logs import get_logger
from aio_agent.naming import tenant_server_settings
from aio_agent.telemetry import tracer

log = get_logger(__name__)

BATCH_MAX = 200
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
DROP_LOG_INTERVAL_S = 10.0
CONNECT_TIMEOUT_S = 5.0
POOL_MAX = 4
# SQLSTATE classes that mean "try again later", not "this row is wrong":
# 08 connection, 28 authorization (password being rotated), 3D database missing (not created yet),
# 40 rollback (serialization), 53 insufficient resources, 57 operator intervention (shutdown).
TRANSIENT_SQLSTATE_CLASSES = ("08", "28", "3D", "40", "53", "57")

INSERT_TOOL_CALL = """
INSERT INTO tool_calls
    (session_id, tool, arguments, status, http_status, latency_ms, attempts, error, response_bytes)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9)
"""
UPSERT_CONTEXT = """
INSERT INTO session_context (caller_id, session_id, context, updated_at)
VALUES ($1, $2, $3::jsonb, now())
ON CONFLICT (department_id, caller_id)
DO UPDATE SET session_id = EXCLUDED.session_id, context = EXCLUDED.context, updated_at = now()
"""
SELECT_CONTEXT = "SELECT context::text FROM session_context WHERE caller_id = $1"


class StoreError(RuntimeError):
    """A read the database could not answer (unreachable, or disabled persistence)."""


@dataclass(frozen=True)
class _Write:
    table: str
    values: dict[str, Any]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return isinstance(exc, asyncpg.PostgresConnectionError) or state.startswith(
            TRANSIENT_SQLSTATE_CLASSES
        )
    return False


class Store:
    """The department's tenant tables, or a no-op when no database is configured."""

    def __init__(
        self,
        *,
        department_id: str,
        url: str | None,
        queue_size: int = 1000,
        cipher: DataCipher | None = None,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.department_id = department_id
        self._url = url
        self.enabled = url is not None
        self._cipher = cipher or DataCipher(department_id=department_id)
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(maxsize=max(1, queue_size))
        self._pool: asyncpg.Pool | None = None
        self._pool_lock: asyncio.Lock | None = None
        self._writer: asyncio.Task[None] | None = None
        self._in_flight: list[_Write] = []
        self._pending_context: dict[str, dict[str, Any]] = {}
        self._dropped = 0
        self._drops_unlogged = 0
        self._last_drop_log = 0.0
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._stopped = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Store:
        """The store the rendered config describes; disabled when database.url is null."""
        database = config.get("database") or {}
        return cls(
            department_id=config["department"]["id"],
            url=database.get("url"),
            queue_size=int(database.get("queue_size") or 1000),
            cipher=DataCipher.from_config(config),
        )

    # --- state ----------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def cipher(self) -> DataCipher:
        return self._cipher

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background writer. Never fails because the database is down."""
        if not self.enabled:
            log.info("persistence_disabled", reason="POSTGRES_URL is not set")
            return
        if self._writer is None:
            self._pool_lock = asyncio.Lock()
            self._writer = asyncio.create_task(self._write_loop(), name="aio-store-writer")
        with contextlib.suppress(Exception):
            if not await self.ping(timeout=2.0):
                log.warning("database_unreachable_at_start", retrying="in the background")

    async def flush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - like stop()
        """Wait until every queued write is done (written or refused); False on timeout."""
        if self._writer is None:
            return self._queue.empty()
        try:
            await asyncio.wait_for(self._queue.join(), timeout=max(0.0, timeout))
        except TimeoutError:
            return False
        return True

    async def stop(self, flush_timeout: float = 10.0) -> None:
        """Write what is queued (up to flush_timeout seconds), then close the pool."""
        self._stopped = True
        if self._writer is not None:
            await self.flush(flush_timeout)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
            lost = self._queue.qsize() + len(self._in_flight)
            if lost:
                self._count_dropped(lost)
                log.error(
                    "database_writes_lost_on_stop",
                    lost=lost,
                    flush_timeout_s=flush_timeout,
                    dropped_total=self._dropped,
                )
                while not self._queue.empty():
                    self._queue.get_nowait()
                    self._queue.task_done()
                self._in_flight = []
            else:
                log.info("database_queue_flushed")
            metrics.DB_QUEUE_DEPTH.set(0)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=2.0)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    # --- writes (never block) -------------------------------------------------------------------
    def record_tool_call(
        self,
        *,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        status: str,
        http_status: int | None,
        latency_ms: float,
        attempts: int,
        error: str | None,
        response_bytes: int | None,
    ) -> None:
        """Queue one tool_calls row; dropped and counted when the queue is full."""
        self._enqueue(
            _Write(
                "tool_calls",
                {
                    "session_id": session_id,
                    "tool": tool,
                    "arguments": arguments,
                    "status": status,
                    "http_status": http_status,
                    "latency_ms": float(latency_ms),
                    "attempts": int(attempts),
                    "error": error,
                    "response_bytes": response_bytes,
                },
            )
        )

    def save_context(self, *, caller_id: str, session_id: str, context: dict[str, Any]) -> None:
        """Queue an upsert of the caller's context (load_context sees it before it is written)."""
        if not self.enabled:
            return
        if self._enqueue(
            _Write(
                "session_context",
                {"caller_id": caller_id, "session_id": session_id, "context": context},
            )
        ):
            self._pending_context[caller_id] = context

    def _enqueue(self, write: _Write) -> bool:
        if not self.enabled:
            return False
        if self._stopped:
            self._count_dropped(1)
            return False
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            self._count_dropped(1)
            return False
        metrics.DB_QUEUE_DEPTH.set(self._queue.qsize())
        return True

    def _count_dropped(self, count: int) -> None:
        self._dropped += count
        self._drops_unlogged += count
        metrics.DB_QUEUE_DROPPED.inc(count)
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S or self._last_drop_log == 0.0:
            log.warning(
                "database_writes_dropped",
                dropped=self._drops_unlogged,
                dropped_total=self._dropped,
                queue_size=self._queue.maxsize,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    # --- reads ----------------------------------------------------------------------------------
    async def load_context(self, caller_id: str) -> dict[str, Any] | None:
        """The caller's saved context, or None (unknown caller, no database, unreadable row)."""
        if not self.enabled:
            return None
        if caller_id in self._pending_context:
            return self._pending_context[caller_id]
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                text = await conn.fetchval(SELECT_CONTEXT, caller_id)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("context_load_failed", caller_id=caller_id, error=type(exc).__name__)
            return None
        if text is None:
            return None
        try:
            value = self._cipher.open(json.loads(text), table="session_context", column="context")
        except DecryptionError as exc:
            log.error("context_unreadable", caller_id=caller_id, error=str(exc))
            return None
        return value if isinstance(value, dict) else {"value": value}

    async def search_documents(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        """Ranked full-text search over the department's drive_documents (StoreError if down)."""
        if not self.enabled:
            raise StoreError("document search needs a database (POSTGRES_URL is not set)")
        from aio_agent import documents  # noqa: PLC0415 - tenant-DB module, loaded when used

        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                return await documents.search_documents(conn, query, limit)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"document search failed: {type(exc).__name__}") from exc

    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - the interface
        """True when a `SELECT 1` on the tenant connection answers within `timeout` seconds."""
        if not self.enabled:
            return False
        try:
            async with asyncio.timeout(timeout):
                pool = await self._get_pool()
                async with pool.acquire() as conn:
                    return bool(await conn.fetchval("SELECT 1") == 1)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    # --- internals ------------------------------------------------------------------------------
    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            if self._pool is None:
                # min_size=0: creating the pool opens no connection, so it cannot fail when the
                # database is down; connections are opened (and re-opened) on acquire.
                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=0,
                    max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=30,
                    max_inactive_connection_lifetime=60,
                    server_settings=tenant_server_settings(self.department_id),
                )
        return self._pool

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = list(batch)
            metrics.DB_QUEUE_DEPTH.set(self._queue.qsize())
            delay = self._retry_min_s
            while self._in_flight:
                try:
                    await self._write_batch()
                except Exception as exc:  # noqa: BLE001 - the writer must outlive any error
                    if not _is_transient(exc):
                        log.error("database_write_failed", error=_name(exc), rows=len(batch))
                        for write in self._in_flight:
                            metrics.DB_WRITES.labels(table=write.table, status="error").inc()
                        break
                    log.warning(
                        "database_write_retry",
                        error=_name(exc),
                        rows=len(self._in_flight),
                        queued=self._queue.qsize(),
                        retry_in_s=delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max_s)
            self._in_flight = []
            for write in batch:
                if write.table == "session_context":
                    caller = write.values["caller_id"]
                    if self._pending_context.get(caller) is write.values["context"]:
                        del self._pending_context[caller]
                self._queue.task_done()

    async def _write_batch(self) -> None:
        """Write self._in_flight in one transaction, emptying it.

        If PostgreSQL refuses a row for its content, the rows are written one at a time instead so
        one bad row loses only itself; a transient error leaves the unwritten rows in _in_flight.
        """
        pool = await self._get_pool()
        rows = len(self._in_flight)
        with tracer().start_as_current_span(
            "aio.db_write_batch",
            attributes={"aio.department_id": self.department_id, "aio.rows": rows},
        ):
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                try:
                    async with conn.transaction():
                        for write in self._in_flight:
                            await self._execute(conn, write)
                except Exception as exc:
                    if _is_transient(exc):
                        raise
                    log.warning("database_batch_refused", error=_name(exc), rows=rows)
                else:
                    for write in self._in_flight:
                        metrics.DB_WRITES.labels(table=write.table, status="ok").inc()
                    self._in_flight = []
                    return
                while self._in_flight:
                    write = self._in_flight[0]
                    try:
                        await self._execute(conn, write)
                    except Exception as row_exc:
                        if _is_transient(row_exc):
                            raise
                        metrics.DB_WRITES.labels(table=write.table, status="error").inc()
                        log.error("database_row_refused", table=write.table, error=_name(row_exc))
                    else:
                        metrics.DB_WRITES.labels(table=write.table, status="ok").inc()
                    self._in_flight.pop(0)

    async def _execute(self, conn: asyncpg.Connection, write: _Write) -> None:
        v = write.values
        if write.table == "tool_calls":
            sealed = self._cipher.seal(v["arguments"], table="tool_calls", column="arguments")
            await conn.execute(
                INSERT_TOOL_CALL,
                v["session_id"],
                v["tool"],
                _json(sealed),
                v["status"],
                v["http_status"],
                v["latency_ms"],
                v["attempts"],
                v["error"],
                v["response_bytes"],
            )
        else:
            sealed = self._cipher.seal(v["context"], table="session_context", column="context")
            await conn.execute(UPSERT_CONTEXT, v["caller_id"], v["session_id"], _json(sealed))


def _name(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
