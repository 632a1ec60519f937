"""Optional OpenTelemetry tracing: gateway → queue → worker → store, off by default.

With ``SDSERVE_OTEL_ENABLED=true`` and the ``otel`` extra installed, each process exports spans over
OTLP/HTTP: the gateway's ``sdserve.submit`` (the job's trace context is stored on the job record as a
W3C ``traceparent``), then on the worker ``sdserve.job`` as its child, with ``sdserve.generate`` and
``sdserve.store`` inside. Without the extra, or when disabled, every call here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from sdserve.settings import Settings

log = logging.getLogger(__name__)

_enabled = False


def setup_tracing(settings: Settings, service: str, exporter: Any = None) -> bool:
    """Configure the process's tracer provider; returns whether tracing is on."""
    global _enabled  # noqa: PLW0603 - the process-wide switch, set once at start
    if not settings.otel_enabled:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("SDSERVE_OTEL_ENABLED is set but OpenTelemetry is not installed (pip install 'sdserve[otel]')")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": f"sdserve-{service}"}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


@contextlib.contextmanager
def span(name: str, parent: str | None = None, **attributes: Any) -> Iterator[None]:
    """A span named ``name`` (a child of the ``traceparent`` given, else of the current span)."""
    if not _enabled:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
    tracer = trace.get_tracer("sdserve")
    with tracer.start_as_current_span(name, context=context) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        yield


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (to store on a job), or None."""
    if not _enabled:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")
