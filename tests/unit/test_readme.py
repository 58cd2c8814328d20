"""The README's first example runs as written, and its tests pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(heading: str) -> list[str]:
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


def readme_example() -> str:
    """The first aggregate, its tests, then the projection over it."""
    blocks = python_blocks("Your first aggregate") + python_blocks("Read models: projections")
    return "\n".join(b for b in blocks if "upcast" not in b)


def test_the_readme_example_runs_and_its_tests_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example writes var/warehouse.db
    module = ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # event classes resolve by module
    exec(compile(readme_example(), str(README), "exec"), module.__dict__)
    tests = [f for name, f in vars(module).items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()
    assert (tmp_path / "var" / "warehouse.db").exists()
    module.app.close()


def test_the_readme_example_runs_again_over_the_files_it_left(tmp_path: Path) -> None:
    """A newcomer runs the example twice: the second run finds the first run's item too."""
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"run {run}:\n{done.stderr[-2000:]}"
