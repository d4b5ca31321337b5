"""Text-mode sessions of the department agent: tools from config, answers, caller memory.

A real AgentSession (livekit-agents) runs the real tool handlers against the fake OpenAI server
(scripted tool calls), the fake n8n server (checks header auth and signature) and, where a table
is involved, a real PostgreSQL with the real migrations.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aio_agent import pipeline
from aio_agent.config import build_config
from aio_agent.db import connect_tenant
from aio_agent.migrate import default_migrations_dir, load_migrations, migrate
from aio_agent.store import Store
from aio_agent.tenant import create_tenant
from aio_agent.tools import N8nToolClient
from tests.fakes.n8n_server import FakeN8n
from tests.fakes.openai_server import FakeOpenAIServer, ToolRule
from tests.pgcluster import PostgresCluster
from tests.support import valid_env
from tests.tenant_support import password_of, table_locked, tenant_dsn

SECRET = "pipeline-test-n8n-secret"
TOOLS_YAML = """
tools:
  - name: lookup_policy
    description: Look up an HR policy by topic.
    parameters:
      type: object
      properties: {topic: {type: string, description: The policy topic}}
      required: [topic]
  - name: book_leave
    description: Book days of leave for the caller.
    parameters:
      type: object
      properties: {days: {type: integer}}
      required: [days]
"""


def make_config(
    tmp_path: Path, *, llm_base: str, n8n_base: str, postgres_url: str | None = None, **env: str
) -> dict[str, Any]:
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text(TOOLS_YAML)
    return build_config(
        valid_env(
            LLM_BASE_URL=llm_base,
            TOOLS_FILE=str(tools_file),
            N8N_WEBHOOK_BASE=n8n_base,
            N8N_WEBHOOK_SECRET=SECRET,
            TOOL_TIMEOUT="1",
            POSTGRES_URL=postgres_url,
            CONFIG_PATH=str(tmp_path / "config.yaml"),
            **env,
        )
    )


@pytest.fixture
async def llm_server():
    server = FakeOpenAIServer(
        rules=[
            ToolRule("vacation", "lookup_policy", {"topic": "vacation"}),
            ToolRule("book", "book_leave", {"days": 3}),
            ToolRule("documents", "search_documents", {"query": "annual leave"}),
        ]
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def n8n():
    async with FakeN8n(secret=SECRET) as server:
        yield server


async def ask(
    config: dict[str, Any], text: str, *, store: Any = None, session_id: str = "call-1"
) -> Any:
    """One user turn through a fresh session with the config's persona and tools."""
    client = N8nToolClient(config, store=store)
    try:
        tools = pipeline.build_tools(config, session_id=session_id, tool_client=client, store=store)
        agent = pipeline.build_agent(config, tools=tools)
        async with pipeline.build_session(config, voice=False) as session:
            await session.start(agent)
            return await asyncio.wait_for(session.run(user_input=text), timeout=20)
    finally:
        await client.aclose()


async def setup_tenants(cluster: PostgresCluster, dbname: str, *departments: str) -> None:
    """Role + schema per department (tenant.py, as an operator would), tables (real migrations)."""
    admin = await asyncpg.connect(cluster.dsn(dbname=dbname))
    try:
        for department in departments:
            await create_tenant(admin, department, password_of(department))
    finally:
        await admin.close()
    for department in departments:
        conn = await connect_tenant(tenant_dsn(cluster, department, dbname), department)
        try:
            await migrate(conn, department, load_migrations(default_migrations_dir()))
        finally:
            await conn.close()


async def tenant_rows(url: str, department: str, sql: str) -> list[dict[str, Any]]:
    conn = await connect_tenant(url, department)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_every_configured_tool_becomes_a_function_tool_with_the_configured_schema(tmp_path):
    config = make_config(tmp_path, llm_base="http://127.0.0.1:9/v1", n8n_base="http://n8n/webhook")
    tools = pipeline.build_tools(config, session_id="s", tool_client=object(), store=None)  # type: ignore[arg-type]
    schemas = {tool.info.raw_schema["name"]: tool.info.raw_schema for tool in tools}
    assert set(schemas) == {"lookup_policy", "book_leave"}
    assert schemas["lookup_policy"]["parameters"]["required"] == ["topic"]
    assert schemas["book_leave"]["description"] == "Book days of leave for the caller."


async def test_voice_session_uses_the_configured_providers_and_local_turn_detection(tmp_path):
    config = make_config(
        tmp_path,
        llm_base="http://llm.local/v1",
        n8n_base="http://n8n/webhook",
        STT_BASE_URL="http://whisper.local/v1",
        STT_MODEL="whisper-large",
        TTS_BASE_URL="http://tts.local/v1",
        TTS_MODEL="kokoro",
        LLM_MODEL="llama-3.1-8b",
    )
    session = pipeline.build_session(config)
    assert (session.llm.model, session.stt.model, session.tts.model) == (
        "llama-3.1-8b",
        "whisper-large",
        "kokoro",
    )
    assert str(session.stt._client.base_url).startswith("http://whisper.local/v1")
    assert str(session.tts._client.base_url).startswith("http://tts.local/v1")
    assert session.vad is not None and session.vad.provider == "livekit-local-inference"
    handling = pipeline.local_turn_handling()
    assert handling["turn_detection"].model == "turn-detector-v1-mini"
    assert handling["interruption"] == {"mode": "vad"}


async def test_hr_agent_calls_its_signed_n8n_tool_records_the_call_and_answers(
    tmp_path, llm_server, n8n, pg_cluster, pg_database
):
    await setup_tenants(pg_cluster, pg_database, "hr")
    url = tenant_dsn(pg_cluster, "hr", pg_database)
    n8n.answer("hr", "lookup_policy", {"policy": "25 days of paid vacation per year"})
    config = make_config(
        tmp_path, llm_base=llm_server.base_url, n8n_base=n8n.base_url, postgres_url=url
    )
    store = Store.from_config(config)
    await store.start()
    try:
        result = await ask(config, "How many vacation days do I get?", store=store)
    finally:
        await store.stop()

    result.expect.next_event().is_function_call(
        name="lookup_policy", arguments={"topic": "vacation"}
    )
    result.expect.next_event().is_function_call_output()
    answer = result.expect.next_event().is_message(role="assistant").event().item.text_content
    result.expect.no_more_events()
    assert "25 days of paid vacation" in answer

    (hit,) = n8n.hits("hr", "lookup_policy")
    assert hit.path == "/webhook/hr/lookup_policy"
    assert hit.outcome == 200  # the fake answers 401/403 to a bad signature or header auth
    assert hit.json["tool"] == "lookup_policy" and hit.json["arguments"] == {"topic": "vacation"}
    assert hit.json["department_id"] == "hr" and hit.json["session_id"] == "call-1"
    rows = await tenant_rows(url, "hr", "SELECT session_id, tool, status FROM tool_calls")
    assert rows == [{"session_id": "call-1", "tool": "lookup_policy", "status": "ok"}]


@pytest.mark.parametrize(
    ("script", "expected_status"),
    [("fail", "error"), ("reject", "rejected"), ("slow", "timeout")],
)
async def test_a_failing_tool_gives_the_caller_an_explicit_error_answer(
    tmp_path, llm_server, n8n, script, expected_status
):
    if script == "fail":
        n8n.fail_then_answer("hr", "book_leave", times=5)
    elif script == "reject":
        n8n.reject("hr", "book_leave", status=422)
    else:
        n8n.sleep("hr", "book_leave", 5.0)
    config = make_config(tmp_path, llm_base=llm_server.base_url, n8n_base=n8n.base_url)
    if script == "slow":
        config["tools"][1]["timeout_s"] = 0.2

    result = await ask(config, "Please book three days off")

    result.expect.next_event().is_function_call(name="book_leave")
    output = result.expect.next_event().is_function_call_output().event().item.output
    answer = result.expect.next_event().is_message(role="assistant").event().item.text_content
    assert json.loads(output)["ok"] is False
    assert json.loads(output)["status"] == expected_status
    assert f'"status": "{expected_status}"' in answer  # what the caller is told is the failure


async def test_search_documents_finds_only_the_departments_own_documents(
    tmp_path, llm_server, n8n, pg_cluster, pg_database
):
    await setup_tenants(pg_cluster, pg_database, "hr", "accounting")
    for schema, dept, title in (
        ("hr_tenant", "hr", "HR annual leave policy"),
        ("accounting_tenant", "accounting", "Accounting annual leave accruals"),
    ):
        pg_cluster.psql(
            f"SET app.department_id = '{dept}'; INSERT INTO {schema}.drive_documents "
            f"(drive_file_id, title, content) VALUES "
            f"('{dept}-1', '{title}', 'Employees get 25 days of annual leave.')",
            dbname=pg_database,
        )
    url = tenant_dsn(pg_cluster, "hr", pg_database)
    config = make_config(
        tmp_path, llm_base=llm_server.base_url, n8n_base=n8n.base_url, postgres_url=url
    )
    assert "search_documents" in [t["name"] for t in config["tools"]]
    store = Store.from_config(config)
    await store.start()
    try:
        result = await ask(config, "Which documents talk about leave?", store=store)
    finally:
        await store.stop()

    result.expect.next_event().is_function_call(
        name="search_documents", arguments={"query": "annual leave"}
    )
    output = result.expect.next_event().is_function_call_output().event().item.output
    titles = [d["title"] for d in json.loads(output)["documents"]]
    assert titles == ["HR annual leave policy"]
    answer = result.expect.next_event().is_message(role="assistant").event().item.text_content
    assert "HR annual leave policy" in answer and "Accounting" not in answer


async def test_a_stalled_database_ends_the_search_at_its_timeout_and_the_caller_is_told(
    tmp_path, llm_server, n8n, pg_cluster, pg_database
):
    await setup_tenants(pg_cluster, pg_database, "hr")
    url = tenant_dsn(pg_cluster, "hr", pg_database)
    config = make_config(  # TOOL_TIMEOUT=1: search_documents gets 1 s too
        tmp_path, llm_base=llm_server.base_url, n8n_base=n8n.base_url, postgres_url=url
    )
    store = Store.from_config(config)
    await store.start()
    try:
        async with table_locked(pg_cluster, pg_database, "hr_tenant.drive_documents"):
            started = asyncio.get_running_loop().time()
            result = await ask(config, "Which documents talk about leave?", store=store)
            elapsed = asyncio.get_running_loop().time() - started
    finally:
        await store.stop()

    result.expect.next_event().is_function_call(name="search_documents")
    output = result.expect.next_event().is_function_call_output().event().item.output
    assert output.startswith("error: the document search is unavailable")
    assert "no answer within 1 s" in output
    assert elapsed < 5  # 1 s timeout + the scripted model, not the 30 s command timeout
    rows = pg_cluster.psql(
        "SET app.department_id = 'hr'; SELECT status, error FROM hr_tenant.tool_calls"
        " WHERE tool = 'search_documents'",
        dbname=pg_database,
    )
    assert rows.strip() == "timeout|no answer within 1 s"


async def test_a_returning_callers_earlier_turns_reach_the_model_and_are_saved_again(
    tmp_path, llm_server, n8n
):
    config = make_config(tmp_path, llm_base=llm_server.base_url, n8n_base=n8n.base_url)
    previous = {
        "calls": 1,
        "turns": [
            {"role": "user", "text": "My name is Ada and I work in payroll."},
            {"role": "assistant", "text": "Nice to meet you, Ada."},
        ],
    }
    agent = pipeline.build_agent(config, tools=[], caller_context=previous)
    async with pipeline.build_session(config, voice=False) as session:
        await session.start(agent)
        await session.run(user_input="Do you remember me?")
        saved = pipeline.context_from_history(
            session.history, session_id="call-2", previous=previous
        )

    sent = llm_server.chat_requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "Human Resources" in sent[0]["content"]
    assert [m.get("content") for m in sent[1:]] == [
        "My name is Ada and I work in payroll.",
        "Nice to meet you, Ada.",
        "Do you remember me?",
    ]
    assert saved["calls"] == 2 and saved["last_session_id"] == "call-2"
    assert [t["text"] for t in saved["turns"]] == [
        "My name is Ada and I work in payroll.",
        "Nice to meet you, Ada.",
        "Do you remember me?",
        "You said: Do you remember me?",
    ]
