"""``python -m framework.cdc``'s help and argument checks, without a database."""

from __future__ import annotations

import pytest

from framework.cdc.__main__ import main


@pytest.mark.parametrize("command", ["install", "run", "status", "dead-letters", "redrive"])
def test_every_cli_command_says_what_feed_is(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    assert "FEED module:callable, a function returning the ChangeFeed" in shown
    if command == "dead-letters":
        assert "--limit LIMIT list at most this many" in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dead-letters", "--limit", "0"], "argument --limit: must be a whole number of 1 or"),
        (["run", "--idle", "-1"], "argument --idle: must be a number of 0 or more"),
        (["run", "--metrics-port", "0"], "argument --metrics-port: must be a port from 1 to"),
    ],
)
def test_values_out_of_range_are_usage_errors_before_the_feed_is_loaded(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command, *options = argv
    with pytest.raises(SystemExit) as exited:
        main([command, "no_such_module_anywhere:feed", *options])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err and "no_such_module" not in err
