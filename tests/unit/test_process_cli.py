"""``python -m framework.process``'s arguments: a value out of range, or an option the chosen
command would ignore, is a usage error (exit 2) before any process manager is loaded."""

from __future__ import annotations

import pytest

from framework.process.cli import main

# No such module: a refusal that came after loading the worker would name it instead.
TARGET = "no_such_module_anywhere:worker"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", TARGET, "--grace", "-5"], "argument --grace: must be a number of 0 or more"),
        (["dead-letters", TARGET, "--redrive", "--id", "0"], "argument --id: must be a whole"),
        (["run", TARGET, "--grace", "3"], "--grace applies to status only, not to run"),
        (["run", TARGET, "--json"], "--json applies to status only, not to run"),
        (["status", TARGET, "--redrive"], "--redrive applies to dead-letters only, not to status"),
        (["timeline", TARGET, "x", "--start-from", "now"], "--start-from applies to run only"),
        (["status", TARGET, "order-1"], "the instance argument applies to timeline only"),
        (["dead-letters", TARGET, "--id", "3"], "--id names the dead letters to re-drive: give "),
    ],
)
def test_arguments_that_would_be_ignored_or_cannot_work_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err and "no_such_module" not in err
