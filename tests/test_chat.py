"""`python -m aio_agent chat`: a text conversation with the department's agent, no call.

The command runs as a user runs it (a subprocess on a rendered config file) against the fake
OpenAI server (scripted tool calls), the fake n8n (checks header auth and signature) and a real
PostgreSQL with the real migrations for the tool_calls record.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aio_agent.chat import run_chat
from tests.fakes.n8n_server import FakeN8n
from tests.fakes.openai_server import FakeOpenAIServer, ToolRule
from tests.support import PYTHON, REPO, process_env, render_config, valid_env
from tests.tenant_support import tenant_dsn
from tests.test_pipeline import TOOLS_YAML, setup_tenants, tenant_rows

SECRET = "chat-test-n8n-webhook-secret"


@pytest.fixture
async def llm_server():
    server = FakeOpenAIServer(
        rules=[
            ToolRule("vacation", "lookup_policy", {"topic": "vacation"}),
            ToolRule("book", "book_leave", {"days": 3}),
        ]
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def n8n():
    async with FakeN8n(secret=SECRET) as server:
        yield server


def chat_config(tmp_path: Path, **overrides: str | None) -> tuple[Path, dict[str, Any]]:
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text(TOOLS_YAML)
    overrides.setdefault("N8N_WEBHOOK_SECRET", SECRET)
    return render_config(tmp_path, TOOLS_FILE=str(tools_file), TOOL_TIMEOUT="2", **overrides)


async def run_cli(config_path: Path, *args: str, limit_s: float = 90) -> tuple[int, str, str]:
    """`python -m aio_agent chat ARGS` as a subprocess; the fakes keep serving meanwhile."""
    env = process_env(valid_env())
    env["CONFIG_PATH"] = str(config_path)
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "aio_agent",
        "chat",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_chat_prints_the_tool_call_with_its_status_and_the_answer_and_records_it(
    tmp_path, llm_server, n8n, pg_cluster, pg_database
):
    await setup_tenants(pg_cluster, pg_database, "hr")
    url = tenant_dsn(pg_cluster, "hr", pg_database)
    n8n.answer("hr", "lookup_policy", {"policy": {"title": "Paid time off", "days": 25}})
    path, _ = chat_config(
        tmp_path, LLM_BASE_URL=llm_server.base_url, N8N_WEBHOOK_BASE=n8n.base_url, POSTGRES_URL=url
    )

    code, out, err = await run_cli(path, "How many vacation days do I get?")

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("session chat-") and "(hr)" in lines[0]
    assert lines[1] == "user: How many vacation days do I get?"
    assert lines[2] == 'tool: lookup_policy({"topic": "vacation"}) -> ok, HTTP 200'
    assert "Paid time off" in lines[3]
    assert lines[4].startswith("assistant: lookup_policy said:") and "Paid time off" in lines[4]
    assert '"event"' not in out  # logs go to stderr, stdout is the transcript
    session_id = lines[0].split()[1]
    (hit,) = n8n.hits("hr", "lookup_policy")
    assert hit.outcome == 200 and hit.json["session_id"] == session_id
    rows = await tenant_rows(
        url, "hr", "SELECT session_id, tool, status, http_status FROM tool_calls"
    )
    assert rows == [
        {"session_id": session_id, "tool": "lookup_policy", "status": "ok", "http_status": 200}
    ]


async def test_chat_json_runs_several_turns_in_one_session(tmp_path, llm_server, n8n):
    n8n.answer("hr", "lookup_policy", {"policy": {"title": "Paid time off"}})
    path, _ = chat_config(tmp_path, LLM_BASE_URL=llm_server.base_url, N8N_WEBHOOK_BASE=n8n.base_url)

    code, out, err = await run_cli(path, "Hello there", "What about vacation?", "--json")

    assert code == 0, err
    doc = json.loads(out)
    assert doc["department_id"] == "hr" and doc["session_id"].startswith("chat-")
    kinds = [(e["type"], e.get("role") or e.get("name")) for e in doc["entries"]]
    assert kinds == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("tool_call", "lookup_policy"),
        ("message", "assistant"),
    ]
    assert doc["entries"][1]["text"] == "You said: Hello there"
    assert doc["entries"][3]["status"] == "ok" and doc["entries"][3]["http_status"] == 200
    # the second turn's request carries the first turn: one session, not two
    said = [m.get("content") for m in llm_server.chat_requests[-2]["messages"]]
    assert "Hello there" in said and "You said: Hello there" in said


async def test_a_call_signed_with_the_wrong_secret_shows_as_rejected_with_its_http_status(
    tmp_path, llm_server, n8n
):
    _, config = chat_config(
        tmp_path,
        LLM_BASE_URL=llm_server.base_url,
        N8N_WEBHOOK_BASE=n8n.base_url,
        N8N_WEBHOOK_SECRET="not-the-secret-n8n-knows",
    )

    transcript = await run_chat(config, ["Can I take vacation in May?"], timeout_s=30)

    tool = next(e for e in transcript.entries if e["type"] == "tool_call")
    assert tool["status"] == "rejected" and tool["http_status"] in (401, 403)
    assert json.loads(tool["output"])["ok"] is False
    answer = transcript.entries[-1]
    assert answer["role"] == "assistant" and '"status": "rejected"' in answer["text"]
    assert "rejected" in transcript.as_text()


async def test_chat_exits_69_with_a_clear_message_when_the_llm_is_unreachable(tmp_path, n8n):
    path, _ = chat_config(
        tmp_path, LLM_BASE_URL="http://127.0.0.1:9/v1", N8N_WEBHOOK_BASE=n8n.base_url
    )

    code, out, err = await run_cli(path, "Hello?", "--timeout", "60")

    assert code == 69, (out, err)
    assert "error: the LLM at http://127.0.0.1:9/v1 did not answer" in err
    assert out == ""


async def test_chat_without_a_rendered_config_exits_78_and_says_how_to_make_one(tmp_path):
    code, _, err = await run_cli(tmp_path / "missing.yaml", "Hello?")

    assert code == 78
    assert "does not exist" in err and "python -m aio_agent.config render" in err


async def test_chat_needs_a_message(tmp_path):
    code, _, err = await run_cli(tmp_path / "missing.yaml")

    assert code == 64 and "MESSAGE" in err


def test_chat_is_listed_in_the_help_next_to_start():
    done = subprocess.run(
        [PYTHON, "-m", "aio_agent", "--help"],
        cwd=REPO,
        env=process_env(valid_env()),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "chat" in done.stdout and "start" in done.stdout
