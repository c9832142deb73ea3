"""rtdmd_bench.references: reference tables by id or path, validated, with errors naming the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from rtdmd_bench.errors import UserError
from rtdmd_bench.references import PAPER_DIR, load_reference, reference_ids


def test_every_committed_table_loads_by_id_and_by_path():
    ids = reference_ids()
    assert {"rtdmd-sd3m-table1", "rtdmd-flux2-4b-table2", "rdm-gndm-abstract", "gdmd-abstract"} <= set(ids)
    assert "schema" not in ids
    for i in ids:
        doc = load_reference(i)
        assert doc["id"] == i
        assert load_reference(PAPER_DIR / f"{i}.json") == doc


def test_an_unknown_id_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        load_reference("rtdmd-sd3m-table9")
    assert "rtdmd-sd3m-table9" in str(e.value) and "rtdmd-sd3m-table1" in str(e.value)
    with pytest.raises(UserError):
        load_reference("schema")  # the schema is not a table


def test_a_table_that_does_not_validate_names_the_place(tmp_path):
    shutil.copy(PAPER_DIR / "schema.json", tmp_path / "schema.json")
    doc = json.loads((PAPER_DIR / "rtdmd-sd3m-table1.json").read_text())
    doc["rows"][0]["nfe"] = "four"  # a string where the schema wants a number or null
    (tmp_path / "rtdmd-sd3m-table1.json").write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        load_reference("rtdmd-sd3m-table1", tmp_path)
    assert "rows/0/nfe" in str(e.value) and "schema.json" in str(e.value)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable reference table"):
        load_reference("broken", tmp_path)
