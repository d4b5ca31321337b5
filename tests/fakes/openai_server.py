"""A stand-in for an OpenAI-compatible API (OpenAI, Groq, vLLM, Ollama, a whisper/TTS server).

Speaks: the HTTP+JSON subset `livekit-plugins-openai` uses. `GET /models`; `POST
/chat/completions` streaming Server-Sent Events of `chat.completion.chunk` objects (or one
`chat.completion` when `stream` is false); `POST /audio/transcriptions` (multipart in, `{"text"}`
out); `POST /audio/speech` (JSON in, a WAV of silence out, declared as `audio/wav`). Every request
must carry `Authorization: Bearer <api_key>` (401 otherwise); chat requests are recorded in
`self.chat_requests` for assertions.

Scripted, not intelligent: a `ToolRule(contains, tool, arguments)` makes the model call `tool`
with `arguments` when the last user message contains `contains` (case-insensitive) and the
request offers that tool. A tool call is streamed the way OpenAI does it: the first delta carries
index, id and function name, later deltas only argument fragments, then a chunk with
`finish_reason: "tool_calls"`. After a tool result the model answers `"<tool> said: <result>"`,
so a test sees the result reach the user. Otherwise it answers `reply` (default: an echo).

Standalone (the compose end-to-end test runs it as a service):
`python -m tests.fakes.openai_server --host 0.0.0.0 --port 8000 --api-key KEY --script FILE`,
where FILE is JSON `{"rules": [{"contains": "...", "tool": "...", "arguments": {...}}],
"reply": null}` (both keys optional).

Does not: tokenize, count real usage, honour temperature/tool_choice, support the Realtime or
Responses APIs, or produce real speech.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import secrets
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.serving import serve


@dataclass(frozen=True)
class ToolRule:
    """When the last user message contains `contains`, call `tool` with `arguments`."""

    contains: str
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeOpenAIServer:
    api_key: str = "sk-test-llm"
    rules: list[ToolRule] = field(default_factory=list)
    reply: str | None = None
    transcript: str = "hello"
    host: str = "127.0.0.1"
    port: int = 0
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    speech_requests: list[dict[str, Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/speech", self._speech)
        return app

    async def start(self) -> str:
        self._runner, self.port = await serve(self.app(), self.host, self.port)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # --- handlers -----------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid api key")
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "invalid api key")
        body = await request.json()
        self.chat_requests.append(body)
        model = str(body.get("model", "fake-model"))
        plan = self._plan(body)
        if not body.get("stream"):
            return web.json_response(_completion(model, plan))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in _chunks(model, plan):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _transcribe(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid api key")
        reader = await request.multipart()
        while await reader.next() is not None:
            pass
        return web.json_response({"text": self.transcript})

    async def _speech(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid api key")
        body = await request.json()
        self.speech_requests.append(body)
        return web.Response(body=_silence_wav(0.2), content_type="audio/wav")

    # --- the script ---------------------------------------------------------------------------
    def _plan(self, body: dict[str, Any]) -> dict[str, Any]:
        """What to answer: {"text": ...} or {"tool": name, "arguments": {...}}."""
        messages: list[dict[str, Any]] = body.get("messages", [])
        if messages and messages[-1].get("role") == "tool":
            result = _content_text(messages[-1].get("content"))
            name = _tool_name_of(messages, str(messages[-1].get("tool_call_id", "")))
            return {"text": f"{name} said: {result}"}
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        said = _content_text(user.get("content")) if user else ""
        offered = {
            (t.get("function") or {}).get("name")
            for t in body.get("tools") or []
            if isinstance(t, dict)
        }
        for rule in self.rules:
            if rule.contains.lower() in said.lower():
                if rule.tool in offered:
                    return {"tool": rule.tool, "arguments": rule.arguments}
                return {"text": f"I have no tool named {rule.tool}."}
        return {"text": self.reply if self.reply is not None else f"You said: {said}"}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def _tool_name_of(messages: list[dict[str, Any]], call_id: str) -> str:
    for message in reversed(messages):
        for call in message.get("tool_calls") or []:
            if call.get("id") == call_id:
                return str((call.get("function") or {}).get("name", "tool"))
    return "tool"


def _chunk(model: str, cid: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _chunks(model: str, plan: dict[str, Any]) -> list[dict[str, Any]]:
    cid = f"chatcmpl-{secrets.token_hex(6)}"
    if "tool" in plan:
        arguments = json.dumps(plan["arguments"])
        head = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": f"call_{secrets.token_hex(6)}",
                    "type": "function",
                    "function": {"name": plan["tool"], "arguments": ""},
                }
            ],
        }
        out = [_chunk(model, cid, head, None)]
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            out.append(
                _chunk(
                    model,
                    cid,
                    {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                    None,
                )
            )
        out.append(_chunk(model, cid, {}, "tool_calls"))
        return out
    words = str(plan["text"]).split(" ")
    out = [_chunk(model, cid, {"role": "assistant", "content": ""}, None)]
    out += [
        _chunk(model, cid, {"content": word if i == 0 else " " + word}, None)
        for i, word in enumerate(words)
    ]
    out.append(_chunk(model, cid, {}, "stop"))
    return out


def _completion(model: str, plan: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.get("text")}
    if "tool" in plan:
        message["tool_calls"] = [
            {
                "id": f"call_{secrets.token_hex(6)}",
                "type": "function",
                "function": {"name": plan["tool"], "arguments": json.dumps(plan["arguments"])},
            }
        ]
    return {
        "id": f"chatcmpl-{secrets.token_hex(6)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if "tool" in plan else "stop",
            }
        ],
    }


def _silence_wav(seconds: float, rate: int = 24000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(rate * seconds))
    return buffer.getvalue()


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error"}}, status=status
    )


def load_script(path: str | Path) -> tuple[list[ToolRule], str | None]:
    """Rules and reply from a JSON script file (see the module docstring)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    rules = [
        ToolRule(str(r["contains"]), str(r["tool"]), dict(r.get("arguments") or {}))
        for r in doc.get("rules") or []
    ]
    reply = doc.get("reply")
    return rules, None if reply is None else str(reply)


async def _serve(server: FakeOpenAIServer) -> None:
    await server.start()
    print(f"fake OpenAI API on {server.base_url} ({len(server.rules)} rules)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.openai_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default="sk-test-llm")
    parser.add_argument("--script", default=None, help="JSON file with rules and reply")
    args = parser.parse_args(argv)
    rules, reply = load_script(args.script) if args.script else ([], None)
    server = FakeOpenAIServer(
        api_key=args.api_key, rules=rules, reply=reply, host=args.host, port=args.port
    )
    try:
        asyncio.run(_serve(server))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
