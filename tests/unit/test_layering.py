"""No import runs back up the layers (docs/architecture.md):

    cli  ->  benchmarks  ->  training, calibration, exports, serving  ->  exitwise (the core)

Every ``.py`` file of every package is parsed; imports at any depth count (inside functions
too), ``from . import x`` is resolved against the file's package, and
``importlib.import_module("...")`` with a literal name counts as well. A package may import
itself and what the table below allows; the one import between the four middle packages is
serving's use of the ONNX loader in ``exports``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FOUR = ("training", "calibration", "exports", "serving")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "exitwise": frozenset(),
    "training": frozenset({"exitwise"}),
    "calibration": frozenset({"exitwise"}),
    "exports": frozenset({"exitwise"}),
    "serving": frozenset({"exitwise", "exports"}),  # the ONNX stage runner
    "benchmarks": frozenset({"exitwise", *FOUR}),
    "cli": frozenset({"exitwise", *FOUR, "benchmarks"}),
}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    target: str  # absolute dotted name; "" for a relative import above the top-level package


def _module_names(node: ast.AST) -> Iterator[tuple[int, int, str | None]]:
    """(line, level, module) of every import a node makes."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield node.lineno, 0, alias.name
    elif isinstance(node, ast.ImportFrom):
        yield node.lineno, node.level, node.module
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "importlib"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and not node.args[0].value.startswith(".")  # a relative name's anchor is a variable
    ):
        yield node.lineno, 0, node.args[0].value


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import in ``path`` (a file of a package under ``root``), as absolute names."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # an __init__.py's package is its directory, like any module's
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        for line, level, module in _module_names(node):
            if level == 0:
                yield Import(path, line, module or "")
                continue
            up = level - 1
            if up >= len(package):
                yield Import(path, line, "")
                continue
            base = package[: len(package) - up]
            yield Import(path, line, ".".join(base + (module.split(".") if module else [])))


def violations(root: Path, rules: dict[str, frozenset[str]] = MAY_IMPORT) -> list[str]:
    """One line per import that runs back up: ``file:line: what is wrong``."""
    found = []
    for package, allowed in rules.items():
        for path in sorted((root / package).rglob("*.py")):
            for imp in imports_of(path, root):
                where = f"{path.relative_to(root)}:{imp.line}"
                if not imp.target:
                    found.append(f"{where}: relative import above the top-level package")
                    continue
                top = imp.target.split(".")[0]
                if top in rules and top != package and top not in allowed:
                    found.append(f"{where}: {package} imports {imp.target}")
    return found


def test_no_import_runs_back_up() -> None:
    found = violations(REPO)
    assert not found, "imports that run back up the layers:\n" + "\n".join(found)


def test_every_installed_package_has_a_layer() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with (REPO / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} == set(MAY_IMPORT)
    for package in MAY_IMPORT:
        assert (REPO / package / "__init__.py").is_file(), package


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "exitwise/__init__.py": "from . import errors\n",
            "exitwise/errors.py": "",
            "exitwise/deep/__init__.py": "from .. import errors\nfrom ..errors import E\n",
            "exitwise/deep/lazy.py": (
                "import os\n\n\ndef run():\n    if True:\n        from serving import app\n"
            ),
            "training/__init__.py": "from exitwise import errors\n",
            "training/sub/m.py": "from .. import x\nfrom ...calibration import y\n",
            "serving/__init__.py": "import exports.runtime\nimport training.data as d\n",
            "exports/__init__.py": (
                "import importlib\n\nm = importlib.import_module('serving.app')\n"
                "n = importlib.import_module('.runtime', 'exports')\n"
            ),
            "benchmarks/__init__.py": "import serving, training, calibration, exports\n",
            "benchmarks/bad.py": "from cli import main\n",
            "cli/__init__.py": "import benchmarks, serving, exitwise\nfrom . import bench\n",
            "calibration/__init__.py": "",
        },
    )
    assert violations(tmp_path) == [
        "exitwise/deep/lazy.py:6: exitwise imports serving",
        "training/sub/m.py:2: relative import above the top-level package",
        "exports/__init__.py:3: exports imports serving.app",
        "serving/__init__.py:2: serving imports training.data",
        "benchmarks/bad.py:1: benchmarks imports cli",
    ]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("from . import x", "pkg.sub"),
        ("from .. import x", "pkg"),
        ("from ..y import z", "pkg.y"),
        ("from .m import z", "pkg.sub.m"),
        ("import a.b", "a.b"),
    ],
)
def test_relative_imports_resolve_against_the_package(
    tmp_path: Path, source: str, target: str
) -> None:
    for name in ("mod.py", "__init__.py"):
        _write(tmp_path, {f"pkg/sub/{name}": source + "\n"})
        (imp,) = imports_of(tmp_path / "pkg" / "sub" / name, tmp_path)
        assert imp.target == target, name
