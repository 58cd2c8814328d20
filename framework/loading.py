"""What a ``module:attribute`` reference names: the one loader behind every command line and
setting that takes one (``python -m framework.writer --app``, ``framework.worker``'s
projection, ``python -m framework.cdc``'s feed, ``KEEL["APPLICATION"]`` ...).

Each caller says what it wants (``what``, ``example``), so a wrong reference fails with a
:class:`~framework.errors.ConfigurationError` that names the thing to pass, never with a bare
``ImportError`` or ``AttributeError`` from deep in ``importlib``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from framework.errors import ConfigurationError

__all__ = ["import_object", "load_object"]

T = TypeVar("T")


def _split(spec: str, *, dotted: bool) -> tuple[str, str]:
    module_name, sep, attribute = spec.partition(":")
    if not sep and dotted:
        module_name, _, attribute = spec.rpartition(".")
    return module_name.strip(), attribute.strip()


def import_object(
    spec: str,
    *,
    what: str = "object",
    example: str = "package.module:name",
    form: str = "module:attribute",
    dotted: bool = False,
) -> Any:
    """The object ``spec`` (``package.module:attribute``, the attribute possibly dotted:
    ``module:Class.name``) names. ``dotted`` also accepts ``package.module.attribute``.

    Raises ConfigurationError, saying what to pass (``what``, e.g. ``"feed"``, its ``form``
    and an ``example``), when the reference has no colon, its module cannot be imported or
    the attribute is missing."""
    module_name, attribute = _split(spec, dotted=dotted)
    if not module_name or not attribute:
        raise ConfigurationError(
            f"the {what} must be given as {form} (e.g. {example}), got {spec!r}"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigurationError(
                f"cannot load the {what} {spec!r}: there is no module {missing!r} "
                f"(is the package installed, or the path a typo? e.g. {example})"
            ) from error
        raise ConfigurationError(
            f"cannot load the {what} {spec!r}: importing {module_name} failed: {error}"
        ) from error
    except Exception as error:  # the module itself is broken: say so, with its error
        raise ConfigurationError(
            f"cannot load the {what} {spec!r}: importing {module_name} failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"cannot load the {what} {spec!r}: {module_name} has no {attribute!r} "
                f"(e.g. {example})"
            ) from None
    return found


def load_object(
    spec: str,
    kind: type[T],
    *,
    what: str,
    example: str,
    form: str = "module:attribute",
    make: Callable[[Any], object] | None = None,
    dotted: bool = False,
) -> T:
    """The ``kind`` instance ``spec`` names: the object itself, or what calling it gives (a
    factory or a class, called with no argument; ``make(found)`` instead when given, for
    factories that take arguments). A result of another type raises ConfigurationError."""
    found = import_object(spec, what=what, example=example, form=form, dotted=dotted)
    if make is not None:
        result = make(found)
    elif isinstance(found, kind) or not callable(found):
        result = found
    else:
        result = found()
    if not isinstance(result, kind):
        got = _a(found) if result is found else f"a factory that returned {_a(result)}"
        raise ConfigurationError(
            f"the {what} {spec!r} is {got}, not {_a(kind)} or a factory of one (e.g. {example})"
        )
    return result


def _a(value: object) -> str:
    """``"an Application"``, ``"a dict"``, ``"None"``: a value's type (or a class) in words."""
    if value is None:
        return "None"
    noun = value.__name__ if isinstance(value, type) else type(value).__name__
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
