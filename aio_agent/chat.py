"""`python -m aio_agent chat "message" [...]`: talk to the department's agent in text, no call.

For operators and end-to-end tests: it loads the rendered config, builds the same agent (persona
and tools) a call gets (`aio_agent.pipeline`), and runs each message as one text turn with
`AgentSession.run(user_input=...)` (no audio, no LiveKit room). Tools are the real ones: n8n tools
are signed webhook calls, `search_documents` queries the department's schema, and every tool call
is recorded in `tool_calls` like in a call (the write queue is flushed before exit).

Prints the transcript: each user message, each tool call with its arguments and result status
(ok / error / timeout / rejected, and the HTTP status when there is one), and the assistant's
answer; `--json` prints the same as one JSON document. Logs go to stderr.

Exit codes: 0 every turn answered (a refused or failed tool call is still an answer: the
transcript shows its status) · 64 usage · 69 the LLM did not answer (unreachable, refused, or no
answer within --timeout) · 70 internal error · 78 missing or invalid config file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aio_agent.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE

OUTPUT_CHARS = 400  # how much of a tool's output the text transcript shows


class LLMUnavailableError(RuntimeError):
    """The model did not answer a turn."""


@dataclass
class Transcript:
    session_id: str
    department_id: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "department_id": self.department_id,
            "entries": self.entries,
        }

    def as_text(self) -> str:
        lines = [f"session {self.session_id} ({self.department_id})"]
        for entry in self.entries:
            if entry["type"] == "message":
                lines.append(f"{entry['role']}: {entry['text']}")
            else:
                http = f", HTTP {entry['http_status']}" if entry.get("http_status") else ""
                output = entry["output"]
                if len(output) > OUTPUT_CHARS:
                    output = output[:OUTPUT_CHARS] + "..."
                arguments = json.dumps(entry["arguments"], ensure_ascii=False)
                lines.append(f"tool: {entry['name']}({arguments}) -> {entry['status']}{http}")
                lines.append(f"  result: {output}")
        return "\n".join(lines)


class _RecordingToolClient:
    """Wraps N8nToolClient to remember each call's status and HTTP status for the transcript."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.results: list[Any] = []

    async def call(self, tool: str, arguments: dict[str, Any], *, session_id: str) -> Any:
        result = await self._client.call(tool, arguments, session_id=session_id)
        self.results.append(result)
        return result


def tool_status(output: str) -> str:
    """The status a tool output reports: its `status`, else ok/error from `ok`."""
    try:
        doc = json.loads(output)
    except ValueError:
        return "ok"
    if isinstance(doc, dict):
        if isinstance(doc.get("status"), str) and doc.get("ok") is False:
            return str(doc["status"])
        if doc.get("ok") is False:
            return "error"
    return "ok"


async def run_chat(
    config: dict[str, Any],
    messages: Sequence[str],
    *,
    session_id: str | None = None,
    store: Any = None,
    timeout_s: float = 60.0,
) -> Transcript:
    """Run `messages` as text turns of one session; raise LLMUnavailableError if the model fails."""
    from livekit.agents import llm as lk_llm  # noqa: PLC0415 - keep --help fast

    from aio_agent import pipeline  # noqa: PLC0415
    from aio_agent.tools import N8nToolClient  # noqa: PLC0415

    session_id = session_id or f"chat-{uuid.uuid4().hex}"
    transcript = Transcript(session_id=session_id, department_id=config["department"]["id"])
    has_n8n = any(spec["kind"] == "n8n" for spec in config.get("tools") or [])
    client = N8nToolClient(dict(config), store=store) if has_n8n else None
    recorder = _RecordingToolClient(client) if client is not None else None
    try:
        tools = pipeline.build_tools(
            config, session_id=session_id, tool_client=recorder, store=store
        )
        agent = pipeline.build_agent(config, tools=tools)
        async with pipeline.build_session(config, voice=False) as session:
            errors: list[str] = []

            def on_error(event: Any) -> None:
                error = getattr(event, "error", None)
                if getattr(error, "recoverable", True) is False:
                    errors.append(_describe(getattr(error, "error", error)))

            session.on("error", on_error)
            await session.start(agent)
            for text in messages:
                transcript.entries.append({"type": "message", "role": "user", "text": text})
                try:
                    result = await asyncio.wait_for(session.run(user_input=text), timeout=timeout_s)
                except TimeoutError as exc:
                    raise LLMUnavailableError(f"no answer within {timeout_s:g} s") from exc
                except Exception as exc:
                    raise LLMUnavailableError(errors[-1] if errors else _describe(exc)) from exc
                answered = False
                for event in result.events:
                    item = event.item
                    if isinstance(item, lk_llm.FunctionCall):
                        transcript.entries.append(_tool_entry(item))
                    elif isinstance(item, lk_llm.FunctionCallOutput):
                        _attach_output(transcript, item, recorder)
                    elif isinstance(item, lk_llm.ChatMessage) and item.role == "assistant":
                        answered = True
                        transcript.entries.append(
                            {
                                "type": "message",
                                "role": "assistant",
                                "text": item.text_content or "",
                            }
                        )
                if errors or not answered:
                    raise LLMUnavailableError(errors[-1] if errors else "the model gave no answer")
    finally:
        if client is not None:
            await client.aclose()
    return transcript


def _tool_entry(item: Any) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(item.arguments or "{}")
    except ValueError:
        arguments = item.arguments
    return {
        "type": "tool_call",
        "call_id": item.call_id,
        "name": item.name,
        "arguments": arguments,
        "status": "pending",
        "http_status": None,
        "output": "",
    }


def _attach_output(transcript: Transcript, item: Any, recorder: Any) -> None:
    for entry in reversed(transcript.entries):
        if entry["type"] == "tool_call" and entry["call_id"] == item.call_id:
            entry["output"] = str(item.output)
            entry["status"] = tool_status(str(item.output))
            if item.is_error:
                entry["status"] = "error"
            if recorder is not None:
                for result in reversed(recorder.results):
                    if result.tool == entry["name"]:
                        entry["http_status"] = result.http_status
                        entry["status"] = result.status
                        break
            return


def _describe(exc: Any) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


async def _chat_main(config: dict[str, Any], messages: Sequence[str], timeout_s: float) -> Any:
    from aio_agent.store import Store  # noqa: PLC0415

    store = Store.from_config(config)
    await store.start()
    try:
        return await run_chat(config, messages, store=store, timeout_s=timeout_s)
    finally:
        await store.stop()


def chat(
    config: dict[str, Any], messages: Sequence[str], *, as_json: bool, timeout_s: float
) -> int:
    """The `chat` command once the config is loaded: run, print, and return the exit code."""
    from aio_agent import logs  # noqa: PLC0415

    try:
        runtime = config["runtime"]
        department_id = config["department"]["id"]
        llm_url = config["llm"]["base_url"]
    except (KeyError, TypeError) as exc:
        print(f"error: the config lacks {exc}; render it again", file=sys.stderr)
        return EX_CONFIG
    # Logs go to stderr: stdout is the transcript (or the JSON document).
    logs.configure(
        runtime.get("log_level") or "INFO",
        runtime.get("log_format") or "json",
        department_id=department_id,
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    try:
        transcript = asyncio.run(_chat_main(config, messages, timeout_s))
    except LLMUnavailableError as exc:
        print(
            f"error: the LLM at {llm_url} did not answer: {exc}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001 - one clear line, exit 70
        print(f"error: chat failed: {_describe(exc)}", file=sys.stderr)
        return EX_SOFTWARE
    if as_json:
        print(json.dumps(transcript.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(transcript.as_text())
    return EX_OK
