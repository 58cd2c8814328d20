"""The sample shop's read models: SQLAlchemy tables and the projections that fill them.

=====================  ==========================================================================
``customers``          one row per customer (name, e-mail, address, status)
``orders``             orders enriched with the customer's name and country (a declared
                       foreign-key join against a customer lookup it keeps itself)
``sales_per_hour``     declared windows: confirmed orders and revenue per hour of confirmation,
                       and per country per calendar day in Europe/Zurich
``shop_streams``       shopping sessions (a session window), orders not shipped in 24 hours
``order_history``      every event of every order (version, type, payload, metadata, time)
=====================  ==========================================================================

Alembic migrates the tables (``migrations/versions``); workers fill them
(``manage.py run_projections``).
"""

MODULES = [
    "projections.customers",
    "projections.orders",
    "projections.sales",
    "projections.streams",
    "projections.order_history",
]
"""Every module with a projection (Alembic's env imports them for its target metadata)."""
