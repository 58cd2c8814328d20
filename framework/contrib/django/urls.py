"""``path("", include("framework.contrib.django.urls"))``: ``/metrics`` and the health
probes (see :mod:`framework.contrib.django.observability`)."""

from __future__ import annotations

from django.urls import path

from framework.contrib.django import observability

urlpatterns = [
    path("metrics", observability.metrics_view, name="keel_metrics"),
    path("health/live", observability.live_view, name="keel_health_live"),
    path("health/ready", observability.ready_view, name="keel_health_ready"),
    path("health/workers", observability.workers_view, name="keel_health_workers"),
    path("health/writers", observability.writers_view, name="keel_health_writers"),
]
