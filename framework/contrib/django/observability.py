"""Metrics and health for a Django-hosted keel application.

- :func:`metrics_view` serves ``/metrics`` (Prometheus text) when ``KEEL["METRICS_EXPORTER"]``
  is ``"prometheus"``; the web process reports every configured projection's lag, lag in
  seconds and dead letters, and every configured process manager's active instances, overdue
  deadlines, dead letters and counted outcomes (sampled at scrape time from the database), so
  a stopped worker shows as rising lag or overdue deadlines.
- :func:`live_view`, :func:`ready_view`, :func:`workers_view` and :func:`writers_view` answer
  200 or 503 with the checks as JSON; ``manage.py keel_health`` gives the same verdict as an
  exit code.

Include ``framework.contrib.django.urls`` to get them all (``/metrics``, ``/health/...``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from framework.contrib.django import heartbeats
from framework.contrib.django.conf import (
    get_application,
    get_engine,
    get_process_workers,
    get_projections,
    get_settings,
)
from framework.errors import ConfigurationError, FrameworkError
from framework.observability import (
    Check,
    Health,
    LagSampler,
    ProcessSampler,
    StreamSampler,
    database_check,
    projection_lag,
    store_check,
)

__all__ = [
    "WriterBeat",
    "live_view",
    "metrics_view",
    "ready_view",
    "serve_metrics",
    "setup_metrics",
    "shards_check",
    "web_health",
    "worker_health",
    "workers_view",
    "writer_health",
    "writers_view",
]

log = logging.getLogger(__name__)

WRITER_KIND = "writer"

_lock = threading.Lock()
_samplers: list[LagSampler | StreamSampler | ProcessSampler] = []


def setup_metrics(*, sample_lag: bool = True) -> bool:
    """Install the Prometheus exporter if ``KEEL["METRICS_EXPORTER"]`` asks for it (once per
    process), and report the configured projections' lag; True when metrics are exported."""
    if get_settings().metrics_exporter != "prometheus":
        return False
    from framework.observability import prometheus
    from framework.streaming import StreamProjection

    with _lock:
        prometheus.install(service_name=get_application().name)
        if sample_lag and not _samplers:
            projections = list(get_projections().values())
            engine = get_engine()
            streaming = [p for p in projections if isinstance(p, StreamProjection)]
            _samplers.append(LagSampler(projections, get_application().store, engine).start())
            _samplers.append(StreamSampler(streaming, engine).start())
            try:
                managers = list(get_process_workers().values())
            except FrameworkError as error:  # the projections' figures still go out
                log.warning("no process-manager metrics: %s", error)
                managers = []
            _samplers.append(ProcessSampler(managers).start())
    return True


def serve_metrics(port: int | None) -> None:
    """For a worker or writer process (``--metrics-port``): serve ``/metrics`` on
    ``127.0.0.1:port``. Raises CommandError-worthy ConfigurationError when the exporter is
    off."""
    if port is None:
        return
    if not setup_metrics():
        raise ConfigurationError(
            "--metrics-port needs KEEL['METRICS_EXPORTER'] = 'prometheus' "
            "(or KEEL_METRICS_EXPORTER=prometheus)"
        )
    from framework.observability import prometheus

    prometheus.serve(port)


def reset() -> None:
    """Forget the lag sampler (settings changed; tests)."""
    with _lock:
        for sampler in _samplers:
            sampler.stop()
        _samplers.clear()


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus' text format; 404 when the exporter is off."""
    if not setup_metrics():
        return HttpResponse(
            'metrics are off: set KEEL["METRICS_EXPORTER"] = "prometheus" (needs the '
            "[metrics] extra)\n",
            status=404,
            content_type="text/plain",
        )
    from framework.observability import prometheus

    body, content_type = prometheus.render()
    return HttpResponse(body, content_type=content_type)


# -- health ---------------------------------------------------------------------------------


def web_health() -> Health:
    """A web process can serve: the event store and the read-model database answer."""
    health = Health()
    health.add(store_check(get_application().store))
    health.add(database_check(get_engine()))
    return health


def worker_health(
    names: Iterable[str] | None = None, *, stall_after: float | None = None
) -> Health:
    """The projections' workers are applying: each has a fresh heartbeat, and none lags
    without having applied an event for ``stall_after`` seconds (default
    ``KEEL["HEALTH_STALL_AFTER"]``). A broker or database out of reach fails too.

    Raises ConfigurationError for a name that is no projection: a probe with a typo is
    misconfigured, not a sign that the workers are down."""
    stall = get_settings().health_stall_after if stall_after is None else stall_after
    if stall < 0:
        raise ConfigurationError(f"stall_after={stall} must be 0 seconds or more")
    projections = get_projections()
    unknown = sorted(set(names or ()) - set(projections))
    if unknown:
        raise ConfigurationError(
            f"no projection is named {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(projections)) or 'none'})"
        )
    store, engine = get_application().store, get_engine()
    health = Health()
    try:
        beats = heartbeats.read_beats(engine)
    except Exception as error:
        return health.add(Check("read-model database", False, f"unreachable: {error}"[:300]))
    for name in names or list(projections):
        try:
            lags, _dead = projection_lag(projections[name], store, engine)
        except Exception as error:
            health.add(Check(name, False, f"cannot read its lag: {error}"[:300]))
            continue
        lag = sum(p.events for p in lags)
        beat = beats.get(name)
        health.add(_worker_check(name, beat, lag, stall))
    return health


def _worker_check(name: str, beat: heartbeats.Beat | None, lag: int, stall: float) -> Check:
    if beat is None:
        return Check(name, False, f"no worker ever ran (lag {lag})")
    age = beat.age()
    if age >= heartbeats.STALE_AFTER:
        return Check(name, False, f"no worker: last heartbeat {age:.0f} s ago (lag {lag})")
    if lag:
        since = _seconds_since(beat.applied_at)
        if since is None or since >= stall:
            when = "never" if since is None else f"{since:.0f} s ago"
            return Check(name, False, f"stopped applying: lag {lag}, last applied {when}")
    return Check(name, True, f"applying (lag {lag})")


def _seconds_since(moment: Any) -> float | None:
    import datetime as dt

    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    elapsed: float = (dt.datetime.now(dt.UTC) - moment).total_seconds()
    return max(0.0, elapsed)


def writer_health() -> Health:
    """On Kafka: the broker answers and every writer shard is owned by a writer with a fresh
    heartbeat (a writer that lost its shard stops listing it). Embedded stores need no
    writer."""
    app = get_application()
    health = Health()
    health.add(store_check(app.store))
    shards = getattr(app.store, "shards", None)
    if shards is None or not hasattr(app.store, "commands_topic"):
        return health.add(Check("writers", True, "the store decides commands in-process"))
    return health.add(shards_check(shards))


def shards_check(shards: int) -> Check:
    """Every one of ``shards`` writer shards is listed by a writer with a fresh heartbeat."""
    try:
        beats = heartbeats.read_beats(get_engine())
    except Exception as error:
        return Check("read-model database", False, f"unreachable: {error}"[:300])
    owned: set[int] = set()
    for beat in beats.values():
        if beat.kind == WRITER_KIND and beat.alive and beat.detail:
            owned.update(json.loads(beat.detail).get("shards", []))
    missing = sorted(set(range(shards)) - owned)
    if missing:
        return Check("writers", False, f"no live writer owns shard(s) {missing}")
    return Check("writers", True, f"all {shards} shard(s) owned")


class WriterBeat:
    """A writer process's heartbeat: every ``interval`` seconds, the shards it owns."""

    def __init__(self, member: Any, name: str, *, interval: float = 2.0) -> None:
        self.member = member
        self.name = name
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keel-writer-beat", daemon=True)

    def start(self) -> WriterBeat:
        self._thread.start()
        return self

    def beat(self) -> None:
        shards = self.member.owned()
        heartbeats.beat(
            get_engine(), self.name, kind=WRITER_KIND, detail=json.dumps({"shards": shards})
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as error:  # the writer's work does not depend on its beat
                log.debug("no writer heartbeat: %s", error)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval + 1)
        try:  # leave no stale claim: a stopped writer owns nothing
            heartbeats.beat(get_engine(), self.name, kind=WRITER_KIND, detail='{"shards": []}')
        except Exception as error:
            log.debug("no last writer heartbeat: %s", error)


def _answer(health: Health) -> JsonResponse:
    return JsonResponse(health.as_json(), status=200 if health.ok else 503)


@never_cache
@require_GET
def live_view(request: HttpRequest) -> JsonResponse:
    """``GET /health/live``: the process answers (restart it when this fails)."""
    return JsonResponse({"status": "ok", "checks": []})


@never_cache
@require_GET
def ready_view(request: HttpRequest) -> JsonResponse:
    """``GET /health/ready``: this web process can serve (store and database answer)."""
    return _answer(web_health())


@never_cache
@require_GET
def workers_view(request: HttpRequest) -> JsonResponse:
    """``GET /health/workers[?projection=NAME...]``: the projections' workers are applying
    (400 for a name that is no projection)."""
    names = [name[:200] for name in request.GET.getlist("projection")[:100]] or None
    try:
        return _answer(worker_health(names))
    except ConfigurationError as error:
        return JsonResponse({"error": str(error)}, status=400)


@never_cache
@require_GET
def writers_view(request: HttpRequest) -> JsonResponse:
    """``GET /health/writers``: every writer shard is owned (Kafka)."""
    return _answer(writer_health())
