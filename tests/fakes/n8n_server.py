"""A fake n8n webhook server for tests and the tool-latency benchmark.

Stands in for: n8n's production webhooks (`POST /webhook/<department>/<tool>`), as a department's
workflows would serve them when they check the agent's header auth and signature.
Speaks: plain HTTP/1.1 on 127.0.0.1 (aiohttp), the request format and signing scheme documented in
`aio_agent.signing` (verified with `aio_agent.signing.verify`, the same code a reader would trust):
403 when X-AIO-Auth is missing or is not the header token of the secret (what n8n's Header Auth
answers, its credential holding `aio_agent.signing.header_token(secret)`), 401 when the signature or
timestamp is bad, 409 when a request id is reused (replay), 404 for a route nobody scripted.
Scriptable per route: answer JSON, fail with a status N times then answer, answer a fixed 4xx,
sleep before answering (to cause client timeouts), answer a huge body, drop the connection.
Records every request (headers, raw body, parsed JSON, outcome, handling time).
Does not: run workflows, store executions, speak n8n's REST API or test webhooks, or support methods
other than POST.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aio_agent.signing import (
    AUTH_HEADER,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    header_token,
    verify,
)
from tests.fakes.serving import serve


@dataclass
class Script:
    """What one route does. Checks run first; then fail_times failures, then the answer."""

    answer: Any = field(default_factory=lambda: {"ok": True})
    status: int = 200
    fail_times: int = 0
    fail_status: int = 500
    sleep_s: float = 0.0
    huge_bytes: int = 0
    drop_connection: bool = False


@dataclass
class Recorded:
    """One request as the fake saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    outcome: int | str  # HTTP status answered, or "dropped"
    handling_ms: float = 0.0


class FakeN8n:
    """Run with `async with FakeN8n(secret=...) as n8n:`; routes are `<base>/<dept>/<tool>`."""

    def __init__(self, *, secret: str | None = None, base_path: str = "/webhook") -> None:
        self.secret = secret
        self.base_path = base_path.rstrip("/")
        self.scripts: dict[str, Script] = {}
        self.requests: list[Recorded] = []
        self._seen_ids: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- scripting ------------------------------------------------------------------------------
    def route(self, dept: str, tool: str, script: Script | None = None) -> Script:
        script = script or Script()
        self.scripts[f"{dept}/{tool}"] = script
        return script

    def answer(self, dept: str, tool: str, data: Any, status: int = 200) -> Script:
        return self.route(dept, tool, Script(answer=data, status=status))

    def fail_then_answer(
        self, dept: str, tool: str, times: int, data: Any = None, fail_status: int = 500
    ) -> Script:
        return self.route(
            dept,
            tool,
            Script(answer=data or {"ok": True}, fail_times=times, fail_status=fail_status),
        )

    def reject(self, dept: str, tool: str, status: int = 404) -> Script:
        return self.route(dept, tool, Script(answer={"message": "no such record"}, status=status))

    def sleep(self, dept: str, tool: str, seconds: float) -> Script:
        return self.route(dept, tool, Script(sleep_s=seconds))

    def huge(self, dept: str, tool: str, nbytes: int) -> Script:
        return self.route(dept, tool, Script(huge_bytes=nbytes))

    def drop(self, dept: str, tool: str) -> Script:
        return self.route(dept, tool, Script(drop_connection=True))

    # --- inspection -----------------------------------------------------------------------------
    def url(self, dept: str, tool: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}/{dept}/{tool}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def hits(self, dept: str, tool: str) -> list[Recorded]:
        path = f"{self.base_path}/{dept}/{tool}"
        return [r for r in self.requests if r.path == path]

    # --- server ---------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeN8n:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post(self.base_path + "/{dept}/{tool}", self._handle)
        self._runner, self.port = await serve(
            app, "127.0.0.1", 0, access_log=None, shutdown_timeout=0.2
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await request.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        record = Recorded(request.path, dict(request.headers), body, parsed, 0)
        self.requests.append(record)
        response = await self._respond(request, body, record)
        record.handling_ms = (time.perf_counter() - started) * 1000.0
        if isinstance(response, web.Response):
            record.outcome = response.status
        return response

    async def _respond(
        self, request: web.Request, body: bytes, record: Recorded
    ) -> web.StreamResponse:
        if self.secret is not None:
            if request.headers.get(AUTH_HEADER) != header_token(self.secret):
                return web.json_response({"message": "Authorization data is wrong!"}, status=403)
            if not verify(
                self.secret,
                request.headers.get(TIMESTAMP_HEADER, ""),
                body,
                request.headers.get(SIGNATURE_HEADER, ""),
            ):
                return web.json_response({"message": "bad signature"}, status=401)
        request_id = request.headers.get(REQUEST_ID_HEADER, "")
        if request_id:
            if request_id in self._seen_ids:
                return web.json_response({"message": "replayed request id"}, status=409)
            self._seen_ids.add(request_id)
        key = f"{request.match_info['dept']}/{request.match_info['tool']}"
        script = self.scripts.get(key)
        if script is None:
            return web.json_response(
                {"code": 404, "message": f'The requested webhook "POST {key}" is not registered.'},
                status=404,
            )
        if script.drop_connection:
            record.outcome = "dropped"
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if script.sleep_s:
            await asyncio.sleep(script.sleep_s)
        if script.fail_times > 0:
            script.fail_times -= 1
            return web.json_response({"message": "workflow failed"}, status=script.fail_status)
        if script.huge_bytes:
            filler = "x" * script.huge_bytes
            return web.Response(
                body=json.dumps({"blob": filler}).encode(), content_type="application/json"
            )
        return web.json_response(script.answer, status=script.status)
