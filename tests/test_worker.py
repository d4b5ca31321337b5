"""The department worker against the fake LiveKit server: readiness, routing, shutdown, exit codes.

The fake speaks the real /agent protobuf protocol; it has no media, so a call's entrypoint gets as
far as joining the room, which the fake holds silent for `rtc_hold_s` and then refuses: that is
the "active call" a drain has to wait for.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aio_agent.config import build_config
from aio_agent.lifecycle import LoopBoundStore
from aio_agent.store import Store
from aio_agent.worker import DepartmentWorker
from tests.fakes.livekit_server import FakeLiveKitServer
from tests.support import PYTHON, process_env, render_config, valid_env
from tests.tenant_support import table_locked, tenant_dsn
from tests.test_pipeline import setup_tenants, tenant_rows

KEY = "devkey"
SECRET = "devsecret-devsecret-devsecret-00"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def readyz(port: int) -> tuple[int | None, dict[str, Any]]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None, {}


async def wait_ready(port: int, want: int, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = await readyz(port)
        if status == want:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {status} {body}, wanted {want}")
        await asyncio.sleep(0.1)


def worker_for(
    tmp_path: Path, url: str, department: str, port: int, **env: str
) -> DepartmentWorker:
    (tmp_path / department).mkdir(exist_ok=True)
    config = build_config(
        valid_env(
            DEPARTMENT_ID=department,
            DEPARTMENT_NAME=department.title(),
            LIVEKIT_URL=url,
            PORT=str(port),
            NUM_IDLE_PROCESSES="0",
            DRAIN_TIMEOUT="20",
            CONFIG_PATH=str(tmp_path / department / "config.yaml"),
            **env,
        )
    )
    # load_threshold=inf: the machine running the tests is shared; the framework's CPU-based
    # load shedding would otherwise make the worker decline calls at random.
    return DepartmentWorker(
        config,
        store=Store.from_config(config),
        max_retry=4,
        load_threshold=math.inf,
        probe_host="127.0.0.1",
    )


async def test_readyz_follows_registration_and_drain_waits_for_the_active_call(tmp_path):
    lk_port, probe_port = free_port(), free_port()
    worker = worker_for(tmp_path, f"ws://127.0.0.1:{lk_port}", "hr", probe_port)
    run = asyncio.create_task(worker.run(handle_signals=False))
    fake = FakeLiveKitServer(KEY, SECRET, port=lk_port, rtc_hold_s=0.5)
    try:
        body = await wait_ready(probe_port, 503, within=15)
        assert body["checks"]["livekit"] == {"ok": False, "detail": "not registered"}

        await fake.start()  # LiveKit comes up after the worker: it registers on a retry
        body = await wait_ready(probe_port, 200, within=15)
        (registered,) = fake.connected_workers("hr")
        assert body["checks"]["livekit"]["detail"] == f"registered as {registered.worker_id}"

        job = await fake.dispatch("hr", "call-drain")
        assert job.worker_id == registered.worker_id
        await fake.wait_for(lambda: "JS_RUNNING" in job.statuses, within=10)

        worker.request_stop("test")
        status, body = await readyz(probe_port)
        assert status == 503 and body["checks"]["draining"]["ok"] is False
        assert not run.done()  # still waiting for the call

        assert await asyncio.wait_for(run, timeout=30) == 0
        assert job.statuses[-1] in ("JS_SUCCESS", "JS_FAILED")  # the call ended before the exit
    finally:
        if not run.done():
            worker.request_stop("cleanup")
            await asyncio.wait_for(run, timeout=30)
        await fake.stop()


async def test_a_call_dispatched_to_accounting_never_reaches_the_hr_worker(tmp_path):
    fake = FakeLiveKitServer(KEY, SECRET, rtc_hold_s=0.2)
    await fake.start()
    hr = worker_for(tmp_path, fake.url, "hr", free_port())
    accounting = worker_for(tmp_path, fake.url, "accounting", free_port())
    runs = [asyncio.create_task(w.run(handle_signals=False)) for w in (hr, accounting)]
    try:
        await fake.wait_for(lambda: len(fake.connected_workers()) == 2, within=20)
        (hr_record,) = fake.connected_workers("hr")
        (acc_record,) = fake.connected_workers("accounting")

        job = await fake.dispatch("accounting", "call-acc")
        assert job.worker_id == acc_record.worker_id
        assert hr_record.offered_jobs == []

        # Even a misrouting server cannot make the HR worker take an accounting call.
        misrouted = await fake.dispatch("accounting", "call-mis", to_worker=hr_record.worker_id)
        assert misrouted.offered_to == [hr_record.worker_id]
        assert misrouted.accepted is False and misrouted.worker_id is None
        assert hr_record.assigned_jobs == [] and hr.server is not None
        assert hr.server.active_jobs == []
    finally:
        for worker in (hr, accounting):
            worker.request_stop("test over")
        assert await asyncio.wait_for(asyncio.gather(*runs), timeout=30) == [0, 0]
        await fake.stop()


@pytest.mark.slow
async def test_a_graceful_stop_writes_every_queued_row_before_exiting(
    tmp_path, pg_cluster, pg_database
):
    await setup_tenants(pg_cluster, pg_database, "hr")
    url = tenant_dsn(pg_cluster, "hr", pg_database)
    fake = FakeLiveKitServer(KEY, SECRET)
    await fake.start()
    probe_port = free_port()
    worker = worker_for(tmp_path, fake.url, "hr", probe_port, POSTGRES_URL=url)
    run = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_ready(probe_port, 200, within=20)  # registered, database reachable
        # A slow database: another session holds tool_calls, so the rows wait in the queue.
        async with table_locked(pg_cluster, pg_database, "hr_tenant.tool_calls"):
            for n in range(50):
                worker.store.record_tool_call(
                    session_id=f"call-{n}",
                    tool="lookup_policy",
                    arguments={"n": n},
                    status="ok",
                    http_status=200,
                    latency_ms=1.0,
                    attempts=1,
                    error=None,
                    response_bytes=10,
                )
            worker.request_stop("test")
            await asyncio.sleep(1.0)
            assert not run.done()  # the stop waits for the queue, not for nothing
        # The database answers again, within the flush timeout.
        assert await asyncio.wait_for(run, timeout=30) == 0
    finally:
        if not run.done():
            worker.request_stop("cleanup")
            await asyncio.wait_for(run, timeout=30)
        await fake.stop()
    rows = await tenant_rows(url, "hr", "SELECT session_id FROM tool_calls")
    assert sorted(int(r["session_id"].removeprefix("call-")) for r in rows) == list(range(50))


async def test_livekit_unreachable_past_the_retries_exits_69(tmp_path):
    worker = worker_for(tmp_path, f"ws://127.0.0.1:{free_port()}", "hr", free_port())
    # One retry instead of the default 16 (~130 s): the same code path, minus the waiting.
    worker.max_retry = 1
    assert await asyncio.wait_for(worker.run(handle_signals=False), timeout=30) == 69
    assert worker.state.registered is False


# --- the real process: signals and exit codes ---------------------------------------------------
def start_process(config_path: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "aio_agent", "start", "--config", str(config_path), *extra],
        env=process_env({}),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )


def spawn_quiet(module: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", module, *args],
        env=process_env({}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def events(log_path: Path) -> list[dict[str, Any]]:
    lines = log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int:
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("worker did not exit in time")
        await asyncio.sleep(0.1)
    return proc.returncode


@pytest.mark.slow
async def test_sigterm_with_an_active_call_waits_for_it_and_exits_0(tmp_path):
    fake = FakeLiveKitServer(KEY, SECRET, rtc_hold_s=1.5)
    await fake.start()
    port = free_port()
    config_path, _ = render_config(
        tmp_path, LIVEKIT_URL=fake.url, PORT=str(port), LLM_API_KEY="changeme-llm-key"
    )
    log_path = tmp_path / "worker.log"
    proc = start_process(config_path, log_path, "--load-threshold", "inf")
    try:
        await wait_ready(port, 200, within=60)
        job = await fake.dispatch("hr", "call-term")
        await fake.wait_for(lambda: "JS_RUNNING" in job.statuses, within=10)

        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await readyz(port)
        assert status == 503 and body["checks"]["draining"]["ok"] is False
        assert await wait_exit(proc, within=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await fake.stop()

    names = [e["event"] for e in events(log_path)]
    assert names.count("running without persistence") == 1
    placeholders = [e for e in events(log_path) if e["event"] == "placeholder credential"]
    assert sorted(e["variable"] for e in placeholders) == [
        "LLM_API_KEY",
        "STT_API_KEY",
        "TTS_API_KEY",
    ]
    assert "changeme-llm-key" not in log_path.read_text()
    draining = next(e for e in events(log_path) if e["event"] == "draining")
    assert draining["active_calls"] == 1
    assert names.index("draining") < names.index("call_ended") < names.index("worker_stopped")
    assert all(e.get("department_id") == "hr" for e in events(log_path) if e["logger"] != "livekit")


def test_start_without_a_rendered_config_exits_78_and_says_how_to_render_it(tmp_path):
    result = subprocess.run(
        [PYTHON, "-m", "aio_agent", "start", "--config", str(tmp_path / "missing.yaml")],
        env=process_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "python -m aio_agent.config render" in result.stderr


def test_help_exits_0_and_unknown_options_exit_64():
    ok = subprocess.run(
        [PYTHON, "-m", "aio_agent", "start", "--help"],
        env=process_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0 and "--livekit-max-retry" in ok.stdout
    bad = subprocess.run(
        [PYTHON, "-m", "aio_agent", "start", "--no-such-option"],
        env=process_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 64 and "unrecognized arguments" in bad.stderr


@pytest.mark.slow
async def test_the_fake_livekit_runs_standalone_for_compose_and_checks_tokens():
    port = free_port()
    proc = spawn_quiet(
        "tests.fakes.livekit_server", "--host", "127.0.0.1", "--port", str(port),
        "--api-key", KEY, "--api-secret", SECRET,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "fake livekit did not start"
                    await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{port}/agent") as response:
                assert response.status == 401  # no worker token, no worker protocol
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, within=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


class ThreadNotingStore:
    """A Store stand-in that notes which thread each call ran on (asyncpg/asyncio are not
    thread-safe, so every call must run on the loop that owns the real Store)."""

    enabled = True

    def __init__(self) -> None:
        self.threads: list[str] = []

    def save_context(self, *, caller_id: str, session_id: str, context: dict[str, Any]) -> None:
        self.threads.append(threading.current_thread().name)

    def record_tool_call(self, **row: Any) -> None:
        self.threads.append(threading.current_thread().name)

    async def load_context(self, caller_id: str) -> dict[str, Any] | None:
        self.threads.append(threading.current_thread().name)
        return {"caller": caller_id}

    async def search_documents(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        self.threads.append(threading.current_thread().name)
        return [{"title": query}]


async def test_a_call_thread_uses_the_process_store_on_the_main_loop_only():
    store = ThreadNotingStore()
    proxy = LoopBoundStore(store, asyncio.get_running_loop())

    async def call_on_its_own_loop() -> tuple[Any, Any]:
        proxy.save_context(caller_id="c1", session_id="s1", context={})
        proxy.record_tool_call(session_id="s1", tool="t")
        return await proxy.load_context("c1"), await proxy.search_documents("leave")

    def job_thread() -> tuple[Any, Any]:
        return asyncio.run(call_on_its_own_loop())

    loaded, found = await asyncio.to_thread(job_thread)
    await asyncio.sleep(0)  # let the handed-over writes run
    assert loaded == {"caller": "c1"} and found == [{"title": "leave"}]
    assert store.threads == [threading.main_thread().name] * 4
