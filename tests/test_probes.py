"""The HTTP probes: what /healthz, /readyz and /metrics answer in each worker state."""

from __future__ import annotations

import aiohttp
import pytest

from aio_agent import metrics
from aio_agent.lifecycle import WorkerState
from aio_agent.probes import ProbeServer


class Ping:
    """A database ping that answers `ok` and counts how often it was asked."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.ok


@pytest.fixture
async def probe():
    servers: list[ProbeServer] = []

    async def start(state: WorkerState) -> str:
        server = ProbeServer(state, host="127.0.0.1", port=0)
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.stop()


async def get(url: str) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_healthz_answers_while_the_loop_runs_even_before_registration(probe):
    base = await probe(WorkerState())
    assert await get(base + "/healthz") == (200, {"status": "ok"})


async def test_readyz_is_503_until_registered_then_200_then_503_while_draining(probe):
    state = WorkerState()
    base = await probe(state)

    status, body = await get(base + "/readyz")
    assert status == 503 and body["checks"]["livekit"]["ok"] is False

    state.registered, state.worker_id = True, "AW_1"
    status, body = await get(base + "/readyz")
    assert status == 200 and body["status"] == "ready"
    assert body["checks"]["database"] == {"ok": True, "detail": "not configured"}

    state.draining = True
    status, body = await get(base + "/readyz")
    assert status == 503 and body["checks"]["draining"]["ok"] is False


async def test_readyz_is_503_while_the_livekit_link_is_reconnecting(probe):
    link = {"up": True}
    state = WorkerState(registered=True, livekit_link=lambda: link["up"])
    base = await probe(state)
    assert (await get(base + "/readyz"))[0] == 200
    link["up"] = False
    assert (await get(base + "/readyz"))[0] == 503


async def test_readyz_reports_an_unreachable_database_and_caches_the_ping(probe):
    ping = Ping(ok=False)
    state = WorkerState(registered=True, db_enabled=True, db_ping=ping, db_cache_s=60)
    base = await probe(state)

    status, body = await get(base + "/readyz")
    assert status == 503
    assert body["checks"]["database"] == {"ok": False, "detail": "unreachable"}
    for _ in range(5):
        await get(base + "/readyz")
    assert ping.calls == 1

    ping.ok = True
    state.db_cache_s = 0
    assert (await get(base + "/readyz"))[0] == 200


async def test_metrics_exposes_sessions_tool_calls_and_db_queue_series(probe):
    metrics.TOOL_CALLS.labels(tool="probe_test_tool", status="ok").inc()
    base = await probe(WorkerState())
    status, text = await get(base + "/metrics")
    assert status == 200
    for series in (
        "aio_active_sessions",
        'aio_tool_calls_total{status="ok",tool="probe_test_tool"}',
        "aio_tool_call_duration_seconds",
        "aio_db_queue_depth",
        "aio_db_queue_dropped_total",
    ):
        assert series in text
