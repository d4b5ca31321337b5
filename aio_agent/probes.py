"""HTTP probes of the agent on $PORT (aiohttp): /healthz, /readyz, /metrics.

- `GET /healthz`: 200 `{"status": "ok"}` whenever the event loop answers (liveness).
- `GET /readyz`: 200 only when registered with LiveKit and still connected, not draining, and
  the database answering when one is configured (`Store.ping`, cached about 2 s); 503 otherwise.
  The body lists every check: `{"status": "ready"|"not_ready", "checks": {"livekit": {...},
  "draining": {...}, "database": {...}}}`.
- `GET /metrics`: Prometheus text of `aio_agent.metrics.REGISTRY`.

LiveKit's own worker port (8081) answers 200 on `/` almost always, so it is not used as a signal.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aio_agent import metrics
from aio_agent.lifecycle import WorkerState


async def readiness(state: WorkerState) -> tuple[bool, dict[str, Any]]:
    """(ready, checks) for the current state."""
    livekit = state.livekit_ok()
    checks: dict[str, Any] = {
        "livekit": {
            "ok": livekit,
            "detail": f"registered as {state.worker_id}" if livekit else "not registered",
        },
        "draining": {
            "ok": not state.draining,
            "detail": "draining: no new calls" if state.draining else "accepting calls",
        },
    }
    if state.db_enabled:
        db = await state.database_ok()
        checks["database"] = {"ok": db, "detail": "reachable" if db else "unreachable"}
    else:
        checks["database"] = {"ok": True, "detail": "not configured"}
    return all(check["ok"] for check in checks.values()), checks


class ProbeServer:
    """The aiohttp app serving the probes; `await start()` binds host:port."""

    def __init__(self, state: WorkerState, *, host: str = "0.0.0.0", port: int = 8080) -> None:  # noqa: S104 - probes must be reachable from outside the container
        self.state = state
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, checks = await readiness(self.state)
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
