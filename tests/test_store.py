"""Tenant persistence on a real PostgreSQL with the real migrations: rows, encryption, outages."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aio_agent import metrics
from aio_agent.crypto import key_id
from aio_agent.db import connect_tenant
from aio_agent.migrate import default_migrations_dir, load_migrations, migrate
from aio_agent.store import Store, StoreError
from aio_agent.tools import N8nToolClient
from tests.fakes.n8n_server import FakeN8n
from tests.pgcluster import PostgresCluster, free_port
from tests.tenant_support import provision, tenant_dsn

KEY = base64.b64encode(os.urandom(32)).decode()
NEW_KEY = base64.b64encode(os.urandom(32)).decode()
SECRET = "store-test-n8n-secret"


def setup_tenants(cluster: PostgresCluster, dbname: str, *departments: str) -> None:
    """Role + schema (tenant.py, as an operator would) and tables (the real migrations)."""
    provision(cluster, dbname, *departments)

    async def run() -> None:
        for department in departments:
            conn = await connect_tenant(tenant_dsn(cluster, department, dbname), department)
            try:
                await migrate(conn, department, load_migrations(default_migrations_dir()))
            finally:
                await conn.close()

    asyncio.run(run())


@pytest.fixture
def hr_url(pg_cluster: PostgresCluster, pg_database: str) -> str:
    setup_tenants(pg_cluster, pg_database, "hr")
    return tenant_dsn(pg_cluster, "hr", pg_database)


def config(
    url: str | None,
    *,
    key: str | None = None,
    old: list[str] | None = None,
    queue_size: int = 1000,
    base: str = "http://127.0.0.1:9/webhook",
) -> dict[str, Any]:
    return {
        "department": {"id": "hr"},
        "n8n": {"webhook_base": base, "webhook_secret": SECRET},
        "tools": [
            {"name": "lookup_policy", "kind": "n8n", "url": f"{base}/hr/lookup_policy",
             "timeout_s": 2.0, "description": "", "parameters": {"type": "object"}},
        ],
        "database": {"url": url, "queue_size": queue_size},
        "security": {"data_encryption_key": key, "data_encryption_old_keys": old or []},
    }  # fmt: skip


async def tenant_rows(url: str, sql: str) -> list[dict[str, Any]]:
    """Read back as the tenant role (search_path and RLS setting of hr)."""
    conn = await connect_tenant(url, "hr")
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_tool_calls_land_in_the_tenant_table_with_every_field(hr_url):
    async with FakeN8n(secret=SECRET) as n8n:
        n8n.answer("hr", "lookup_policy", {"policy": "25 days"})
        store = Store.from_config(config(hr_url))
        await store.start()
        client = N8nToolClient(config(hr_url, base=n8n.base_url), store=store)
        try:
            ok = await client.call("lookup_policy", {"topic": "leave"}, session_id="room-1")
            n8n.reject("hr", "lookup_policy", status=404)
            refused = await client.call("lookup_policy", {"topic": "nope"}, session_id="room-1")
        finally:
            await client.aclose()
            await store.stop()

    rows = await tenant_rows(hr_url, "SELECT * FROM hr_tenant.tool_calls ORDER BY id")
    assert [(r["department_id"], r["session_id"], r["tool"]) for r in rows] == [
        ("hr", "room-1", "lookup_policy")
    ] * 2
    assert json.loads(rows[0]["arguments"]) == {"topic": "leave"}
    assert (rows[0]["status"], rows[0]["http_status"], rows[0]["attempts"]) == ("ok", 200, 1)
    assert rows[0]["error"] is None and rows[0]["response_bytes"] == ok.response_bytes
    assert rows[0]["latency_ms"] == pytest.approx(ok.latency_ms)
    assert (rows[1]["status"], rows[1]["http_status"]) == ("rejected", 404)
    assert rows[1]["error"] == refused.error and "HTTP 404" in rows[1]["error"]
    assert store.dropped == 0


async def test_caller_context_is_saved_and_restored_for_the_same_caller_only(hr_url):
    store = Store.from_config(config(hr_url))
    await store.start()
    store.save_context(caller_id="+4915100001", session_id="s1", context={"name": "Ana"})
    store.save_context(caller_id="+4915100001", session_id="s2", context={"name": "Ana", "n": 2})
    assert await store.flush(5.0)
    assert await store.load_context("+4915100001") == {"name": "Ana", "n": 2}
    assert await store.load_context("+4915199999") is None
    await store.stop()

    fresh = Store.from_config(config(hr_url))  # a later worker process
    await fresh.start()
    try:
        assert await fresh.load_context("+4915100001") == {"name": "Ana", "n": 2}
    finally:
        await fresh.stop()
    (row,) = await tenant_rows(hr_url, "SELECT * FROM session_context")
    assert (row["session_id"], row["department_id"]) == ("s2", "hr")


async def test_encrypted_rows_are_unreadable_without_the_key_and_open_with_it_or_as_old_key(
    hr_url,
):
    store = Store.from_config(config(hr_url, key=KEY))
    await store.start()
    store.record_tool_call(
        session_id="s", tool="lookup_policy", arguments={"employee": "Jürgen Müller"},
        status="ok", http_status=200, latency_ms=1.0, attempts=1, error=None, response_bytes=10,
    )  # fmt: skip
    store.save_context(caller_id="c1", session_id="s", context={"salary": 71000})
    await store.stop()

    (call,) = await tenant_rows(hr_url, "SELECT arguments::text AS a FROM tool_calls")
    (ctx,) = await tenant_rows(hr_url, "SELECT context::text AS c FROM session_context")
    for stored in (json.loads(call["a"]), json.loads(ctx["c"])):
        assert stored["enc"] == "aes-256-gcm"
        assert stored["kid"] == key_id(base64.b64decode(KEY))
    assert "Müller" not in call["a"] and "71000" not in ctx["c"]

    keyless = Store.from_config(config(hr_url))
    rotated = Store.from_config(config(hr_url, key=NEW_KEY, old=[KEY]))
    same = Store.from_config(config(hr_url, key=KEY))
    try:
        assert await keyless.load_context("c1") is None
        assert await same.load_context("c1") == {"salary": 71000}
        assert await rotated.load_context("c1") == {"salary": 71000}
        opened = rotated.cipher.open(json.loads(call["a"]), table="tool_calls", column="arguments")
        assert opened == {"employee": "Jürgen Müller"}
    finally:
        for s in (keyless, rotated, same):
            await s.stop()


async def test_stop_flushes_every_queued_write_when_the_database_is_up(hr_url):
    store = Store.from_config(config(hr_url))
    await store.start()
    for i in range(300):
        store.record_tool_call(
            session_id=f"s{i % 7}", tool="lookup_policy", arguments={"i": i}, status="ok",
            http_status=200, latency_ms=0.5, attempts=1, error=None, response_bytes=2,
        )  # fmt: skip
    await store.stop(flush_timeout=10)
    rows = await tenant_rows(hr_url, "SELECT count(*) AS n FROM tool_calls")
    assert rows[0]["n"] == 300
    assert store.dropped == 0


async def test_a_disabled_store_is_a_quiet_no_op():
    store = Store.from_config(config(None))
    await store.start()
    assert not store.enabled
    store.record_tool_call(
        session_id="s", tool="t", arguments={}, status="ok", http_status=200,
        latency_ms=1.0, attempts=1, error=None, response_bytes=1,
    )  # fmt: skip
    store.save_context(caller_id="c", session_id="s", context={})
    assert store.queue_depth == 0 and store.dropped == 0
    assert await store.load_context("c") is None
    assert not await store.ping()
    with pytest.raises(StoreError):
        await store.search_documents("leave")
    await store.stop()


async def test_start_with_the_database_down_does_not_fail_and_ping_says_so():
    url = f"postgresql://hr_agent:pw@127.0.0.1:{free_port()}/aio"
    store = Store.from_config(config(url))
    started = time.monotonic()
    await store.start()
    assert not await store.ping(timeout=1.0)
    assert await store.load_context("c") is None
    with pytest.raises(StoreError):
        await store.search_documents("leave")
    await store.stop(flush_timeout=0.5)
    assert time.monotonic() - started < 5


async def test_search_documents_returns_ranked_matches_of_the_department(
    pg_cluster, pg_database, hr_url
):
    pg_cluster.psql(
        "SET app.department_id = 'hr'; INSERT INTO hr_tenant.drive_documents "
        "(drive_file_id, title, content) VALUES "
        "('f1', 'Leave policy', 'Employees get 25 days of annual leave.'), "
        "('f2', 'Expenses', 'Submit receipts within 30 days.')",
        dbname=pg_database,
    )
    store = Store.from_config(config(hr_url))
    await store.start()
    try:
        found = await store.search_documents("annual leave", limit=5)
    finally:
        await store.stop()
    assert [d["drive_file_id"] for d in found] == ["f1"]
    assert "leave" in found[0]["snippet"].lower()


# --- outages: a cluster of our own, so stopping it cannot disturb other tests -----------------
@pytest.fixture(scope="module")
def own_cluster() -> Iterator[tuple[PostgresCluster, str]]:
    cluster = PostgresCluster.create()
    try:
        dbname = cluster.create_database()
        setup_tenants(cluster, dbname, "hr")
        yield cluster, tenant_dsn(cluster, "hr", dbname)
    finally:
        cluster.destroy()


def down_store(url: str, queue_size: int) -> Store:
    return Store(
        department_id="hr", url=url, queue_size=queue_size, retry_min_s=0.05, retry_max_s=0.2
    )


@pytest.mark.slow
async def test_database_down_mid_call_the_calls_go_on_and_drops_are_counted(own_cluster):
    cluster, url = own_cluster
    dropped_before = metrics.sample("aio_db_queue_dropped_total")
    async with FakeN8n(secret=SECRET) as n8n:
        n8n.answer("hr", "lookup_policy", {"policy": "25 days"})
        store = down_store(url, queue_size=5)
        await store.start()
        client = N8nToolClient(config(url, base=n8n.base_url), store=store)
        try:
            await client.call("lookup_policy", {"n": 0}, session_id="s")
            assert await store.flush(5.0)
            await asyncio.to_thread(cluster.stop)
            try:
                timings = []
                for n in range(1, 13):
                    started = time.monotonic()
                    result = await client.call("lookup_policy", {"n": n}, session_id="s")
                    timings.append(time.monotonic() - started)
                    assert result.ok
                assert max(timings) < 0.5  # nobody waited for the database
                await asyncio.sleep(0.3)  # the writer is retrying meanwhile
                assert not await store.ping(timeout=1.0)
                assert store.queue_depth == 5
                assert store.dropped >= 12 - 5 - 1
                stop_started = time.monotonic()
                await store.stop(flush_timeout=0.5)
                assert time.monotonic() - stop_started < 3  # no hang on a dead database
                assert store.dropped == 12  # 5 queued + 1 in flight + the overflow: all counted
                assert metrics.sample("aio_db_queue_dropped_total") == dropped_before + 12
            finally:
                await asyncio.to_thread(cluster.start)
        finally:
            await client.aclose()
    rows = await tenant_rows(url, "SELECT arguments::text AS a FROM tool_calls")
    assert [json.loads(r["a"]) for r in rows] == [{"n": 0}]
    await _truncate(url)


@pytest.mark.slow
async def test_writes_queued_during_an_outage_are_written_once_the_database_is_back(own_cluster):
    cluster, url = own_cluster
    store = down_store(url, queue_size=100)
    await store.start()
    await asyncio.to_thread(cluster.stop)
    try:
        for i in range(20):
            store.record_tool_call(
                session_id="s", tool="lookup_policy", arguments={"i": i}, status="ok",
                http_status=200, latency_ms=1.0, attempts=1, error=None, response_bytes=1,
            )  # fmt: skip
        await asyncio.sleep(0.3)
    finally:
        await asyncio.to_thread(cluster.start)
    await store.stop(flush_timeout=10)
    assert store.dropped == 0
    rows = await tenant_rows(url, "SELECT arguments::text AS a FROM tool_calls ORDER BY id")
    assert sorted(json.loads(r["a"])["i"] for r in rows) == list(range(20))
    await _truncate(url)


async def _truncate(url: str) -> None:
    conn = await connect_tenant(url, "hr")
    try:
        await conn.execute("DELETE FROM tool_calls")
    finally:
        await conn.close()


async def test_rotate_re_encrypts_old_and_plain_rows_with_the_new_key(hr_url):
    from aio_agent.crypto import rotate

    old_store = Store.from_config(config(hr_url, key=KEY))
    plain_store = Store.from_config(config(hr_url))
    for store, caller in ((old_store, "c-old"), (plain_store, "c-plain")):
        await store.start()
        store.save_context(caller_id=caller, session_id="s", context={"who": caller})
        store.record_tool_call(
            session_id="s", tool="t", arguments={"who": caller}, status="ok", http_status=200,
            latency_ms=1.0, attempts=1, error=None, response_bytes=1,
        )  # fmt: skip
        await store.stop()

    changed = await rotate(config(hr_url, key=NEW_KEY, old=[KEY]), batch=1)
    assert changed == {"tool_calls": 2, "session_context": 2}
    assert await rotate(config(hr_url, key=NEW_KEY, old=[KEY])) == {
        "tool_calls": 0,
        "session_context": 0,
    }

    new_kid = key_id(base64.b64decode(NEW_KEY))
    stored = await tenant_rows(
        hr_url, "SELECT context::text AS v FROM session_context UNION ALL "
        "SELECT arguments::text FROM tool_calls",
    )  # fmt: skip
    assert {json.loads(r["v"])["kid"] for r in stored} == {new_kid}
    only_new = Store.from_config(config(hr_url, key=NEW_KEY))  # the old key is no longer needed
    try:
        assert await only_new.load_context("c-old") == {"who": "c-old"}
        assert await only_new.load_context("c-plain") == {"who": "c-plain"}
    finally:
        await only_new.stop()
