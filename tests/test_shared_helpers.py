"""The small helpers shared across layers: atomic writes, one-thread sections, dtype names and hub
offline mode, the progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path, atomic_write_json, atomic_write_text
from rtdmd_bench.progress import progress_bar
from rtdmd_bench.weights import hub_offline, torch_dtype


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_path_replaces_the_target_only_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "weights.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()  # folder made, nothing visible yet
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")  # no glob for *.safetensors sees it
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"

    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["weights.safetensors"]  # the temporary file is gone


def test_atomic_path_gives_each_writer_its_own_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block ends last and wins; both files moved or removed
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_json_and_text_round_trip(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"t": torch.tensor([1.5, 2.0]), "p": Path("x/y"), "n": (1, 2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"t": [1.5, 2.0], "p": "x/y", "n": [1, 2]}
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()


# ----------------------------------------------------------------------------- threads

def test_single_thread_restores_the_thread_count_even_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError):
        with single_thread():
            assert torch.get_num_threads() == 1
            raise ValueError
    assert torch.get_num_threads() == before

    @single_thread()
    def threads_inside() -> int:
        return torch.get_num_threads()

    assert threads_inside() == 1 and torch.get_num_threads() == before


# ----------------------------------------------------------------------------- weights

@pytest.mark.parametrize("name, expected", [
    ("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
    ("bf16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16),
])
def test_torch_dtype_reads_both_config_spellings(name: str, expected: torch.dtype) -> None:
    assert torch_dtype(name) is expected


def test_torch_dtype_names_the_valid_choices() -> None:
    with pytest.raises(UserError, match="valid: float32, fp32, bfloat16"):
        torch_dtype("fp8")


@pytest.mark.parametrize("env, expected", [
    ({}, False), ({"HF_HUB_OFFLINE": "1"}, True), ({"HF_HUB_OFFLINE": " Yes "}, True),
    ({"HF_HUB_OFFLINE": "0"}, False), ({"TRANSFORMERS_OFFLINE": "true"}, True),
])
def test_hub_offline_reads_either_variable_at_call_time(env: dict[str, str], expected: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hub_offline() is expected


# ----------------------------------------------------------------------------- progress

@pytest.mark.parametrize("counts, shown", [(True, "3/8"), (False, "37.5%")])
def test_progress_bar_shows_counts_or_percent_and_the_info_field(counts: bool, shown: str) -> None:
    from rich.console import Console

    out = io.StringIO()
    with progress_bar(counts=counts, console=Console(file=out, width=120, force_terminal=False)) as bar:
        task = bar.add_task("digits teacher", total=8, info="")
        bar.update(task, advance=3, info="loss 0.1234")
    text = out.getvalue()
    assert "digits teacher" in text and shown in text and "loss 0.1234" in text
