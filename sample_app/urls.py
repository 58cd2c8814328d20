"""URLs of the sample shop: the admin, the JSON API under /api/, metrics and health."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", include("sample_app.shop.urls")),
    path("", include("framework.contrib.django.urls")),  # /metrics, /health/...
]

# A 403 in the admin's frame (JSON under /api/).
handler403 = "framework.contrib.django.error_pages.permission_denied"
