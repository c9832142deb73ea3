"""The layering contract (pyproject.toml [tool.importlinter], docs/architecture.md "Layers").

`.ci/run` runs `lint-imports` on the tree; these tests show that the contract passes on an unchanged
copy of the packages, fails on a copy with one deliberately wrong import (naming it), and that
every module of rtdmd_bench is placed in a layer (an unplaced module would escape the check).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rtdmd_bench", "methods", "suites")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages in `cwd` (it puts cwd first on sys.path; PYTHONPATH, which
    the test command points at the worktree, is dropped so the copy is what gets analysed)."""
    if not LINT.is_file():
        pytest.fail(f"{LINT} is missing: install the test extra (pip install -e '.[test]'), which has import-linter")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of the three packages and pyproject.toml."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module,line,importer,imported", [
    # core maths importing the training loop: upward by three layers
    ("rtdmd_bench/core/schedules.py", "    from rtdmd_bench import train", "rtdmd_bench.core.schedules",
     "rtdmd_bench.train"),
    # a reward importing a suite (the import this issue removed)
    ("rtdmd_bench/rewards/toy.py", "    import suites.geneval", "rtdmd_bench.rewards.toy", "suites.geneval"),
    # one method importing another: the two sit in one layer, but methods are independent
    ("methods/acdmd.py", "    from methods import dmd2", "methods.acdmd", "methods.dmd2"),
])
def test_the_contract_fails_on_a_wrong_import_and_names_it(tree, module, line, importer, imported):
    clean = lint(tree)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    path = tree / module
    # inside a function, as the lazy imports of the code base are: those count too
    path.write_text(path.read_text() + f"\n\ndef _deliberately_wrong():\n{line}\n")
    broken = lint(tree)
    assert broken.returncode != 0
    assert re.search(rf"{re.escape(importer)} -> {re.escape(imported)}\b", broken.stdout), broken.stdout
    assert "BROKEN" in broken.stdout


def test_every_module_of_the_package_sits_in_a_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")["layers"]
    named = {name.strip().strip("()") for layer in layers for name in re.split(r"[|:]", layer)}
    src = ROOT / "rtdmd_bench"
    modules = {f"rtdmd_bench.{p.stem}" for p in src.glob("*.py") if p.stem != "__init__"}
    modules |= {f"rtdmd_bench.{p.name}" for p in src.iterdir() if (p / "__init__.py").is_file()}
    modules |= {"methods", "suites"}
    assert not modules - named, f"place these modules in a layer of pyproject.toml: {sorted(modules - named)}"
    assert not named - modules, f"layers name modules that do not exist: {sorted(named - modules)}"
