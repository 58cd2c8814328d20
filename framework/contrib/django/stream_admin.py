"""The admin's streams page (``/admin/keel/stream/``): per streaming projection its stream time
per partition, the watermark that closes windows, open windows, rows amended after close and
its late events, with a button that re-drives the ones parked as dead letters (through the log:
``Clock.LateAccepted`` records, see :func:`framework.streaming.redrive_late`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from framework.contrib.django import models as keel_models
from framework.contrib.django.admin import ReadOnlyAdmin
from framework.contrib.django.conf import get_application, get_engine, get_projections
from framework.errors import FrameworkError
from framework.streaming import StreamProjection, late_events, redrive_late, stream_status

__all__ = ["StreamAdmin"]

SHOWN = 100
"""Late events listed per projection (the newest positions last)."""


def _streaming() -> dict[str, StreamProjection]:
    return {n: p for n, p in get_projections().items() if isinstance(p, StreamProjection)}


class StreamAdmin(ReadOnlyAdmin):
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user: Any = request.user
        return bool(user.has_perm("keel.view_projection"))

    def get_urls(self) -> list[URLPattern]:
        site = self.admin_site
        return [
            path("", site.admin_view(self.streams_view), name="keel_stream_changelist"),
            path(
                "<str:name>/redrive/",
                site.admin_view(require_POST(self.redrive_view)),
                name="keel_stream_redrive",
            ),
        ]

    def streams_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        engine = get_engine()
        rows: list[dict[str, Any]] = []
        for name, projection in _streaming().items():
            try:
                status = stream_status(projection, engine)
                late = late_events(projection, engine)
            except Exception as error:  # a missing table shows as such, not as a 500
                rows.append({"name": name, "error": f"{type(error).__name__}: {error}"})
                continue
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "stream_times": sorted(status.stream_times.items()),
                    "late": late[-SHOWN:],
                    "late_total": len(late),
                    "parked": sum(1 for e in late if e.action == "dead_letter"),
                }
            )
        user: Any = request.user
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Streams: stream time and late events",
            "projections": rows,
            "can_redrive": user.has_perm("keel.redrive_deadletter"),
        }
        return TemplateResponse(request, "keel/streams.html", context)

    def redrive_view(self, request: HttpRequest, name: str) -> HttpResponse:
        user: Any = request.user
        if not user.has_perm("keel.redrive_deadletter"):
            raise PermissionDenied
        back = redirect(f"{self.admin_site.name}:keel_stream_changelist")
        projection = _streaming().get(name)
        if projection is None:
            messages.error(request, f"{name} is no streaming projection")
            return back
        chosen: dict[str, list[tuple[int, int]]] = {}
        for value in request.POST.getlist("late"):
            stream, _, position = value.rpartition("@")
            partition, _, offset = position.partition(":")
            if not (stream and partition.isdigit() and offset.isdigit()):
                messages.error(request, f"{value[:100]!r} is no late event")
                return back
            chosen.setdefault(stream, []).append((int(partition), int(offset)))
        if not chosen:
            messages.warning(request, "Select the parked late events to re-drive.")
            return back
        try:
            store = get_application().store
            written = 0
            for stream, positions in sorted(chosen.items()):
                written += len(
                    redrive_late(
                        store, projection, get_engine(), stream=stream, positions=positions
                    )
                )
        except FrameworkError as error:
            messages.error(request, f"Re-drive of {name} failed: {error}")
        else:
            count = sum(len(p) for p in chosen.values())
            messages.success(
                request,
                f"{name}: {count} late event(s) re-driven through the log; they count once "
                "the projection's workers reach the records.",
            )
        return back


admin.site.register(keel_models.Stream, StreamAdmin)
