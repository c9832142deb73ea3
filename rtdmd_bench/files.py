"""Atomic file writes: a reader sees a file's old content or its complete new content, never half
of it (an interrupted run, a killed process, two ranks writing the same cache entry).

Everything is written to a temporary name in the target's folder and moved into place with
`os.replace` (atomic within one file system). `atomic_path` serves writers that take a path
(safetensors' `save_file`, matplotlib's `savefig`); the `atomic_write_*` functions write bytes,
text or JSON. This module imports nothing of the project: every layer may use it.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` for the caller to write; when the block ends
    without an error it replaces `path`, otherwise it is deleted and `path` is left as it was.

    The temporary name is hidden and ends in `.tmp`, so a glob for the real files (`*.json`,
    `*.safetensors`) never sees a half-written one (writers that pick a format from the suffix,
    like `savefig`, must be told the format); it is unique per process and call, so concurrent
    writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON plus a newline; tensors become lists, paths and tuples strings and lists."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for the values results hold besides JSON types."""
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    return str(o)
