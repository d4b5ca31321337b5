"""Tracing: with OTEL_EXPORTER_OTLP_ENDPOINT set, a tool call's span reaches an OTLP/HTTP collector.

The collector here is a small aiohttp server standing in for an OpenTelemetry Collector's
OTLP/HTTP receiver: it accepts POST /v1/traces with a protobuf ExportTraceServiceRequest and
keeps the decoded requests. The agent side runs in a subprocess, because an OpenTelemetry tracer
provider can be installed only once per process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.fakes.n8n_server import FakeN8n
from tests.fakes.serving import serve
from tests.support import REPO, process_env

SECRET = "telemetry-test-secret"

AGENT_SIDE = textwrap.dedent(
    """
    import asyncio, json, sys
    from aio_agent.telemetry import setup_tracing, shutdown_tracing
    from aio_agent.tools import N8nToolClient

    config = json.loads(sys.argv[1])
    setup_tracing(config)

    async def main() -> None:
        client = N8nToolClient(config)
        result = await client.call("lookup_policy", {"topic": "vacation"}, session_id="s-42")
        await client.aclose()
        print(result.status)

    asyncio.run(main())
    shutdown_tracing()
    """
)


def _config(collector: str, n8n_base: str) -> dict[str, object]:
    return {
        "department": {"id": "hr"},
        "n8n": {"webhook_base": n8n_base, "webhook_secret": SECRET},
        "tools": [
            {
                "name": "lookup_policy",
                "kind": "n8n",
                "description": "Look up a policy.",
                "parameters": {"type": "object", "properties": {}},
                "url": f"{n8n_base}/hr/lookup_policy",
                "timeout_s": 5.0,
            }
        ],
        "runtime": {"otel_exporter_otlp_endpoint": collector},
    }


async def test_tool_call_span_is_exported_over_otlp_http() -> None:
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        async with FakeN8n(secret=SECRET) as n8n:
            n8n.answer("hr", "lookup_policy", {"title": "Paid time off"})
            config = _config(f"http://127.0.0.1:{port}", n8n.base_url)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                AGENT_SIDE,
                json.dumps(config),
                cwd=REPO,
                env=process_env({}),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        await runner.cleanup()

    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines()[-1] == "ok"  # the last line; a log line may come first
    spans = [
        span
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    tool_spans = [span for span in spans if span.name == "aio.tool_call"]
    assert len(tool_spans) == 1, [span.name for span in spans]
    attributes = {a.key: a.value.string_value for a in tool_spans[0].attributes}
    assert attributes["aio.tool"] == "lookup_policy"
    assert attributes["aio.department_id"] == "hr"
    assert attributes["aio.session_id"] == "s-42"
    resource = {
        a.key: a.value.string_value for a in received[0].resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "aio-agent"
    assert resource["aio.department_id"] == "hr"


def test_without_an_endpoint_nothing_is_exported() -> None:
    from aio_agent.telemetry import setup_tracing, tracer

    setup_tracing({"runtime": {"otel_exporter_otlp_endpoint": None}})
    with tracer().start_as_current_span("aio.tool_call") as span:
        assert not span.is_recording()
