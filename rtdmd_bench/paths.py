"""Where cached artefacts (trained toy/digits networks, downloaded prompt files) live.

`$RTDMD_BENCH_CACHE` if set, else the platform's user cache folder (platformdirs)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("RTDMD_BENCH_CACHE") or platformdirs.user_cache_dir("rtdmd-bench")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object (dataclass configs via `dataclasses.asdict`)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
