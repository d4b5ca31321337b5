"""OpenTelemetry tracing: spans for each tool call and each database write batch.

`setup_tracing(config)` installs an SDK tracer provider exporting over OTLP/HTTP when
`runtime.otel_exporter_otlp_endpoint` (OTEL_EXPORTER_OTLP_ENDPOINT) is set; the spans then go to
`<endpoint>/v1/traces`. Without it nothing is installed and `tracer()` hands out the API's no-op
tracer: spans cost next to nothing and go nowhere.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from aio_agent.logs import get_logger

TRACER_NAME = "aio_agent"
_provider: Any = None
log = get_logger(__name__)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (the OTEL_EXPORTER_OTLP_ENDPOINT rule)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def setup_tracing(config: dict[str, Any]) -> None:
    """Export spans over OTLP/HTTP when an endpoint is configured; otherwise stay a no-op."""
    global _provider  # noqa: PLW0603 - one tracer provider per process, like the OTel API's own
    endpoint = (config.get("runtime") or {}).get("otel_exporter_otlp_endpoint")
    if not endpoint or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    department = (config.get("department") or {}).get("id", "")
    resource = Resource.create(
        {
            "service.name": "aio-agent",
            "service.namespace": "aio-federation",
            "aio.department_id": department,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing_enabled", endpoint=traces_url(endpoint))


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Flush pending spans (call once at exit); harmless when tracing is off."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))
        _provider.shutdown()


def tracer() -> trace.Tracer:
    """The agent's tracer (the no-op tracer until setup_tracing installed a provider)."""
    return trace.get_tracer(TRACER_NAME)
