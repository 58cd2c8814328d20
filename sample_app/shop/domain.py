"""The shop's domain: customers and their orders, fully event-sourced.

Each public method checks an invariant and raises a :class:`ShopError` subclass with a message a
shop assistant can act on; the private ``@event`` methods record what happened. Only the
``@event`` methods run again when an aggregate is loaded.

Order lifecycle::

    OPEN --confirm--> CONFIRMED --ship--> SHIPPED
      |                   |
      +------cancel-------+--> CANCELLED         (never after shipping)
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Annotated, ClassVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from framework.domain import Aggregate, event
from framework.errors import DomainError

__all__ = [
    "COUNTRIES",
    "Address",
    "Carrier",
    "Customer",
    "CustomerAlreadyDeactivated",
    "CustomerInactive",
    "CustomerStatus",
    "DuplicateProduct",
    "EmptyOrder",
    "LineNotFound",
    "Order",
    "OrderAlreadyCancelled",
    "OrderAlreadyShipped",
    "OrderLine",
    "OrderNotConfirmed",
    "OrderNotOpen",
    "OrderStatus",
    "ShopError",
    "TooManyLines",
]

# ISO 3166-1 alpha-2: the 249 officially assigned codes.
COUNTRIES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905 - one compact, checkable block
)

MAX_LINES = 50
"""The most lines one order may have."""


def _country(value: str) -> str:
    code = value.strip().upper()
    if code not in COUNTRIES:
        raise ValueError(
            f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. DE, FR, GB, US)"
        )
    return code


CountryCode = Annotated[
    str,
    StringConstraints(min_length=2, max_length=2),
    AfterValidator(_country),
    Field(
        description="ISO 3166-1 alpha-2 code, e.g. DE",
        examples=["DE"],
        json_schema_extra={"enum": sorted(COUNTRIES)},  # forms show a list, API docs too
    ),
]

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        max_length=254,
        pattern=r"^[^@\s<>\"']{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$",
    ),
    AfterValidator(lambda v: v.rsplit("@", 1)[0] + "@" + v.rsplit("@", 1)[1].lower()),
    Field(
        description="An e-mail address, e.g. ada@example.com", json_schema_extra={"format": "email"}
    ),
]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ProductName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]


class Address(BaseModel):
    """A postal address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    street: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    city: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    postcode: Annotated[str, StringConstraints(strip_whitespace=True, max_length=20)] = ""
    country: CountryCode


def _not_a_bool(value: object) -> object:
    # pydantic's lax mode reads true as 1; a quantity of "true" is a client's mistake.
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    return value


Quantity = Annotated[int, BeforeValidator(_not_a_bool), Field(gt=0, le=10_000)]


class OrderLine(BaseModel):
    """One product on an order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product: ProductName
    quantity: Quantity
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity


class CustomerStatus(Enum):
    ACTIVE = "active"
    DEACTIVATED = "deactivated"


class OrderStatus(Enum):
    OPEN = "open"
    CONFIRMED = "confirmed"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


class Carrier(Enum):
    DHL = "dhl"
    UPS = "ups"
    FEDEX = "fedex"
    POST = "post"


# -- errors ----------------------------------------------------------------------------------


class ShopError(DomainError):
    """A shop rule refused a command."""


class CustomerInactive(ShopError):
    """The customer is deactivated: no address changes, no new orders."""


class CustomerAlreadyDeactivated(ShopError):
    """The customer was deactivated before."""


class OrderNotOpen(ShopError):
    """Lines can be changed, and an order confirmed, only while it is open."""


class OrderNotConfirmed(ShopError):
    """Only a confirmed order can be shipped."""


class OrderAlreadyShipped(ShopError):
    """A shipped order can no longer be cancelled (or shipped again)."""


class OrderAlreadyCancelled(ShopError):
    """The order was cancelled before."""


class EmptyOrder(ShopError):
    """An order needs at least one line."""


class DuplicateProduct(ShopError):
    """The product is on the order already: one line per product."""


class LineNotFound(ShopError):
    """The order has no line for that product."""


class TooManyLines(ShopError):
    """An order may have at most :data:`MAX_LINES` lines."""


# -- aggregates ------------------------------------------------------------------------------


class Customer(Aggregate):
    """A registered customer."""

    name: str
    email: str
    address: Address
    status: CustomerStatus

    @event("Registered")
    def __init__(self, id: UUID, name: str, email: str, address: Address) -> None:
        self.name = name
        self.email = email
        self.address = address
        self.status = CustomerStatus.ACTIVE

    @property
    def active(self) -> bool:
        return self.status is CustomerStatus.ACTIVE

    def change_address(self, address: Address) -> None:
        """Move the customer; a change to the same address records nothing."""
        self._check_active("change the address of")
        if address == self.address:
            return
        self._address_changed(address)

    def deactivate(self, reason: str | None = None) -> None:
        if not self.active:
            raise CustomerAlreadyDeactivated(f"customer {self.name!r} is deactivated already")
        self._deactivated(reason)

    def _check_active(self, doing: str) -> None:
        if not self.active:
            raise CustomerInactive(
                f"cannot {doing} customer {self.name!r}: the customer is deactivated"
            )

    @event("AddressChanged")
    def _address_changed(self, address: Address) -> None:
        self.address = address

    @event("Deactivated")
    def _deactivated(self, reason: str | None) -> None:
        self.status = CustomerStatus.DEACTIVATED


class Order(Aggregate):
    """An order of one customer."""

    public_events: ClassVar[tuple[str, ...]] = ("Confirmed", "Shipped", "Cancelled")
    """What other services (payments) may depend on; the rest is internal."""

    customer_id: UUID
    lines: list[OrderLine]
    status: OrderStatus
    carrier: Carrier | None
    tracking_number: str | None
    requested_delivery: date | None
    gift_wrap: bool
    ship_to: Address | None

    @classmethod
    def place(
        cls,
        id: UUID,
        customer: Customer,
        lines: list[OrderLine],
        *,
        requested_delivery: date | None = None,
        gift_wrap: bool = False,
    ) -> Order:
        """Place an order for an active customer, with at least one line and one line per
        product."""
        if not customer.active:
            raise CustomerInactive(
                f"customer {customer.name!r} is deactivated and cannot place orders"
            )
        if not lines:
            raise EmptyOrder("an order needs at least one line")
        if len(lines) > MAX_LINES:
            raise TooManyLines(f"an order may have at most {MAX_LINES} lines, not {len(lines)}")
        seen: set[str] = set()
        for line in lines:
            if line.product.casefold() in seen:
                raise DuplicateProduct(
                    f"{line.product!r} appears on two lines: put the whole quantity on one line"
                )
            seen.add(line.product.casefold())
        return cls(
            id=id,
            customer_id=customer.id,
            lines=list(lines),
            requested_delivery=requested_delivery,
            gift_wrap=gift_wrap,
        )

    @event("Placed")
    def __init__(
        self,
        id: UUID,
        customer_id: UUID,
        lines: list[OrderLine],
        requested_delivery: date | None = None,
        gift_wrap: bool = False,
    ) -> None:
        self.customer_id = customer_id
        self.lines = list(lines)
        self.requested_delivery = requested_delivery
        self.gift_wrap = gift_wrap
        self.status = OrderStatus.OPEN
        self.carrier = None
        self.tracking_number = None
        self.ship_to = None

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0"))

    def line_for(self, product: str) -> OrderLine | None:
        wanted = product.strip().casefold()
        return next((line for line in self.lines if line.product.casefold() == wanted), None)

    def add_line(self, line: OrderLine) -> None:
        self._check_open("add a line to")
        if self.line_for(line.product) is not None:
            raise DuplicateProduct(
                f"{line.product!r} is on order {self.id} already: remove that line first to "
                "change its quantity or price"
            )
        if len(self.lines) >= MAX_LINES:
            raise TooManyLines(f"order {self.id} has {MAX_LINES} lines, the most allowed")
        self._line_added(line)

    def remove_line(self, product: str) -> None:
        self._check_open("remove a line from")
        line = self.line_for(product)
        if line is None:
            on_order = ", ".join(repr(x.product) for x in self.lines)
            raise LineNotFound(f"order {self.id} has no line for {product!r} (it has {on_order})")
        if len(self.lines) == 1:
            raise EmptyOrder(
                f"{line.product!r} is the last line of order {self.id}: cancel the order instead"
            )
        self._line_removed(line.product)

    def confirm(self, ship_to: Address) -> None:
        """Confirm the order; the customer's address at this moment becomes its ship-to
        address (a later move of the customer no longer changes where it goes)."""
        self._check_open("confirm")
        self._confirmed(self.total, ship_to)

    def ship(self, carrier: Carrier, tracking_number: str | None = None) -> None:
        if self.status is OrderStatus.SHIPPED:
            raise OrderAlreadyShipped(f"order {self.id} was shipped already")
        if self.status is not OrderStatus.CONFIRMED:
            raise OrderNotConfirmed(
                f"order {self.id} is {self.status.value}: only a confirmed order can be shipped"
                + (" (confirm it first)" if self.status is OrderStatus.OPEN else "")
            )
        self._shipped(carrier, tracking_number)

    def cancel(self, reason: str, note: str | None = None) -> None:
        if self.status is OrderStatus.SHIPPED:
            raise OrderAlreadyShipped(
                f"order {self.id} was shipped and can no longer be cancelled: "
                "record a return instead"
            )
        if self.status is OrderStatus.CANCELLED:
            raise OrderAlreadyCancelled(f"order {self.id} was cancelled already")
        self._cancelled(reason, note)

    def _check_open(self, doing: str) -> None:
        if self.status is not OrderStatus.OPEN:
            raise OrderNotOpen(
                f"cannot {doing} order {self.id}: it is {self.status.value}, not open"
            )

    @event("LineAdded")
    def _line_added(self, line: OrderLine) -> None:
        self.lines = [*self.lines, line]

    @event("LineRemoved")
    def _line_removed(self, product: str) -> None:
        self.lines = [x for x in self.lines if x.product != product]

    @event("Confirmed")
    def _confirmed(self, total: Decimal, ship_to: Address) -> None:
        self.status = OrderStatus.CONFIRMED
        self.ship_to = ship_to

    @event("Shipped")
    def _shipped(self, carrier: Carrier, tracking_number: str | None) -> None:
        self.status = OrderStatus.SHIPPED
        self.carrier = carrier
        self.tracking_number = tracking_number

    @event("Cancelled")
    def _cancelled(self, reason: str, note: str | None) -> None:
        self.status = OrderStatus.CANCELLED
