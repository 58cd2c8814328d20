"""Prometheus exposition of keel's metrics (the ``[metrics]`` extra: the OpenTelemetry SDK,
its Prometheus reader and ``prometheus-client``).

:func:`install` makes the SDK's ``MeterProvider`` (with a Prometheus reader) the global one,
so every instrument of :mod:`framework.observability` lands in ``prometheus_client``'s
registry; :func:`render` is what a ``/metrics`` view returns, and :func:`serve` serves it on a
port of its own (for writer and worker processes, which have no web server).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from framework.errors import ConfigurationError

__all__ = ["install", "installed", "render", "serve"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_installed = False


def _require() -> None:
    try:
        import opentelemetry.exporter.prometheus
        import opentelemetry.sdk.metrics  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as error:
        raise ConfigurationError(
            f"Prometheus metrics need the [metrics] extra ({error.name} is missing): "
            "pip install 'keel-cqrs[metrics]'"
        ) from None


def install(*, service_name: str = "keel") -> bool:
    """Install the SDK's meter provider with a Prometheus reader (once per process). Returns
    False, changing nothing, when the application installed its own SDK provider already
    (add ``PrometheusMetricReader()`` to its readers instead)."""
    global _installed
    _require()
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    with _lock:
        if _installed:
            return True
        if isinstance(metrics.get_meter_provider(), MeterProvider):
            log.warning(
                "a MeterProvider is installed already; add PrometheusMetricReader() to it "
                "for /metrics to show keel's instruments"
            )
            return False
        provider = MeterProvider(
            metric_readers=[PrometheusMetricReader()],
            resource=Resource.create({SERVICE_NAME: service_name}),
        )
        metrics.set_meter_provider(provider)
        _installed = True
        return True


def installed() -> bool:
    return _installed


def render() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    _require()
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (returns the server)."""
    _require()
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr)
    log.info("metrics on http://%s:%s/metrics", addr, port)
    return server
