"""n8n tool calls against a fake n8n that checks auth and signatures and counts every attempt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aio_agent import metrics
from aio_agent.config import build_config
from aio_agent.signing import header_token, sign
from aio_agent.tools import MAX_RESPONSE_BYTES, N8nToolClient
from tests.fakes.n8n_server import FakeN8n
from tests.pgcluster import free_port
from tests.support import valid_env

SECRET = "n8n-test-secret-0123456789"
TOOLS_YAML = """
tools:
  - name: lookup_policy
    description: Look up an HR policy.
    parameters:
      type: object
      properties: {topic: {type: string}}
      required: [topic]
  - name: slow_tool
    description: Takes long.
    parameters: {type: object, properties: {}}
    timeout: 0.2
"""


def make_config(
    tmp_path: Path, base: str, *, secret: str | None = SECRET, timeout: str = "2"
) -> dict[str, Any]:
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text(TOOLS_YAML)
    env = valid_env(
        TOOLS_FILE=str(tools_file),
        N8N_WEBHOOK_BASE=base,
        N8N_WEBHOOK_SECRET=secret,
        TOOL_TIMEOUT=timeout,
        CONFIG_PATH=str(tmp_path / "config.yaml"),
    )
    return build_config(env)


class RecordingStore:
    """Collects record_tool_call keyword arguments (the Store interface, without a database)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record_tool_call(self, **row: Any) -> None:
        self.rows.append(row)


@pytest.fixture
async def n8n():
    async with FakeN8n(secret=SECRET) as server:
        yield server


async def test_signed_call_reaches_the_department_route_and_returns_the_answer(n8n, tmp_path):
    n8n.answer("hr", "lookup_policy", {"policy": "25 days of leave"})
    store = RecordingStore()
    client = N8nToolClient(make_config(tmp_path, n8n.base_url), store=store)
    try:
        result = await client.call("lookup_policy", {"topic": "leave"}, session_id="room-1")
    finally:
        await client.aclose()

    assert result.ok and result.status == "ok" and result.http_status == 200
    assert result.data == {"policy": "25 days of leave"}
    assert result.attempts == 1
    (hit,) = n8n.hits("hr", "lookup_policy")
    assert hit.outcome == 200
    assert hit.json["department_id"] == "hr"
    assert hit.json["session_id"] == "room-1"
    assert hit.json["tool"] == "lookup_policy"
    assert hit.json["arguments"] == {"topic": "leave"}
    assert hit.json["request_id"] == hit.headers["X-AIO-Request-Id"]
    assert json.loads(result.for_llm()) == {
        "ok": True,
        "tool": "lookup_policy",
        "data": {"policy": "25 days of leave"},
    }
    assert store.rows == [
        {
            "session_id": "room-1",
            "tool": "lookup_policy",
            "arguments": {"topic": "leave"},
            "status": "ok",
            "http_status": 200,
            "latency_ms": result.latency_ms,
            "attempts": 1,
            "error": None,
            "response_bytes": result.response_bytes,
        }
    ]


async def test_http_500_is_retried_twice_then_reported_as_an_error(n8n, tmp_path):
    n8n.fail_then_answer("hr", "lookup_policy", times=99)
    before = metrics.sample("aio_tool_calls_total", {"tool": "lookup_policy", "status": "error"})
    client = N8nToolClient(make_config(tmp_path, n8n.base_url), backoff_base_s=0.01)
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()

    assert len(n8n.hits("hr", "lookup_policy")) == 3
    assert (result.ok, result.status, result.http_status, result.attempts) == (
        False,
        "error",
        500,
        3,
    )
    llm = json.loads(result.for_llm())
    assert (
        llm["ok"] is False and "500" in llm["error"] and "tell the caller" in llm["advice"].lower()
    )
    after = metrics.sample("aio_tool_calls_total", {"tool": "lookup_policy", "status": "error"})
    assert after == before + 1


async def test_a_500_followed_by_success_returns_the_answer_with_the_attempts_counted(
    n8n, tmp_path
):
    n8n.fail_then_answer("hr", "lookup_policy", times=2, data={"policy": "ok now"})
    client = N8nToolClient(make_config(tmp_path, n8n.base_url), backoff_base_s=0.01)
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()
    assert result.ok and result.attempts == 3 and result.data == {"policy": "ok now"}
    # Every attempt was freshly signed with a new request id (replay protection passes retries),
    # and all carry the call's one call_id (n8n can do a side effect once per call).
    hits = n8n.hits("hr", "lookup_policy")
    assert len({hit.headers["X-AIO-Request-Id"] for hit in hits}) == 3
    assert len({hit.json["call_id"] for hit in hits}) == 1
    assert all(hit.json["call_id"] != hit.json["request_id"] for hit in hits)
    again = N8nToolClient(make_config(tmp_path, n8n.base_url), backoff_base_s=0.01)
    try:
        await again.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await again.aclose()
    assert n8n.hits("hr", "lookup_policy")[-1].json["call_id"] != hits[0].json["call_id"]


async def test_a_slow_tool_times_out_per_attempt_and_the_call_ends_with_a_timeout(n8n, tmp_path):
    n8n.sleep("hr", "slow_tool", 1.0)
    client = N8nToolClient(make_config(tmp_path, n8n.base_url), backoff_base_s=0.01)
    started = time.monotonic()
    try:
        result = await client.call("slow_tool", {}, session_id="s")
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started

    assert (result.status, result.attempts, result.http_status) == ("timeout", 3, None)
    assert len(n8n.hits("hr", "slow_tool")) == 3
    assert elapsed < 1.5  # 3 x 0.2 s plus tiny backoffs, never the fake's 1 s per attempt
    assert json.loads(result.for_llm())["status"] == "timeout"


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_4xx_answer_is_rejected_at_once_without_retry(n8n, tmp_path, status):
    n8n.reject("hr", "lookup_policy", status=status)
    client = N8nToolClient(make_config(tmp_path, n8n.base_url), backoff_base_s=0.01)
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()
    assert (result.status, result.http_status, result.attempts) == ("rejected", status, 1)
    assert len(n8n.hits("hr", "lookup_policy")) == 1
    assert f"HTTP {status}" in (result.error or "")
    assert json.loads(result.for_llm())["ok"] is False


async def test_a_wrong_secret_is_refused_by_n8n_with_403_and_not_retried(n8n, tmp_path):
    n8n.answer("hr", "lookup_policy", {"policy": "secret stuff"})
    config = make_config(tmp_path, n8n.base_url, secret="not-the-right-secret")
    client = N8nToolClient(config, backoff_base_s=0.01)
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()
    assert (result.status, result.http_status, result.attempts) == ("rejected", 403, 1)
    assert "not-the-right-secret" not in result.for_llm()
    assert "not-the-right-secret" not in (result.error or "")


async def test_connection_refused_is_retried_then_reported_as_an_error(tmp_path):
    base = f"http://127.0.0.1:{free_port()}/webhook"
    client = N8nToolClient(make_config(tmp_path, base), backoff_base_s=0.01)
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()
    assert (result.status, result.attempts, result.http_status) == ("error", 3, None)
    assert "connection failed" in (result.error or "")
    assert json.loads(result.for_llm())["ok"] is False


async def test_a_dropped_connection_is_retried_then_reported_as_an_error(n8n, tmp_path):
    n8n.drop("hr", "lookup_policy")
    client = N8nToolClient(make_config(tmp_path, n8n.base_url), backoff_base_s=0.01)
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()
    assert (result.status, result.attempts) == ("error", 3)
    assert [hit.outcome for hit in n8n.hits("hr", "lookup_policy")] == ["dropped"] * 3


async def test_a_huge_answer_is_cut_at_64_kib_and_flagged_for_the_llm(n8n, tmp_path):
    n8n.huge("hr", "lookup_policy", 1_000_000)
    client = N8nToolClient(make_config(tmp_path, n8n.base_url))
    try:
        result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
        # The connection that was cut short is not reused by mistake: the next call works.
        n8n.answer("hr", "lookup_policy", {"policy": "small"})
        after = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
    finally:
        await client.aclose()
    assert result.ok and result.truncated
    assert isinstance(result.data, str) and len(result.data.encode()) == MAX_RESPONSE_BYTES
    assert result.response_bytes is not None and result.response_bytes > 1_000_000
    llm = json.loads(result.for_llm())
    assert llm["truncated"] is True and "cut" in llm["note"]
    assert after.ok and after.data == {"policy": "small"}


async def test_an_unknown_tool_is_an_error_result_not_an_exception(n8n, tmp_path):
    client = N8nToolClient(make_config(tmp_path, n8n.base_url))
    try:
        result = await client.call("delete_everything", {}, session_id="s")
    finally:
        await client.aclose()
    assert (result.ok, result.status, result.attempts) == (False, "error", 0)
    assert "unknown tool" in json.loads(result.for_llm())["error"]
    assert n8n.requests == []


async def test_without_a_secret_calls_go_out_unsigned(tmp_path):
    async with FakeN8n(secret=None) as open_n8n:
        open_n8n.answer("hr", "lookup_policy", {"policy": "open"})
        client = N8nToolClient(make_config(tmp_path, open_n8n.base_url, secret=None))
        try:
            result = await client.call("lookup_policy", {"topic": "x"}, session_id="s")
        finally:
            await client.aclose()
        (hit,) = open_n8n.requests
    assert result.ok
    assert "X-Signature" not in hit.headers and "X-AIO-Auth" not in hit.headers


async def test_the_fake_refuses_bad_signatures_missing_auth_and_replays(n8n):
    """The fake is honest: it would catch a client that signs wrongly."""
    n8n.answer("hr", "lookup_policy", {"ok": True})
    url = n8n.url("hr", "lookup_policy")
    body = b'{"a":1}'
    ts = int(time.time())
    good = {
        "X-AIO-Auth": header_token(SECRET),
        "X-AIO-Timestamp": str(ts),
        "X-AIO-Request-Id": "r1",
        "X-Signature": sign(SECRET, ts, body),
    }
    async with aiohttp.ClientSession() as http:
        statuses = []
        for headers, data in [
            ({k: v for k, v in good.items() if k != "X-AIO-Auth"}, body),
            ({**good, "X-Signature": sign(SECRET, ts, b"{}")}, body),
            (
                {
                    **good,
                    "X-Signature": sign(SECRET, ts - 1000, body),
                    "X-AIO-Timestamp": str(ts - 1000),
                },
                body,
            ),
            (good, body),
            (good, body),
        ]:
            async with http.post(url, data=data, headers=headers) as resp:
                statuses.append(resp.status)
    assert statuses == [403, 401, 401, 200, 409]
