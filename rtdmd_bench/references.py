"""Published reference tables (results/paper/*.json): find one by id or path and validate it.

The tables are data in the repository (written by scripts/paper_tables.py from the fetched sources,
validated against results/paper/schema.json); `compare`, `reproduce TABLE` and `report` read them
through `load_reference`, so a table that does not validate is refused the same way everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtdmd_bench.errors import UserError

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
"""The repository's reference tables (a source checkout or an editable install)."""


def reference_ids(folder: Path = PAPER_DIR) -> list[str]:
    """Ids of the reference tables in `folder` (file names without .json, schema.json left out)."""
    return sorted(p.stem for p in folder.glob("*.json") if p.name != "schema.json")


def reference_path(name: str | Path, folder: Path = PAPER_DIR) -> Path:
    """`name`: a table id (`rtdmd-sd3m-table1`) or the path of a table's JSON file."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return path
    candidate = folder / f"{name}.json"
    if str(name) != "schema" and candidate.is_file():
        return candidate
    known = ", ".join(reference_ids(folder)) or f"none: {folder} holds no tables"
    raise UserError(f"no reference table {str(name)!r}; known tables: {known} (or give the path of a table's .json)")


def load_reference(name: str | Path, folder: Path = PAPER_DIR) -> dict[str, Any]:
    """The reference table `name` (id or path), validated against `folder`/schema.json."""
    from jsonschema import Draft202012Validator

    path = reference_path(name, folder)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable reference table ({e})") from None
    schema = json.loads((folder / "schema.json").read_text(encoding="utf-8"))
    problems = sorted(Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if problems:
        first = problems[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise UserError(f"{path} does not validate against {folder / 'schema.json'} ({len(problems)} "
                        f"problem(s)); first at {where}: {first.message}")
    return doc
