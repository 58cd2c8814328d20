"""Error answers people can read: JSON under the API, the admin's look elsewhere.

In ``settings.py`` and the root ``urls.py``::

    MIDDLEWARE += ["framework.contrib.django.error_pages.JsonApiErrors"]
    handler403 = "framework.contrib.django.error_pages.permission_denied"

- :class:`JsonApiErrors` turns every error answer under ``KEEL['API_PREFIX']`` (``/api/``) that
  is not JSON already (an unknown URL, a CSRF failure, a wrong method, a crash) into
  ``{"error": "...", "status": N}``, whatever ``DEBUG`` says: an API client never has to parse
  an HTML page.
- :func:`permission_denied` renders a 403 in the admin's frame (header, breadcrumbs, the user's
  links) with the reason, instead of Django's bare "403 Forbidden".
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

__all__ = ["JsonApiErrors", "is_api", "permission_denied"]


def is_api(request: HttpRequest) -> bool:
    """Whether ``request`` is for the JSON API (its path starts with ``KEEL['API_PREFIX']``)."""
    from framework.contrib.django.conf import get_settings

    try:
        prefix = get_settings().api_prefix
    except Exception:  # a broken KEEL setting must not turn every error page into a crash
        prefix = "/api/"
    return bool(prefix) and request.path.startswith(prefix)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


class JsonApiErrors:
    """Middleware: error answers under the API prefix are JSON (see the module docstring)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code < 400 or not is_api(request):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        messages = {
            403: "forbidden (log in, and send the CSRF token with a POST)",
            404: f"no API endpoint at {request.path[:200]}",
            405: "method not allowed",
            500: "internal error; the server log has the details",
        }
        status = response.status_code
        answer = JsonResponse(
            {"error": messages.get(status, _reason(status).lower()), "status": status},
            status=status,
        )
        if "Allow" in response:
            answer["Allow"] = response["Allow"]
        return answer


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler403``: JSON under the API, else a 403 page in the admin's frame."""
    reason = str(exception or "") or "You do not have permission to see or do this."
    if is_api(request):
        return JsonResponse({"error": reason, "status": 403}, status=403)
    context = {
        **admin.site.each_context(request),
        "title": "Permission denied",
        "reason": reason,
    }
    response = TemplateResponse(request, "keel/403.html", context, status=403)
    response.render()
    return response
