"""Event catalogues: the JSON Schema and AsyncAPI documents of a service's events.

A service marks the events other services may depend on (its *integration* events) on each
aggregate; the rest stay internal and may change freely::

    class OrderPayment(Aggregate):
        public_events = ("Requested", "Received", "Voided")

A public event keeps a stable schema: change its fields only with a new ``class_version`` and
an upcaster (see :mod:`framework.domain`), so consumers that replay the topic from offset 0 still
read every old record. :func:`check_stable` compares the catalogue generated from the code with
the published one and names each public event whose schema changed without a new version, or
that disappeared.

Command line::

    python -m framework.catalogue sample_app.payments.domain --app payments \\
        --format asyncapi --out docs/catalogue/payments.asyncapi.json
    python -m framework.catalogue sample_app.payments.domain --app payments \\
        --check docs/catalogue/payments.schema.json      # exit 1 when a public schema broke
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from framework.codec import _ENVELOPE_FIELDS, _state_model
from framework.commands import Metadata
from framework.domain import Aggregate, DomainEvent, event_types
from framework.errors import ConfigurationError

__all__ = ["asyncapi", "check_stable", "event_schemas", "json_schema", "main"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def aggregates_in(module_name: str) -> list[type[Aggregate]]:
    """The aggregates defined in ``module_name``."""
    module = importlib.import_module(module_name)
    return [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, Aggregate)
        and v is not Aggregate
        and v.__module__ == module.__name__
    ]


def _events_of(aggregate: type[Aggregate]) -> list[type[DomainEvent]]:
    return sorted(
        (
            v
            for v in vars(aggregate).values()
            if isinstance(v, type)
            and issubclass(v, DomainEvent)
            and v.__qualname__ == f"{aggregate.__qualname__}.{v.__name__}"
        ),
        key=lambda e: e.__name__,
    )


def event_schemas(
    aggregates: Iterable[type[Aggregate]], *, internal: bool = False
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``(events, defs)``: per event type name, the JSON Schema of its data (public events
    only, unless ``internal``), and the shared definitions they refer to (``#/$defs/...``)."""
    events: dict[str, dict[str, Any]] = {}
    defs: dict[str, dict[str, Any]] = {}
    for aggregate in aggregates:
        public = set(getattr(aggregate, "public_events", ()))
        unknown = public - {e.__name__ for e in _events_of(aggregate)}
        if unknown:
            raise ConfigurationError(
                f"{aggregate.__name__}.public_events names {sorted(unknown)}, which are not "
                "its events"
            )
        for event_class in _events_of(aggregate):
            if not internal and event_class.__name__ not in public:
                continue
            name = event_types.name_of(event_class)
            schema = _state_model(event_class, _ENVELOPE_FIELDS).model_json_schema(
                ref_template="#/$defs/{model}", mode="serialization"
            )
            defs.update(schema.pop("$defs", {}))
            schema["title"] = name
            doc = (event_class.__doc__ or "").strip()
            if doc and not doc.startswith(event_class.__name__ + "("):
                schema["description"] = doc.splitlines()[0]
            schema["x-keel-class-version"] = getattr(event_class, "class_version", 1)
            schema["x-keel-public"] = event_class.__name__ in public
            events[name] = schema
    return events, defs


def json_schema(
    app: str, aggregates: Sequence[type[Aggregate]], *, internal: bool = False
) -> dict[str, Any]:
    """The catalogue as one JSON Schema document: ``$defs`` holds each event's data schema
    (by type name, e.g. ``OrderPayment.Requested``) and the types they share; the top level is the
    stored record, ``{"v": class version, "data": ..., "meta": ...}``, of any of them."""
    events, defs = event_schemas(aggregates, internal=internal)
    all_defs = {**defs, "Metadata": Metadata.model_json_schema(mode="serialization"), **events}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:keel:{app}:events",
        "title": f"{app} events",
        "description": f"The {'' if internal else 'public '}events of {app!r}, as stored in "
        "its events topic (record key: the aggregate id; headers keel.topic = the type name, "
        "keel.version = the aggregate version).",
        "oneOf": [
            {
                "type": "object",
                "required": ["v", "data"],
                "properties": {
                    "v": {"const": s["x-keel-class-version"]},
                    "data": {"$ref": f"#/$defs/{name}"},
                    "meta": {"$ref": "#/$defs/Metadata"},
                },
                "x-keel-topic": name,
            }
            for name, s in events.items()
        ],
        "$defs": all_defs,
    }


def asyncapi(
    app: str,
    aggregates: Sequence[type[Aggregate]],
    *,
    topic: str | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: the service sends its events on ``topic`` (default
    ``<app>.events``), one message per event type."""
    events, defs = event_schemas(aggregates, internal=internal)
    address = topic or f"{app}.events"

    def rehome(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else rehome(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rehome(v) for v in value]
        return value

    messages = {
        name: {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "keel.topic": {"const": name},
                    "keel.version": {"type": "string", "description": "aggregate version"},
                },
            },
            "payload": {
                "type": "object",
                "required": ["v", "data"],
                "properties": {
                    "v": {"const": s["x-keel-class-version"]},
                    "data": {"$ref": f"#/components/schemas/{name}"},
                    "meta": {"$ref": "#/components/schemas/Metadata"},
                },
            },
        }
        for name, s in events.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{app} events",
            "version": "1.0.0",
            "description": f"Events the {app!r} service publishes. Consumers read the topic "
            "(from offset 0 to bootstrap); they never write to it.",
        },
        "channels": {
            "events": {
                "address": address,
                "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in messages},
            }
        },
        "operations": {
            "publishEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "messages": [{"$ref": f"#/channels/events/messages/{n}"} for n in messages],
            }
        },
        "components": {
            "messages": messages,
            "schemas": rehome(
                {**defs, "Metadata": Metadata.model_json_schema(mode="serialization"), **events}
            ),
        },
    }


def check_stable(current: dict[str, Any], published: dict[str, Any]) -> list[str]:
    """Problems with the public events of ``current`` against the ``published`` JSON Schema
    catalogue: a public event removed, or its schema changed with the same class version."""
    now_defs, old_defs = current.get("$defs", {}), published.get("$defs", {})
    problems = []
    for name, old in old_defs.items():
        if not (isinstance(old, dict) and old.get("x-keel-public")):
            continue
        new = now_defs.get(name)
        if new is None or not new.get("x-keel-public"):
            problems.append(f"{name} was public and is gone (or no longer public)")
            continue
        if new.get("x-keel-class-version") == old.get("x-keel-class-version") and _shape(
            new, now_defs
        ) != _shape(old, old_defs):
            problems.append(
                f"{name} changed its schema but kept class_version "
                f"{old.get('x-keel-class-version')}: raise class_version and add an upcaster"
            )
    return problems


def _shape(schema: Any, defs: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """A schema with its references resolved, without titles and descriptions."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            key = ref.removeprefix("#/$defs/")
            return ["ref", key] if key in seen else _shape(defs.get(key), defs, seen | {key})
        return {
            k: _shape(v, defs, seen)
            for k, v in sorted(schema.items())
            if k not in ("title", "description", "examples")
        }
    if isinstance(schema, list):
        return [_shape(v, defs, seen) for v in schema]
    return schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.catalogue",
        description="Print (or check) a service's event catalogue, generated from its "
        "aggregates' event classes: JSON Schema or AsyncAPI 3.0.",
    )
    parser.add_argument("modules", nargs="+", help="modules defining the service's aggregates")
    parser.add_argument("--app", required=True, help="the application (names the topic)")
    parser.add_argument("--format", choices=["jsonschema", "asyncapi"], default="jsonschema")
    parser.add_argument("--topic", help="asyncapi: the events topic (default <app>.events)")
    parser.add_argument("--internal", action="store_true", help="include internal events")
    parser.add_argument("--out", type=Path, help="write here instead of printing")
    parser.add_argument(
        "--check",
        type=Path,
        metavar="PUBLISHED",
        help="compare with a published JSON Schema catalogue; exit 1 when a "
        "public event's schema broke",
    )
    args = parser.parse_args(argv)
    try:
        aggregates = [a for m in args.modules for a in aggregates_in(m)]
        if args.check:
            current = json_schema(args.app, aggregates)
            problems = check_stable(current, json.loads(args.check.read_text()))
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1 if problems else 0
        if args.format == "asyncapi":
            document = asyncapi(args.app, aggregates, topic=args.topic, internal=args.internal)
        else:
            document = json_schema(args.app, aggregates, internal=args.internal)
    except (ConfigurationError, ImportError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
