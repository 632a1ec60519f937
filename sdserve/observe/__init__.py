"""Observability: JSON logs, Prometheus metrics, OpenTelemetry traces, the start-up check of Redis."""
