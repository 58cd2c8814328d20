"""The one ``module:attribute`` loader: each way a reference can be wrong is a ConfigurationError
that says what to pass, and each caller (writer, worker, CDC) keeps its own wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.application import Application
from framework.cdc.__main__ import load_feed
from framework.errors import ConfigurationError
from framework.loading import import_object, load_object
from framework.worker import load_projection
from framework.writer import load_application


class Thing:
    size = 3


def make_thing() -> Thing:
    return Thing()


def make_nothing() -> None:
    return None


A_THING = Thing()
HERE = __name__


def test_a_reference_names_a_module_attribute_or_a_dotted_one() -> None:
    assert import_object(f"{HERE}:Thing") is Thing
    assert import_object(f"{HERE}:Thing.size") == 3
    assert import_object(f"{HERE}.Thing", dotted=True) is Thing
    assert load_object(f"{HERE}:A_THING", Thing, what="thing", example="x:y") is A_THING
    assert isinstance(load_object(f"{HERE}:make_thing", Thing, what="thing", example="x:y"), Thing)
    assert isinstance(load_object(f"{HERE}:Thing", Thing, what="thing", example="x:y"), Thing)


@pytest.mark.parametrize("spec", [HERE, f"{HERE}:", f":{HERE}", "", " : "])
def test_without_module_and_attribute_it_says_the_form_to_use(spec: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        import_object(spec, what="feed", form="module:callable", example="sample_app.crm:feed")
    message = str(raised.value)
    assert "the feed must be given as module:callable (e.g. sample_app.crm:feed)" in message
    assert repr(spec) in message
    assert isinstance(raised.value, ValueError)  # the tree's builtin base


def test_a_missing_module_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"there is no module 'no_such_pkg'") as raised:
        import_object("no_such_pkg.sub:thing", what="feed", example="sample_app.crm:feed")
    assert "cannot load the feed 'no_such_pkg.sub:thing'" in str(raised.value)
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)


def test_a_module_that_fails_to_import_shows_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keel_broken_mod.py").write_text("import keel_absent_dependency\n")
    (tmp_path / "keel_raising_mod.py").write_text("raise RuntimeError('no settings')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="importing keel_broken_mod failed") as raised:
        import_object("keel_broken_mod:x")
    assert "keel_absent_dependency" in str(raised.value)  # the real culprit, not the module
    with pytest.raises(ConfigurationError, match="RuntimeError: no settings"):
        import_object("keel_raising_mod:x")


@pytest.mark.parametrize("attribute", ["missing", "Thing.missing"])
def test_a_missing_attribute_is_named(attribute: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        import_object(f"{HERE}:{attribute}", what="application", example="pkg.mod:build")
    assert f"{HERE} has no {attribute!r} (e.g. pkg.mod:build)" in str(raised.value)
    assert raised.value.__cause__ is None  # the message is the whole story


def test_the_wrong_type_says_what_was_found_and_what_is_wanted() -> None:
    with pytest.raises(ConfigurationError) as wrong_object:
        load_object(f"{HERE}:HERE", Thing, what="thing", example="pkg.mod:thing")
    assert f"the thing '{HERE}:HERE' is a str, not a Thing or a factory of one" in str(
        wrong_object.value
    )
    with pytest.raises(ConfigurationError, match="is a factory that returned None, not a Thing"):
        load_object(f"{HERE}:make_nothing", Thing, what="thing", example="pkg.mod:thing")


def test_each_caller_keeps_its_own_message() -> None:
    with pytest.raises(ConfigurationError, match=r"feed must be given as module:callable"):
        load_feed("sample_app.crm")
    with pytest.raises(ConfigurationError) as not_a_feed:
        load_feed(f"{HERE}:Thing")
    assert f"the feed '{HERE}:Thing' is a factory that returned a Thing, not a ChangeFeed" in str(
        not_a_feed.value
    )
    with pytest.raises(ConfigurationError, match=r"not an Application or a factory of one"):
        load_application(f"{HERE}:make_thing")
    with pytest.raises(ConfigurationError, match=r"no module 'nowhere'"):
        load_application("nowhere:build")
    with pytest.raises(ConfigurationError, match=r"package\.module:ClassName"):
        load_projection("projections.orders")
    with pytest.raises(ConfigurationError, match=r"is a Thing, not a Projection"):
        load_projection(f"{HERE}:A_THING")


def test_an_application_reference_gets_the_store_it_is_given() -> None:
    app = load_application("sample_app.shop.application:build", "memory://")
    assert isinstance(app, Application) and app.name == "shop"
    app.close()
