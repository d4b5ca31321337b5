"""State shared between the worker's main event loop and the calls it runs.

Calls run on the THREAD job executor (see aio_agent.worker): each call has its own thread and
event loop inside the one worker process. The process owns one Store (one asyncpg pool, one write
queue, flushed once on shutdown) on the main loop, and one metrics registry. `LoopBoundStore` is
how a call's loop uses that Store: non-blocking writes are handed over with
`call_soon_threadsafe`, reads run on the owning loop and are awaited from the caller's.

`WorkerState` is what /readyz reports: registered with LiveKit (and still connected), draining,
database reachable.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class LoopBoundStore:
    """A Store owned by `loop`, safe to use from any other thread's event loop."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop

    @property
    def enabled(self) -> bool:
        return bool(self._store.enabled)

    def _here(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _hand_over(self, method: Callable[..., None], **kwargs: Any) -> None:
        if self._here():
            method(**kwargs)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(functools.partial(method, **kwargs))

    async def _run_there(self, make: Callable[[], Awaitable[T]]) -> T:
        if self._here():
            return await make()

        async def runner() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        return await asyncio.wrap_future(future)

    def record_tool_call(self, **row: Any) -> None:
        self._hand_over(self._store.record_tool_call, **row)

    def save_context(self, *, caller_id: str, session_id: str, context: dict[str, Any]) -> None:
        self._hand_over(
            self._store.save_context, caller_id=caller_id, session_id=session_id, context=context
        )

    async def load_context(self, caller_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._run_there(
            lambda: self._store.load_context(caller_id)
        )
        return result

    async def search_documents(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._run_there(
            lambda: self._store.search_documents(query, limit)
        )
        return rows


@dataclass
class WorkerState:
    """Readiness inputs, updated by the worker and read by the probes server."""

    registered: bool = False
    worker_id: str | None = None
    draining: bool = False
    # Extra liveness of the LiveKit link beyond the registration event (e.g. "reconnecting").
    livekit_link: Callable[[], bool] = field(default=lambda: True)
    db_enabled: bool = False
    db_ping: Callable[[], Awaitable[bool]] | None = None
    db_cache_s: float = 2.0
    _db_checked_at: float = -1e9
    _db_ok: bool = False
    _db_lock: asyncio.Lock | None = None

    def livekit_ok(self) -> bool:
        return self.registered and self.livekit_link()

    async def database_ok(self) -> bool:
        """store.ping(), cached for `db_cache_s` so probes do not hammer the database."""
        if not self.db_enabled or self.db_ping is None:
            return True
        if self._db_lock is None:
            self._db_lock = asyncio.Lock()
        async with self._db_lock:
            now = asyncio.get_running_loop().time()
            if now - self._db_checked_at >= self.db_cache_s:
                self._db_ok = await self.db_ping()
                self._db_checked_at = asyncio.get_running_loop().time()
            return self._db_ok
