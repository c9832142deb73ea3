"""pyproject.toml declares every package the code imports directly (core or an extra)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OWN = {"rtdmd_bench", "methods", "suites", "__future__"}


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> set[str]:
    """Top-level names of every absolute import (also inside functions) of the three packages."""
    names: set[str] = set()
    for path in [*ROOT.glob("rtdmd_bench/**/*.py"), *ROOT.glob("methods/*.py"), *ROOT.glob("suites/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    declared = {canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}
    third_party = imported_top_level_modules() - set(sys.stdlib_module_names) - OWN
    assert {"torch", "PIL", "huggingface_hub", "tokenizers", "click"} <= third_party  # the scan sees them
    providers = importlib.metadata.packages_distributions()  # top-level module -> distributions
    undeclared = {m: providers.get(m, ["not installed"]) for m in sorted(third_party)
                  if not {canonical(d) for d in providers.get(m, [])} & declared}
    assert not undeclared, f"declare these in pyproject.toml (module: distribution): {undeclared}"
