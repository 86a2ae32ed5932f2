"""pyproject.toml: every third-party module the package imports is declared, in a tested range."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipecat_localtts"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Modules only an optional part of the package imports, and the extra that provides them.
OPTIONAL = {
    "benchmark.py": "bench",
    "cli.py": "server",  # `serve` imports uvicorn when it runs
    "server/app.py": "server",
    "websocket_service.py": "client",
    "models/neutts.py": "neutts",  # espeak-ng phonemes, imported when a phoneme checkpoint loads
}


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirements(extra: str | None = None) -> dict[str, Requirement]:
    lines = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {_name(r.name): r for r in map(Requirement, lines)}


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path``, lazy ones inside functions too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "pipecat_localtts"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_imported_third_party_module_is_a_declared_dependency(path):
    declared = set(_requirements())
    name = str(path.relative_to(PACKAGE))
    if name in OPTIONAL:
        declared |= set(_requirements(OPTIONAL[name]))
    distributions = packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in _imported_modules(path)
        if not declared & {_name(d) for d in distributions.get(module, [])}
    }
    assert not undeclared, f"{path.name} imports modules whose distributions pyproject does not declare: {undeclared}"


def test_transformers_is_pinned_to_a_range_that_holds_the_tested_version():
    requirement = _requirements()["transformers"]
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
        "transformers needs an upper bound: its cache API changes between minor releases"
    )
    assert requirement.specifier.contains(version("transformers")), (
        f"installed transformers {version('transformers')} is outside the declared {requirement}"
    )
