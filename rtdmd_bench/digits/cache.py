"""The on-disk cache of the trained digits networks.

`rtdmd_bench.paths.cache_dir("digits")`, one safetensors file plus a metadata JSON per network
(both written atomically, the JSON last: its presence marks a complete entry), keyed by the hash
of the network's config, the split and `CACHE_FORMAT`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file
from torch import nn

from rtdmd_bench.digits.data import HELD_OUT_FRACTION, SPLIT_SEED
from rtdmd_bench.digits.nets import ClassifierConfig, DigitClassifier, FlowNet, TeacherConfig
from rtdmd_bench.digits.training import train_classifier, train_teacher
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path, atomic_write_json
from rtdmd_bench.paths import cache_dir, config_hash

CACHE_FORMAT = 1  # bump when the architectures or training code change meaning


def cache_key(kind: str, cfg: Any) -> str:
    """Hash of the network config, the split and the cache format: what the weights depend on."""
    return config_hash({"kind": kind, "cfg": asdict(cfg), "split_seed": SPLIT_SEED,
                        "held_out_fraction": HELD_OUT_FRACTION, "format": CACHE_FORMAT})


def cache_paths(kind: str, cfg: Any) -> tuple[Path, Path]:
    """(weights .safetensors, metadata .json) of a cached network."""
    stem = cache_dir("digits") / f"{kind}-{cache_key(kind, cfg)}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _save(net: nn.Module, meta: dict[str, Any], weights: Path, meta_path: Path) -> None:
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    atomic_write_json(meta_path, meta)  # written last: its presence marks a complete entry


def _load_or_train(kind: str, cfg: Any, build: Callable[[], nn.Module],
                   train: Callable[[Any, bool], tuple[nn.Module, dict[str, Any]]],
                   force: bool, progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    weights, meta_path = cache_paths(kind, cfg)
    if force or not (weights.exists() and meta_path.exists()):
        net, info = train(cfg, progress)
        meta = {"kind": kind, "config": asdict(cfg), "cache_key": cache_key(kind, cfg),
                "split": {"seed": SPLIT_SEED, "held_out_fraction": HELD_OUT_FRACTION}, **info}
        _save(net, meta, weights, meta_path)
    net = build()
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # a truncated / foreign file: say which and how to rebuild
        raise UserError(f"digits: cannot load cached {kind} {weights} ({exc}); delete it or run "
                        "`rtdmd-bench prepare digits --force` to rebuild") from exc
    return net.eval().requires_grad_(False), json.loads(meta_path.read_text())


def load_teacher(cfg: TeacherConfig, force: bool = False, progress: bool = True) -> tuple[FlowNet, dict[str, Any]]:
    """The cached teacher (trained now if absent, or if `force`) and its metadata."""
    return _load_or_train("teacher", cfg, lambda: FlowNet(cfg), train_teacher, force, progress)


def load_classifier(cfg: ClassifierConfig, force: bool = False, progress: bool = True
                    ) -> tuple[DigitClassifier, dict[str, Any]]:
    """The cached classifier (trained now if absent, or if `force`) and its metadata."""
    return _load_or_train("classifier", cfg, lambda: DigitClassifier(cfg), train_classifier, force, progress)
