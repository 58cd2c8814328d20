"""One token per command form shown, fixing the form's generated ids.

The admin puts ``?form=<token>`` on a command form's URL. The token is signed (with the project's
``SECRET_KEY``) and names the user and the command type, so a link made by someone else is not
accepted; the command id and any new aggregate id are derived from it. Sending the same form
twice (a double click, Back and Execute again) therefore sends the same command id, and the
application replays the first result instead of placing a second order.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID, uuid4, uuid5

from django.core import signing
from django.http import HttpRequest

__all__ = ["ids", "new", "nonce"]

SALT = "keel.command-form"
MAX_AGE = 7 * 24 * 3600
"""Seconds a form stays valid (a week: a clerk may leave a tab open over the weekend)."""

_NAMESPACE = UUID("6d1c4c52-8a43-4b8e-9a39-3f8f3b0e5c21")


def _user(request: HttpRequest) -> str:
    return str(getattr(request.user, "pk", "") or "")


def new(request: HttpRequest, command_type: str) -> str:
    """A token for a new form of ``command_type`` for the request's user."""
    signer = signing.TimestampSigner(salt=SALT)
    return signer.sign(f"{_user(request)}.{command_type}.{uuid4().hex}")


def nonce(request: HttpRequest, command_type: str, token: str) -> str | None:
    """The token's nonce, or None when it is missing, forged, expired or someone else's."""
    if not token or len(token) > 300:
        return None
    try:
        value = signing.TimestampSigner(salt=SALT).unsign(token, max_age=MAX_AGE)
    except signing.BadSignature:
        return None
    user, _, rest = value.partition(".")
    kind, _, found = rest.rpartition(".")
    if user != _user(request) or kind != command_type or not found:
        return None
    return found


def ids(command_type: str, nonce: str, names: Iterable[str]) -> dict[str, UUID]:
    """The generated ids of one form: the same for every submission of it."""
    return {name: uuid5(_NAMESPACE, f"{command_type}:{nonce}:{name}") for name in names}
