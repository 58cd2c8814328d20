"""``python -m framework.cdc``'s help, without a database."""

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
