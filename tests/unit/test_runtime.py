"""framework.runtime: the garbage-collector settings of a worker or writer process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from framework.errors import ConfigurationError
from framework.runtime import DEFAULT_GC_THRESHOLD, gc_threshold, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_threshold_defaults_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEL_GC_THRESHOLD", raising=False)
    assert gc_threshold() == DEFAULT_GC_THRESHOLD
    monkeypatch.setenv("KEEL_GC_THRESHOLD", " 2500 ")
    assert gc_threshold() == 2500
    monkeypatch.setenv("KEEL_GC_THRESHOLD", "0")
    assert gc_threshold() == 0


@pytest.mark.parametrize("raw", ["-1", "lots", "1e4"])
def test_a_bad_threshold_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("KEEL_GC_THRESHOLD", raw)
    with pytest.raises(ConfigurationError, match="KEEL_GC_THRESHOLD"):
        gc_threshold()


def test_tuning_freezes_start_up_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.unfreeze()
    _, older, oldest = gc.get_threshold()
    assert tune_garbage_collector(12_345) is True
    assert gc.get_threshold() == (12_345, older, oldest)
    assert gc.get_freeze_count() > 0  # the modules and objects start-up made


def test_zero_keeps_pythons_settings(restored_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    monkeypatch.setenv("KEEL_GC_THRESHOLD", "0")
    assert tune_garbage_collector() is False
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
