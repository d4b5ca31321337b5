"""The voice pipeline of one call: models, persona, tools from config, caller memory.

Everything here is built from the rendered config document, never from code constants:
- STT, LLM and TTS are `livekit-plugins-openai` clients, each with its own base URL, key and
  model, so any OpenAI-compatible provider works;
- VAD and the end-of-turn detector run locally (livekit-local-inference); the turn detector is
  pinned to the local `v1-mini` model and interruption to plain VAD, so nothing falls back to
  LiveKit Cloud inference and nothing is downloaded at run time;
- each `config["tools"]` entry becomes `function_tool(handler, raw_schema=...)`: n8n tools call
  `N8nToolClient.call`, the built-in `search_documents` runs full-text search through the Store;
- the caller's saved context (`session_context`) is restored into the chat before the greeting
  and saved again when the call ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from livekit.agents import Agent, AgentSession, function_tool, inference, llm
from livekit.plugins import openai
from opentelemetry.trace import Status, StatusCode

from aio_agent import metrics
from aio_agent.logs import get_logger
from aio_agent.telemetry import tracer

log = get_logger(__name__)

# How much of a call is kept for the caller's next call (newest last).
CONTEXT_TURNS = 12
CONTEXT_TEXT_CHARS = 500
SEARCH_LIMIT = 5

ToolHandler = Callable[[dict[str, Any]], Awaitable[str]]


class ToolCaller(Protocol):
    """What the pipeline needs from aio_agent.tools.N8nToolClient."""

    async def call(self, tool: str, arguments: dict[str, Any], *, session_id: str) -> Any: ...


class StoreLike(Protocol):
    """What the pipeline needs from aio_agent.store.Store (or its cross-loop proxy)."""

    @property
    def enabled(self) -> bool: ...

    def save_context(self, *, caller_id: str, session_id: str, context: dict[str, Any]) -> None: ...

    def record_tool_call(self, **row: Any) -> None: ...

    async def load_context(self, caller_id: str) -> dict[str, Any] | None: ...

    async def search_documents(self, query: str, limit: int = 5) -> list[dict[str, Any]]: ...


# --- models --------------------------------------------------------------------------------------
def build_llm(config: Mapping[str, Any]) -> openai.LLM:
    section = config["llm"]
    return openai.LLM(
        model=section["model"], base_url=section["base_url"], api_key=section["api_key"]
    )


def build_stt(config: Mapping[str, Any]) -> openai.STT:
    section = config["stt"]
    return openai.STT(
        model=section["model"],
        base_url=section["base_url"],
        api_key=section["api_key"],
        language=section.get("language") or "en",
    )


def build_tts(config: Mapping[str, Any]) -> openai.TTS:
    section = config["tts"]
    return openai.TTS(
        model=section["model"],
        voice=section["voice"],
        base_url=section["base_url"],
        api_key=section["api_key"],
    )


def local_turn_handling() -> dict[str, Any]:
    """Local end-of-turn model and VAD-based interruption: no LiveKit Cloud inference."""
    return {
        "turn_detection": inference.TurnDetector(version="v1-mini"),
        "interruption": {"mode": "vad"},
    }


def build_session(config: Mapping[str, Any], *, voice: bool = True) -> AgentSession:
    """The AgentSession of one call. `voice=False` leaves out audio (text-mode tests)."""
    if not voice:
        return AgentSession(llm=build_llm(config), vad=None, turn_handling={"turn_detection": None})
    return AgentSession(
        stt=build_stt(config),
        llm=build_llm(config),
        tts=build_tts(config),
        vad=inference.VAD(),
        turn_handling=local_turn_handling(),  # type: ignore[arg-type]
    )


# --- tools ---------------------------------------------------------------------------------------
def _n8n_handler(tool: str, client: ToolCaller, session_id: str) -> ToolHandler:
    # A factory, not a default-argument closure: livekit calls the handler by inspecting its
    # annotated parameters, and every one of them must carry a type.
    async def handler(raw_arguments: dict[str, Any]) -> str:
        result = await client.call(tool, dict(raw_arguments), session_id=session_id)
        return str(result.for_llm())

    return handler


def _search_handler(store: StoreLike, session_id: str, timeout_s: float) -> ToolHandler:
    async def handler(raw_arguments: dict[str, Any]) -> str:
        query = str(raw_arguments.get("query") or "").strip()
        started = time.perf_counter()
        status, error, answer = "ok", None, ""
        with tracer().start_as_current_span(
            "aio.search_documents",
            attributes={"aio.tool": "search_documents", "aio.session_id": session_id},
        ) as span:
            try:
                if not query:
                    status, error = "rejected", "empty query"
                    answer = "error: search_documents needs a non-empty `query`."
                else:
                    # A stalled database must not stall the turn: the caller hears the failure.
                    async with asyncio.timeout(timeout_s):
                        rows = await store.search_documents(query, limit=SEARCH_LIMIT)
                    answer = _documents_for_llm(query, rows)
            except TimeoutError:
                status, error = "timeout", f"no answer within {timeout_s:g} s"
            except Exception as exc:  # noqa: BLE001 - the caller must hear a clear failure
                status, error = "error", type(exc).__name__
            if status in ("timeout", "error"):
                log.warning("search_documents_failed", status=status, error=error)
                answer = (
                    f"error: the document search is unavailable right now ({error}). "
                    "Tell the caller you cannot look it up at the moment."
                )
                span.set_status(Status(StatusCode.ERROR, error or status))
            span.set_attribute("aio.status", status)
        elapsed = time.perf_counter() - started
        metrics.TOOL_CALLS.labels(tool="search_documents", status=status).inc()
        metrics.TOOL_CALL_DURATION.labels(tool="search_documents").observe(elapsed)
        store.record_tool_call(
            session_id=session_id,
            tool="search_documents",
            arguments={"query": query},
            status=status,
            http_status=None,
            latency_ms=elapsed * 1000.0,
            attempts=1,
            error=error,
            response_bytes=len(answer.encode()),
        )
        return answer

    return handler


def _documents_for_llm(query: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"No documents matched {query!r}."
    found = [
        {
            "title": row.get("title"),
            "snippet": row.get("snippet"),
            "drive_file_id": row.get("drive_file_id"),
        }
        for row in rows
    ]
    return json.dumps({"documents": found}, ensure_ascii=False)


def build_tools(
    config: Mapping[str, Any],
    *,
    session_id: str,
    tool_client: ToolCaller | None,
    store: StoreLike | None,
) -> list[Any]:
    """One function tool per enabled tool spec in the config (name, description, schema)."""
    tools: list[Any] = []
    for spec in config.get("tools") or []:
        schema = {
            "name": spec["name"],
            "description": spec["description"],
            "parameters": spec["parameters"],
        }
        if spec["kind"] == "n8n":
            if tool_client is None:
                raise ValueError(f"tool {spec['name']!r} needs an n8n tool client")
            handler = _n8n_handler(spec["name"], tool_client, session_id)
        elif spec["kind"] == "builtin" and spec["name"] == "search_documents":
            if store is None or not store.enabled:
                log.warning("search_documents enabled without a database; leaving it out")
                continue
            handler = _search_handler(store, session_id, float(spec.get("timeout_s") or 10.0))
        else:
            raise ValueError(f"unknown tool kind {spec['kind']!r} for {spec['name']!r}")
        tools.append(function_tool(handler, raw_schema=schema))
    return tools


# --- persona and caller memory -------------------------------------------------------------------
def build_agent(
    config: Mapping[str, Any], *, tools: list[Any], caller_context: dict[str, Any] | None = None
) -> Agent:
    """The department's agent: persona instructions, its tools, and what the caller said before."""
    chat_ctx = llm.ChatContext.empty()
    for turn in (caller_context or {}).get("turns") or []:
        role = turn.get("role")
        text = turn.get("text")
        if role in ("user", "assistant") and isinstance(text, str) and text:
            chat_ctx.add_message(role=role, content=text)
    return Agent(instructions=config["persona"]["instructions"], tools=tools, chat_ctx=chat_ctx)


def context_from_history(
    history: llm.ChatContext, *, session_id: str, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What is saved for the caller's next call: the last turns of this call (and earlier ones)."""
    # The session history holds this call only; turns restored from earlier calls live in the
    # agent's initial chat context, so they are carried over from `previous`.
    turns: list[dict[str, str]] = list((previous or {}).get("turns") or [])
    for item in history.items:
        if item.type != "message":
            continue
        text = (item.text_content or "").strip()
        if item.role in ("user", "assistant") and text:
            turns.append({"role": item.role, "text": text[:CONTEXT_TEXT_CHARS]})
    calls = int((previous or {}).get("calls") or 0) + 1
    return {
        "last_session_id": session_id,
        "ended_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "calls": calls,
        "turns": turns[-CONTEXT_TURNS:],
    }
