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
# Scripts the package ships for the user's other environments (they run under that environment's
# python, never import the project, and their packages cannot be installed beside it).
OTHER_ENVIRONMENTS = {"rtdmd_bench/rewards/paddleocr_runner.py"}  # paddleocr 2.9.1 needs numpy<2


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> set[str]:
    """Top-level names of every absolute import (also inside functions) of the three packages."""
    names: set[str] = set()
    for path in [*ROOT.glob("rtdmd_bench/**/*.py"), *ROOT.glob("methods/*.py"), *ROOT.glob("suites/*.py")]:
        if path.relative_to(ROOT).as_posix() in OTHER_ENVIRONMENTS:
            continue
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
    # An optional package not installed here (mlflow, wandb) is looked up by its module's name: its
    # extra must name a distribution spelled like the module.
    undeclared = {m: providers.get(m, ["not installed"]) for m in sorted(third_party)
                  if not {canonical(d) for d in providers.get(m, [m])} & declared}
    assert not undeclared, f"declare these in pyproject.toml (module: distribution): {undeclared}"


def test_scripts_for_other_environments_import_nothing_of_the_project():
    for rel in OTHER_ENVIRONMENTS:
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        own = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               and ({a.name.split(".")[0] for a in n.names} if isinstance(n, ast.Import)
                    else {(n.module or "").split(".")[0]}) & (OWN - {"__future__"})]
        assert not own, f"{rel} runs in another environment and must not import the project"
