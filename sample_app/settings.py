"""Django settings of the sample shop.

Everything that differs between the demo, the tests and a deployment comes from environment
variables, so tests can point the stores at temporary files:

``KEEL_VAR_DIR``            where the embedded files live (default: ``var/`` in the repo)
``KEEL_EVENT_STORE``        event store URL (default: ``sqlite:///$KEEL_VAR_DIR/shop-events.db``;
                            e.g. ``kafka://127.0.0.1:19092``); read by ``framework.contrib.django``
``KEEL_READMODELS_DB``      SQLite file of the read models (``$KEEL_VAR_DIR/read_models.db``)
``KEEL_DATABASE_URL``       or a full SQLAlchemy URL for them (``postgresql://...``), as for
                            Alembic and the framework's workers
``KEEL_TEST_READMODELS_DB`` the read-model file the test run uses (default: a temp file)
``DJANGO_DB``               the SQLite file of users and sessions (``$KEEL_VAR_DIR/django.db``)
``DJANGO_DEBUG``            ``1`` (default) or ``0``
``DJANGO_SECRET_KEY``       required when ``DJANGO_DEBUG=0``
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from framework.contrib.django.conf import django_database

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("KEEL_VAR_DIR") or BASE_DIR / "var")

DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in {"1", "true", "yes", "on"}
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or (
    "django-insecure-keel-sample-shop-only-for-local-development" if DEBUG else ""
)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"] + [
    h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "framework.contrib.django",
    "sample_app.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # JSON errors under /api/ (404s, CSRF failures, 500s), whatever DEBUG says.
    "framework.contrib.django.error_pages.JsonApiErrors",
]

ROOT_URLCONF = "sample_app.urls"
WSGI_APPLICATION = "sample_app.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_READMODELS_URL = os.environ.get("KEEL_DATABASE_URL") or (
    "sqlite:///" + os.environ.get("KEEL_READMODELS_DB", str(VAR_DIR / "read_models.db"))
)

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(VAR_DIR / "django.db")),
    },
    # The read models: written by projection workers (SQLAlchemy), read by the admin and the
    # query views through unmanaged models. Never migrated by Django: Alembic owns it.
    "readmodels": django_database(
        _READMODELS_URL,
        TEST={
            "NAME": os.environ.get("KEEL_TEST_READMODELS_DB")
            or os.path.join(tempfile.gettempdir(), f"keel-test-readmodels-{os.getpid()}.db")
        },
    ),
}
DATABASE_ROUTERS = ["framework.contrib.django.routers.ReadModelRouter"]
MIGRATION_MODULES = {"shop": None}  # the shop's models are generated from SQLAlchemy tables

KEEL = {
    "APPLICATION": "sample_app.shop.application:build",
    "EVENT_STORE": f"sqlite:///{VAR_DIR / 'shop-events.db'}",
    "READMODELS_DATABASE": "readmodels",
    "PROJECTIONS": [
        "projections.customers:CustomersProjection",
        "projections.orders:OrdersProjection",
        "projections.sales:SalesPerHourProjection",
        "projections.order_history:OrderHistoryProjection",
        "projections.streams:ShopStreams",
    ],
    # The payments service's process manager (issue 14); its facts live in the read-model DB.
    "PROCESS_MANAGERS": ["sample_app.payments.service:payment_process_worker"],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "admin:login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "framework": {"handlers": ["console"], "level": os.environ.get("KEEL_LOG_LEVEL", "INFO")},
    },
}
