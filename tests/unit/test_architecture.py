"""Rules of the codebase that a reviewer should not have to remember."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import framework.errors as errors

FRAMEWORK = Path(__file__).resolve().parents[2] / "framework"


def imports(path: Path) -> set[str]:
    """The top-level packages a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_core_never_imports_django() -> None:
    core = [p for p in FRAMEWORK.rglob("*.py") if "contrib" not in p.relative_to(FRAMEWORK).parts]
    assert [p.name for p in core if "django" in imports(p)] == []


def test_nothing_pickles() -> None:
    unsafe = {"pickle", "cPickle", "dill", "shelve", "marshal"}
    assert [p.name for p in FRAMEWORK.rglob("*.py") if imports(p) & unsafe] == []


def test_every_error_is_in_the_tree_documented_and_exported() -> None:
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.FrameworkError)
    }
    assert set(errors.__all__) == set(classes)
    assert errors.__all__ == sorted(errors.__all__)
    for name, cls in classes.items():
        assert f" {name}" in errors.__doc__, f"{name} is missing from the tree in the docstring"
        assert cls.__doc__ and cls.__doc__.strip(), f"{name} has no docstring"
