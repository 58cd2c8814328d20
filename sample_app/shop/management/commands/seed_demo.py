"""``manage.py seed_demo``: demo customers and orders, and an admin user. Idempotent."""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from framework.commands import Command as KeelCommand
from framework.contrib.django.conf import get_application
from framework.errors import FrameworkError
from sample_app.shop.commands import (
    AddOrderLine,
    CancelOrder,
    ChangeCustomerAddress,
    ConfirmOrder,
    DeactivateCustomer,
    PlaceOrder,
    RegisterCustomer,
    ShipOrder,
)

_SEED = uuid5(NAMESPACE_URL, "urn:keel:sample-shop:seed")


def _id(*parts: object) -> UUID:
    """A stable id: the same on every run, so commands replay instead of repeating."""
    return uuid5(_SEED, "/".join(str(p) for p in parts))


CUSTOMERS = [
    ("Ada Lovelace", "ada@example.com", "12 St James's Square", "London", "SW1Y 4JH", "GB"),
    ("Grace Hopper", "grace@example.com", "1 Navy Way", "Arlington", "22201", "US"),
    ("Émilie du Châtelet", "emilie@example.fr", "7 Rue de Rivoli", "Paris", "75001", "FR"),
    ("Emmy Noether", "emmy@example.de", "Bunsenstraße 3", "Göttingen", "37073", "DE"),
    ("Sofia Kovalevskaya", "sofia@example.se", "Drottninggatan 10", "Stockholm", "111 51", "SE"),
    ("Hedy Lamarr", "hedy@example.at", "Stephansplatz 1", "Vienna", "1010", "AT"),
    ("Katherine Johnson", "katherine@example.com", "1 Langley Blvd", "Hampton", "23681", "US"),
    ("Maryam Mirzakhani", "maryam@example.com", "450 Jane Stanford Way", "Stanford", "94305", "US"),
]

PRODUCTS = [
    ("Earl Grey tea, 250 g", Decimal("6.50")),
    ("Difference engine kit", Decimal("249.00")),
    ("Slide rule", Decimal("24.90")),
    ("Fountain pen", Decimal("39.00")),
    ("Notebook, squared", Decimal("4.20")),
    ("Brass compass", Decimal("18.75")),
]


def _lines(seed: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "product": PRODUCTS[(seed + k) % len(PRODUCTS)][0],
            "quantity": 1 + (seed * 3 + k) % 4,
            "unit_price": PRODUCTS[(seed + k) % len(PRODUCTS)][1],
        }
        for k in range(count)
    ]


def demo_commands() -> list[KeelCommand]:
    """The demo's commands, in order; each has a fixed command id."""
    commands: list[KeelCommand] = []

    def add(cls: type[KeelCommand], key: str, **fields: Any) -> None:
        commands.append(cls(command_id=_id("command", key), **fields))

    customer_ids = []
    for n, (name, email, street, city, postcode, country) in enumerate(CUSTOMERS):
        customer_id = _id("customer", n)
        customer_ids.append(customer_id)
        add(
            RegisterCustomer,
            f"register-{n}",
            customer_id=customer_id,
            name=name,
            email=email,
            address={"street": street, "city": city, "postcode": postcode, "country": country},
        )
    for n in range(20):
        customer_id = customer_ids[n % 7]  # the last customer gets no orders, then leaves
        order_id = _id("order", n)
        add(
            PlaceOrder,
            f"place-{n}",
            order_id=order_id,
            customer_id=customer_id,
            lines=_lines(n, 1 + n % 3),
            gift_wrap=n % 5 == 0,
        )
        if n % 4 == 1:
            add(
                AddOrderLine,
                f"add-{n}",
                order_id=order_id,
                line={"product": "Gift card", "quantity": 1, "unit_price": Decimal("25.00")},
            )
        if n % 6 == 5:
            add(CancelOrder, f"cancel-{n}", order_id=order_id, reason="customer request")
            continue
        if n % 3 != 0:
            add(ConfirmOrder, f"confirm-{n}", order_id=order_id)
            if n % 3 == 2:
                add(
                    ShipOrder,
                    f"ship-{n}",
                    order_id=order_id,
                    carrier=("dhl", "ups", "post")[n % 3],
                    tracking_number=f"TRK{n:05d}",
                )
    add(
        ChangeCustomerAddress,
        "move-1",
        customer_id=customer_ids[1],
        address={"street": "2 Harbour St", "city": "Boston", "postcode": "02110", "country": "US"},
    )
    add(DeactivateCustomer, "deactivate-7", customer_id=customer_ids[7], reason="moved away")
    return commands


class Command(BaseCommand):
    help = (
        "Seed the demo shop: 8 customers and 20 orders in every state, through the real "
        "commands (issued as user 'seed_demo'), and an admin user. Idempotent: every command "
        "has a fixed id, so a second run replays instead of writing; the admin user is created "
        "once and its password kept in $KEEL_VAR_DIR/demo-admin-password."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-admin", action="store_true", help="do not create the admin user")
        parser.add_argument("--admin-username", default="admin", help="default: admin")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            app = get_application()
        except FrameworkError as error:
            raise CommandError(str(error)) from error
        written = replayed = 0
        for command in demo_commands():
            try:
                result = app.execute(command, user="seed_demo", correlation_id=_SEED)
            except FrameworkError as error:
                raise CommandError(f"{command.command_type} failed: {error}") from error
            if result.replayed:
                replayed += 1
            else:
                written += 1
        self.stdout.write(
            self.style.SUCCESS(f"demo data: {written} command(s) executed, {replayed} already done")
        )
        if not options["no_admin"]:
            self._admin(options["admin_username"])

    def _admin(self, username: str) -> None:
        var = Path(getattr(settings, "VAR_DIR", "var"))
        var.mkdir(parents=True, exist_ok=True)
        secret_file = var / "demo-admin-password"
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            user_model.objects.create_superuser(username, f"{username}@example.com", password)
            secret_file.write_text(password + "\n")
            secret_file.chmod(0o600)
            self.stdout.write(self.style.SUCCESS(f"admin user created: {username} / {password}"))
        elif secret_file.exists():
            password = secret_file.read_text().strip()
            self.stdout.write(f"admin user exists: {username} / {password}")
        else:
            self.stdout.write(f"admin user {username} exists (its password was set elsewhere)")
