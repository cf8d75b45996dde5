"""The sans-IO rule (DESIGN.md rule 1): protocol, media and call code do no I/O, read no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
PURE_FOLDERS = ("proto", "media", "call")
PURE_FILES = ("agent/loopback.py",)
BANNED_MODULES = {
    "trio",
    "trio_websocket",
    "socket",
    "time",
    "datetime",
    "asyncio",
    "os",
    "threading",
    "subprocess",
    "select",
    "pathlib",
    "wave",
}
# Module-level random functions are shared global state; cores take an injected random.Random.
BANNED_RANDOM = {"random", "randint", "getrandbits", "choice", "randrange", "uniform", "shuffle"}


def pure_modules() -> list[Path]:
    folders = [p for folder in PURE_FOLDERS for p in (PACKAGE / folder).rglob("*.py")]
    return sorted(folders + [PACKAGE / name for name in PURE_FILES])


def test_there_are_pure_modules_to_check() -> None:
    assert len(pure_modules()) >= 8


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_does_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [a.name for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                problems.append(node.module)
            if node.module == "random":
                problems += [a.name for a in node.names if a.name in BANNED_RANDOM]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr in BANNED_RANDOM
        ):
            problems.append(f"random.{node.attr}")
    assert problems == [], f"{path.name} must stay sans-IO"
