"""The on-disk cache of the trained shapes networks (as the digits cache).

`rtdmd_bench.paths.cache_dir("shapes")`, one safetensors file plus a metadata JSON per network
(both written atomically, the JSON last: its presence marks a complete entry), keyed by the hash
of the network's config, the scene/prompt definition constants and `CACHE_FORMAT`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file
from torch import nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path, atomic_write_json
from rtdmd_bench.paths import cache_dir, config_hash
from rtdmd_bench.shapes import detect, scenes, slots

CACHE_FORMAT = 2  # bump when the architectures, renderer or training code change meaning (2: slot-latent teacher)


def _world() -> dict[str, Any]:
    return {"size": scenes.IMAGE_SIZE, "palette": scenes.PALETTE, "radius": scenes.RADIUS_RANGE, "gap": scenes.GAP,
            "split_seed": scenes.SPLIT_SEED, "eval_per_tag": scenes.EVAL_PROMPTS_PER_TAG}


def cache_key(kind: str, cfg: Any) -> str:
    """Hash of the network config, what the renders depend on, and the cache format."""
    return config_hash({"kind": kind, "cfg": asdict(cfg), "world": _world(), "format": CACHE_FORMAT})


def evaluator_accuracy() -> dict[str, Any]:
    """`detect.evaluator_accuracy` on noisy renders (its defaults) and on clean decoded slot codes,
    measured once per world, renderer and detector setting and kept as a JSON file in the cache."""
    key = config_hash({"world": _world(), "foreground": detect.FOREGROUND, "min_area": detect.MIN_AREA,
                       "max_area": detect.MAX_AREA, "min_iou": detect.MIN_IOU, "tau": slots.TAU,
                       "format": CACHE_FORMAT})
    path = cache_dir("shapes") / f"evaluator-{key}.json"
    if not path.exists():
        atomic_write_json(path, {"renders": detect.evaluator_accuracy(),
                                 "decoded": detect.evaluator_accuracy(noise_std=0.0, source="decoded")})
    return json.loads(path.read_text())


def cache_paths(kind: str, cfg: Any) -> tuple[Path, Path]:
    """(weights .safetensors, metadata .json) of a cached network."""
    stem = cache_dir("shapes") / f"{kind}-{cache_key(kind, cfg)}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def load_or_train(kind: str, cfg: Any, build: Callable[[], nn.Module],
                  train: Callable[[], tuple[nn.Module, dict[str, Any]]],
                  force: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The cached network `kind` of config `cfg` (trained now by `train()` if absent, or if
    `force`), frozen in eval mode, and its metadata."""
    weights, meta_path = cache_paths(kind, cfg)
    if force or not (weights.exists() and meta_path.exists()):
        net, info = train()
        with atomic_path(weights) as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        atomic_write_json(meta_path, {"kind": kind, "config": asdict(cfg), "cache_key": cache_key(kind, cfg), **info})
    net = build()
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # a truncated / foreign file: say which and how to rebuild
        raise UserError(f"shapes: cannot load cached {kind} {weights} ({exc}); delete it or run "
                        "`rtdmd-bench prepare shapes --force` to rebuild") from exc
    return net.eval().requires_grad_(False), json.loads(meta_path.read_text())
