"""Generated input (hypothesis) against every query view and the command endpoint, as a
logged-in superuser and as an anonymous user: every answer is a JSON 2xx/4xx, never a 5xx, and
no input writes an event. Closes with ``T8[generated]: inputs=N 5xx=0 events_written=0``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from uuid import uuid4

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])

QUERY_EXAMPLES = 3000
COMMAND_EXAMPLES = 2000

PARAMETERS = [
    "limit", "offset", "ordering", "after", "status", "customer", "country", "search",
    "placed_since", "since", "until", "order", "x", "",
]  # fmt: skip
DIGITS = (
    "0123456789\u00b2\u00b9\u00b3\u0661\u0662\u0663\uff10\uff11\uff12\U0001d7e1"  # and lookalikes
)
tricky_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=DIGITS + ":,-.+eE ", max_size=12),
    st.sampled_from(
        ["0:1", "0:999999", "7:0", "-1", "1e9", "NaN", "inf", "true", "open,confirmed",
         "2026-01-01T00:00:00", "2026-13-40", "%", "_", "' OR 1=1 --", "<script>"]
    ),
)  # fmt: skip


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
        st.just(str(uuid4())),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=12,
    )


def bodies(fields: list[str]) -> st.SearchStrategy[Any]:
    """Objects with the commands' own field names (so validation runs deep), or anything."""
    named = st.dictionaries(st.sampled_from(fields), json_values(), max_size=6)
    return st.one_of(named, json_values(), st.binary(max_size=60))


def test_generated_queries_and_commands_never_fail_and_never_write(
    admin_client: Client, shop: Any
) -> None:
    from framework.contrib.django.conf import command_classes

    seeded = admin_client.post(
        "/api/commands/RegisterCustomer",
        json.dumps(
            {
                "name": "Ada",
                "email": "ada@example.com",
                "address": {"street": "1 Main St", "city": "Berlin", "country": "DE"},
            }
        ),
        content_type="application/json",
    )
    assert seeded.status_code == 201
    shop.catch_up()
    customer_id = seeded.json()["aggregate_id"]
    anonymous = Client()
    head = shop.head()
    counts: Counter[str] = Counter()
    commands = sorted(command_classes())
    fields = sorted(
        {name for cls in command_classes().values() for name in cls.model_fields}
        | {"product", "quantity", "unit_price", "street", "city", "country", "line"}
    )

    def check(response: Any, what: str) -> None:
        counts["inputs"] += 1
        if response.status_code >= 500:
            counts["5xx"] += 1
        assert response.status_code < 500, (what, response.content[:300])
        assert response["Content-Type"] == "application/json", (what, response.status_code)

    paths = st.sampled_from(
        [
            "/api/customers/",
            "/api/orders/",
            "/api/sales/hourly",
            f"/api/customers/{customer_id}",
            f"/api/orders/{customer_id}",
            f"/api/orders/{customer_id}/history",
        ]
    ) | st.builds(
        lambda kind, key: f"/api/{kind}/{key}",
        st.sampled_from(["customers", "orders"]),
        st.text(alphabet="abcdef0123456789-²%", min_size=1, max_size=40),
    )

    @settings(
        max_examples=QUERY_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        path=paths,
        query=st.dictionaries(st.sampled_from(PARAMETERS), tricky_text, max_size=4),
        logged_in=st.booleans(),
    )
    def queries(path: str, query: dict[str, str], logged_in: bool) -> None:
        client = admin_client if logged_in else anonymous
        check(client.get(path, query), f"GET {path} {query}")

    @settings(
        max_examples=COMMAND_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        command=st.sampled_from(commands) | st.text(max_size=20),
        body=bodies(fields),
        logged_in=st.booleans(),
    )
    def command_posts(command: str, body: Any, logged_in: bool) -> None:
        client = admin_client if logged_in else anonymous
        raw = body if isinstance(body, bytes) else json.dumps(body)
        response = client.post(f"/api/commands/{command}", raw, content_type="application/json")
        check(response, f"POST {command} {raw[:200]!r}")
        assert response.status_code != 201, ("a generated input was accepted", command, raw)

    queries()
    command_posts()
    written = sum(shop.head().values()) - sum(head.values())
    print(f"T8[generated]: inputs={counts['inputs']} 5xx={counts['5xx']} events_written={written}")
    assert counts["5xx"] == 0 and written == 0
    assert counts["inputs"] >= QUERY_EXAMPLES + COMMAND_EXAMPLES - 50  # hypothesis ran them
