"""Calling n8n tool webhooks: signed POSTs with timeouts, bounded retries and a capped answer.

`N8nToolClient.call(tool, arguments, session_id=...)` never raises for a remote failure; it returns
a `ToolResult` whose `for_llm()` text the agent hands to the LLM (an explicit error object on
failure, so the agent tells the caller instead of waiting). The request format and signature are
documented in `aio_agent.signing`.

Rules:
- one attempt may take the tool's `timeout_s` (TOOL_TIMEOUT or the spec's `timeout`);
- connect errors, dropped connections, timeouts and HTTP 5xx are retried at most twice, after a
  jittered exponential backoff (full jitter: uniform in [0, base * 2**n], n = 0, 1);
- HTTP 4xx (401/403 included) is `rejected` at once, never retried; 3xx is an error (redirects are
  not followed: the signed URL is the only URL);
- the answer is read up to 64 KiB (+1 byte to detect more). A longer answer is cut: the result
  stays ok, `truncated` is True, `data` is the first 64 KiB as text, and the LLM text says so;
  `response_bytes` is the Content-Length the server announced (else the bytes read);
- every call is recorded through `Store.record_tool_call` (never blocks), counted in metrics and
  traced as one span.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from opentelemetry.trace import Status, StatusCode

from aio_agent import metrics
from aio_agent.logs import get_logger
from aio_agent.signing import request_body, signed_headers
from aio_agent.telemetry import tracer

if TYPE_CHECKING:
    from aio_agent.store import Store

MAX_RESPONSE_BYTES = 64 * 1024
MAX_RETRIES = 2
BACKOFF_BASE_S = 0.25
ERROR_SNIPPET_CHARS = 200
log = get_logger(__name__)

ToolStatus = Literal["ok", "error", "timeout", "rejected"]

_ADVICE = {
    "error": "The tool failed. Tell the caller you could not complete this right now and offer "
    "to try again later or to help otherwise. Do not invent an answer.",
    "timeout": "The tool did not answer in time. Tell the caller the system is slow right now "
    "and offer to try again later. Do not invent an answer.",
    "rejected": "The tool refused the request. Tell the caller you cannot do this with the "
    "details given; ask for corrected details only if the error suggests it.",
}


@dataclass(frozen=True)
class ToolResult:
    """Outcome of one tool call (all attempts together)."""

    ok: bool
    status: ToolStatus
    http_status: int | None
    data: Any
    error: str | None
    latency_ms: float
    attempts: int
    response_bytes: int | None
    tool: str = ""
    truncated: bool = False

    def for_llm(self) -> str:
        """JSON text for the LLM: the data on success, an explicit error object on failure."""
        if self.ok:
            doc: dict[str, Any] = {"ok": True, "tool": self.tool, "data": self.data}
            if self.truncated:
                doc["truncated"] = True
                doc["note"] = (
                    f"The answer was longer than {MAX_RESPONSE_BYTES} bytes and was cut; "
                    "use what is there and say the information may be incomplete."
                )
            return json.dumps(doc, ensure_ascii=False, default=str)
        return json.dumps(
            {
                "ok": False,
                "tool": self.tool,
                "status": self.status,
                "error": self.error or self.status,
                "advice": _ADVICE.get(self.status, _ADVICE["error"]),
            },
            ensure_ascii=False,
        )


class _Retryable(Exception):  # noqa: N818 - internal control flow, not an error type users see
    def __init__(self, status: ToolStatus, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.status: ToolStatus = status
        self.message = message
        self.http_status = http_status


@dataclass(frozen=True)
class _Attempt:
    """A final (non-retryable) answer of one attempt."""

    status: ToolStatus
    http_status: int | None
    data: Any
    error: str | None
    response_bytes: int | None
    truncated: bool = False


class N8nToolClient:
    """Calls the n8n tools of one department's rendered config."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        store: Store | None = None,
        http: aiohttp.ClientSession | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.department_id: str = config["department"]["id"]
        self._secret: str | None = (config.get("n8n") or {}).get("webhook_secret")
        self._tools: dict[str, dict[str, Any]] = {
            spec["name"]: spec
            for spec in config.get("tools") or []
            if spec.get("kind") == "n8n" and spec.get("url")
        }
        self._store = store
        self._http = http
        self._owns_http = http is None
        self._backoff_base_s = backoff_base_s
        self._max_retries = max_retries

    @property
    def tool_names(self) -> list[str]:
        return list(self._tools)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, ttl_dns_cache=300),
                raise_for_status=False,
            )
            self._owns_http = True
        return self._http

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None and not self._http.closed:
            await self._http.close()

    async def call(self, tool: str, arguments: dict[str, Any], *, session_id: str) -> ToolResult:
        """POST the call to the tool's webhook; the result, never an exception, for any failure."""
        started = time.perf_counter()
        spec = self._tools.get(tool)
        with tracer().start_as_current_span(
            "aio.tool_call",
            attributes={
                "aio.tool": tool,
                "aio.department_id": self.department_id,
                "aio.session_id": session_id,
            },
        ) as span:
            if spec is None:
                outcome = _Attempt("error", None, None, f"unknown tool {tool!r}", None)
                attempts = 0
            else:
                outcome, attempts = await self._with_retries(spec, tool, arguments, session_id)
            latency_ms = (time.perf_counter() - started) * 1000.0
            result = ToolResult(
                ok=outcome.status == "ok",
                status=outcome.status,
                http_status=outcome.http_status,
                data=outcome.data,
                error=outcome.error,
                latency_ms=latency_ms,
                attempts=attempts,
                response_bytes=outcome.response_bytes,
                tool=tool,
                truncated=outcome.truncated,
            )
            span.set_attribute("aio.status", result.status)
            span.set_attribute("aio.attempts", attempts)
            if result.http_status is not None:
                span.set_attribute("http.response.status_code", result.http_status)
            if not result.ok:
                span.set_status(Status(StatusCode.ERROR, result.error or result.status))
        metrics.TOOL_CALLS.labels(tool=tool, status=result.status).inc()
        metrics.TOOL_CALL_DURATION.labels(tool=tool).observe(latency_ms / 1000.0)
        if self._store is not None:
            self._store.record_tool_call(
                session_id=session_id,
                tool=tool,
                arguments=arguments,
                status=result.status,
                http_status=result.http_status,
                latency_ms=latency_ms,
                attempts=attempts,
                error=result.error,
                response_bytes=result.response_bytes,
            )
        if not result.ok:
            log.warning(
                "tool_call_failed",
                tool=tool,
                session_id=session_id,
                status=result.status,
                http_status=result.http_status,
                attempts=attempts,
                error=result.error,
                latency_ms=round(latency_ms, 1),
            )
        return result

    async def _with_retries(
        self, spec: dict[str, Any], tool: str, arguments: dict[str, Any], session_id: str
    ) -> tuple[_Attempt, int]:
        call_id = uuid.uuid4().hex  # one per tool call: n8n may deduplicate retries on it
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(spec, tool, arguments, session_id, call_id), attempt
            except _Retryable as exc:
                if attempt > self._max_retries:
                    return _Attempt(exc.status, exc.http_status, None, exc.message, None), attempt
                delay = random.uniform(0, self._backoff_base_s * 2 ** (attempt - 1))  # noqa: S311
                log.info(
                    "tool_call_retry",
                    tool=tool,
                    session_id=session_id,
                    attempt=attempt,
                    reason=exc.message,
                    delay_s=round(delay, 3),
                )
                await asyncio.sleep(delay)

    async def _attempt(
        self,
        spec: dict[str, Any],
        tool: str,
        arguments: dict[str, Any],
        session_id: str,
        call_id: str,
    ) -> _Attempt:
        request_id = uuid.uuid4().hex
        now = time.time()
        body = request_body(
            department_id=self.department_id,
            session_id=session_id,
            tool=tool,
            arguments=arguments,
            request_id=request_id,
            call_id=call_id,
            now=now,
        )
        headers = signed_headers(self._secret, body, request_id=request_id, now=now)
        timeout_s = float(spec.get("timeout_s") or 10.0)
        try:
            async with asyncio.timeout(timeout_s):
                async with self._session().post(
                    spec["url"], data=body, headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
                    if status >= 500:
                        raise _Retryable("error", f"n8n answered HTTP {status}", status)
                    raw, truncated = await _read_capped(resp)
                    announced = resp.content_length
                    if truncated:
                        resp.close()  # do not drain the rest; drop this connection
        except _Retryable:
            raise
        except TimeoutError:
            raise _Retryable("timeout", f"no answer within {timeout_s:g} s") from None
        except aiohttp.InvalidURL as exc:
            return _Attempt("error", None, None, f"invalid tool URL: {exc}", None)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise _Retryable("error", f"connection failed: {_describe(exc)}") from None
        except aiohttp.ClientError as exc:
            return _Attempt("error", None, None, f"HTTP client error: {_describe(exc)}", None)
        size = announced if announced is not None else len(raw)
        if 300 <= status < 400:
            return _Attempt("error", status, None, f"n8n answered a redirect (HTTP {status})", size)
        if 400 <= status < 500:
            snippet = raw[:ERROR_SNIPPET_CHARS].decode("utf-8", "replace").strip()
            message = f"n8n refused the call (HTTP {status})" + (f": {snippet}" if snippet else "")
            return _Attempt("rejected", status, _parse(raw), message, size)
        data = raw.decode("utf-8", "replace") if truncated else _parse(raw)
        return _Attempt("ok", status, data, None, size, truncated)


async def _read_capped(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """At most MAX_RESPONSE_BYTES of the body, and whether there was more."""
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_RESPONSE_BYTES:
        chunk = await resp.content.read(MAX_RESPONSE_BYTES + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    raw = b"".join(chunks)
    if len(raw) > MAX_RESPONSE_BYTES:
        return raw[:MAX_RESPONSE_BYTES], True
    return raw, False


def _parse(raw: bytes) -> Any:
    """JSON when the body is JSON, else its text; None for an empty body."""
    if not raw.strip():
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
