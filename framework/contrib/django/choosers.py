"""Choosers for aggregate ids: a command field named like a read model's primary key
(``customer_id``, ``order_id``) becomes an autocomplete over that read model (search by what its
admin searches, labelled by the row's ``__str__``), instead of a bare UUID text box.

It reuses the admin's own select2 widget script (``admin/js/autocomplete.js``) with a JSON view of
ours, ``/admin/keel/command/choose/<field>/?term=...``, which answers only users who may view
that read model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import get_select2_language
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import reverse

if TYPE_CHECKING:
    from framework.contrib.django.admin import ReadModelAdmin

__all__ = ["ChooserWidget", "attach", "choose_view", "choosers"]

PAGE_SIZE = 20


def choosers(site: admin.AdminSite) -> dict[str, ReadModelAdmin]:
    """Field name -> the read-model admin whose rows it chooses (by primary key name)."""
    from framework.contrib.django.admin import ReadModelAdmin

    found: dict[str, ReadModelAdmin] = {}
    for model, model_admin in site._registry.items():
        if isinstance(model_admin, ReadModelAdmin) and model_admin.aggregate_type:
            found.setdefault(model._meta.pk.attname, model_admin)
    return found


class ChooserWidget(forms.Select):
    """A select2 autocomplete over one read model; renders only the chosen row as an option."""

    def __init__(self, url: str, model_admin: ReadModelAdmin, request: HttpRequest) -> None:
        super().__init__(
            attrs={
                "class": "admin-autocomplete keel-chooser",
                "data-ajax--url": url,
                "data-ajax--cache": "true",
                "data-ajax--delay": 250,
                "data-ajax--type": "GET",
                "data-theme": "admin-autocomplete",
                "data-allow-clear": "false",
                "data-placeholder": f"Type to search {model_admin.opts.verbose_name_plural}",
                "lang": get_select2_language() or "en",
                "style": "width: 32em",
            }
        )
        self.model_admin = model_admin
        self.request = request

    def optgroups(self, name: str, value: Any, attrs: dict[str, Any] | None = None) -> Any:
        chosen = [v for v in value if v]
        groups: list[Any] = []
        if not chosen:
            groups.append((None, [self.create_option(name, "", "", False, 0)], 0))
            return groups
        label = chosen[0]
        try:
            row = self.model_admin.get_queryset(self.request).filter(pk=chosen[0]).first()
            if row is not None:
                label = str(row)
        except Exception:  # a malformed id: show it as it is, the form reports it
            pass
        groups.append((None, [self.create_option(name, chosen[0], label, True, 0)], 0))
        return groups

    @property
    def media(self) -> forms.Media:
        i18n = get_select2_language()
        js = (
            "admin/js/vendor/jquery/jquery.min.js",
            "admin/js/vendor/select2/select2.full.min.js",
            *((f"admin/js/vendor/select2/i18n/{i18n}.js",) if i18n else ()),
            "admin/js/jquery.init.js",
            "admin/js/autocomplete.js",
        )
        return forms.Media(
            js=js,
            css={
                "screen": (
                    "admin/css/vendor/select2/select2.min.css",
                    "admin/css/autocomplete.css",
                )
            },
        )


def attach(
    form: forms.Form,
    request: HttpRequest,
    site: admin.AdminSite,
    skip: set[str],
    command_type: str = "",
) -> None:
    """Replace the widget of every chooser field of ``form`` the user may look up; the chooser
    offers the rows ``ReadModelAdmin.chooser_filters[command_type]`` allows."""
    for name, model_admin in choosers(site).items():
        field = form.fields.get(name)
        if field is None or name in skip or not model_admin.has_view_permission(request):
            continue
        url = reverse(f"{site.name}:keel_command_choose", args=[name])
        if command_type:
            url += f"?{urlencode({'command': command_type})}"
        field.widget = ChooserWidget(url, model_admin, request)
        if field.label and field.label.lower().endswith(" id"):
            field.label = model_admin.aggregate_type or field.label[:-3]  # "Customer"


def choose_view(request: HttpRequest, field: str, site: admin.AdminSite) -> JsonResponse:
    """select2's JSON: ``{"results": [{"id", "text"}], "pagination": {"more": bool}}``."""
    model_admin = choosers(site).get(field)
    if model_admin is None:
        raise Http404(f"nothing to choose for {field[:100]!r}")
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    term = request.GET.get("term", "")[:100]
    page = request.GET.get("page", "1")
    number = int(page) if page.isascii() and page.isdigit() and len(page) < 5 else 1
    queryset = model_admin.get_queryset(request)
    wanted = model_admin.chooser_filters.get(request.GET.get("command", "")[:100])
    if wanted:
        queryset = queryset.filter(**wanted)
    queryset, _ = model_admin.get_search_results(request, queryset, term)
    start = (max(number, 1) - 1) * PAGE_SIZE
    rows = list(queryset.order_by(*(model_admin.ordering or ["pk"]))[start : start + PAGE_SIZE + 1])
    return JsonResponse(
        {
            "results": [{"id": str(r.pk), "text": str(r)} for r in rows[:PAGE_SIZE]],
            "pagination": {"more": len(rows) > PAGE_SIZE},
        }
    )
