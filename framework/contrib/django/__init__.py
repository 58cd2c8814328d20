"""Django as the host: the admin issues commands and shows read models, JSON query views,
management commands that run and rebuild projections.

Add ``"framework.contrib.django"`` to ``INSTALLED_APPS``, a ``KEEL = {...}`` dict to your
settings (see :mod:`framework.contrib.django.conf`), a ``readmodels`` database alias with
``DATABASE_ROUTERS = ["framework.contrib.django.routers.ReadModelRouter"]``.
"""
