"""Keel: event sourcing and CQRS on Apache Kafka.

Import from the concept modules: ``framework.commands``, ``framework.domain``,
``framework.application``, ``framework.persistence``, ``framework.projection``,
``framework.testing`` and ``framework.errors``.
"""

__version__ = "0.1.0"
