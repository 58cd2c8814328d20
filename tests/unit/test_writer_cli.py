"""The writer's settings and command line: bad tuning is refused before a group is joined,
with a message that names the setting."""

from __future__ import annotations

import pytest

from framework.backends.kafka_owner import WriterSettings
from framework.errors import ConfigurationError
from framework.writer import main


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"linger": -0.001}, "linger must be 0 or more seconds"),
        ({"linger": float("nan")}, "linger must be 0 or more seconds"),
        ({"max_batch": 0}, "max_batch must be 1 or more"),
        ({"session_timeout": 0.0}, "session_timeout must be more than 0"),
    ],
)
def test_writer_settings_refuse_what_cannot_work(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WriterSettings(**settings)


def test_the_defaults_are_valid_and_zero_linger_means_never() -> None:
    assert WriterSettings().linger > 0
    assert WriterSettings(linger=0.0).linger == 0.0


def test_the_cli_refuses_bad_settings_before_loading_the_application(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The module does not exist: had the application been loaded first, the error would say so.
    code = main(["run", "no_such_module_anywhere:app", "--linger", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "linger must be 0 or more seconds" in err and "no_such_module" not in err
