"""Wiring of the payments service's processes, from the environment.

- ``KEEL_SHOP_EVENT_STORE`` / ``KEEL_PAYMENTS_EVENT_STORE`` (else ``KEEL_EVENT_STORE``): the
  two services' stores (on Kafka: the same cluster, two topics).
- ``KEEL_PROJECTION_PAYMENT_PROCESS_DATABASE_URL`` (else ``KEEL_DATABASE_URL``,
  ``DATABASE_URL``): where the process manager keeps its facts and outbox.
- ``KEEL_PAYMENT_WINDOW_SECONDS``: how long an order waits for its payment.
- ``KEEL_SHOP_NAME`` / ``KEEL_PAYMENTS_NAME``: the stores' names (default ``shop`` and
  ``payments``; they name the Kafka topics and groups), for running a second copy of both
  services on one cluster (staging, tests).

::

    python -m framework.writer run sample_app.payments.service:payments_app    # its writer
    python -m framework.process run sample_app.payments.service:payment_process_worker
    python -m framework.worker run projections.payments:PaymentsProjection --app payments
    python -m framework.worker run projections.payments:UnpaidOrdersProjection --app payments
    python -m framework.worker run projections.payments:PaymentOrdersProjection --app shop
"""

from __future__ import annotations

import os
from typing import Any

from framework.application import Application
from framework.database import engine_for
from framework.persistence import EventStore, open_store, store_url_from_env
from framework.process import ProcessWorker
from sample_app.payments import application as payments
from sample_app.payments.process import PaymentProcess
from sample_app.shop import application as shop

__all__ = ["payment_process_worker", "payments_app", "shop_app"]


def _store(app: str) -> EventStore:
    return open_store(store_url_from_env(app), name=os.environ.get(f"KEEL_{app.upper()}_NAME", app))


def shop_app() -> Application:
    """The shop, as the payments service reaches it: its events to read, its command path."""
    return shop.build(_store(shop.NAME))


def payments_app() -> Application:
    return payments.build(_store(payments.NAME))


def payment_process_worker(**options: Any) -> ProcessWorker:
    """The payment process over the shop's and the payments service's events."""
    shop_, payments_ = shop_app(), payments_app()
    return ProcessWorker(
        PaymentProcess(),
        sources=[shop_.store, payments_.store],
        targets=[shop_, payments_],
        engine=options.pop("engine", None) or engine_for(PaymentProcess.name),
        **options,
    )
