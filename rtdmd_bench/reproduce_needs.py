"""What a `reproduce TABLE` plan needs on disk, and whether it is there: no network, no weights loaded.

- Prompt files: the suites' protocol files (`suites.prompt_sets.OFFICIAL`) and the named training
  sets the runs' configs use (`prompt_files.TRAINING`, e.g. `rtdmd:pickscore/train.txt`); present =
  the cached download exists and passes its checksum.
- Weights: every hub id a run's base and rewards and a suite's scorers name in their default configs
  (fields ending in `id`, e.g. `hub_id`, `model_id`, `processor_id`), plus the GenEval detector and its
  colour CLIP; present = a local folder the config points at, or a snapshot in the local Hugging Face
  hub cache (`huggingface_hub.constants.HF_HUB_CACHE`). OCR runs in an environment of its own
  ($RTDMD_BENCH_OCR_PYTHON).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

GENEVAL_EXTRA = ("facebook/mask2former-swin-small-coco-instance", "timm/vit_large_patch14_clip_224.openai")
"""The GenEval suites' detector and colour CLIP (rtdmd_bench/geneval/models.py: DETECTOR_HUB_ID, CLIP_HUB_NOTE)."""


def hub_ids(obj: Any) -> list[str]:
    """Hub repository ids ('org/name') in a config dataclass, nested ones included, in field order."""
    out: list[str] = []
    if not dataclasses.is_dataclass(obj):
        return out
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += hub_ids(value)
        elif (isinstance(value, str) and f.name.endswith("id") and value.count("/") == 1
              and ":" not in value and not value.startswith(("/", "."))):
            out.append(value)
    return out


def in_hub_cache(repo: str) -> bool:
    """A snapshot of model repository `repo` is in the local hub cache (no network)."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def suite_weights(registry_name: str) -> list[str]:
    """Hub ids a suite's scorers load with their default settings."""
    from rtdmd_bench import registry

    cfg = registry.resolve("suites", registry_name).Config()
    ids = hub_ids(cfg)
    scoring = getattr(cfg, "scoring", cfg)
    for name in getattr(scoring, "scorers", ()) or ():  # DrawBench's five reward models
        ids += hub_ids(registry.resolve("rewards", name).Config())
    if "geneval" in registry_name and "geneval2" not in registry_name:
        ids += list(GENEVAL_EXTRA)
    return list(dict.fromkeys(ids))


def base_weights(base_cfg: dict[str, Any], what: str) -> list[tuple[str, str]]:
    """(hub id or local folder, what) of a diffusers base's teacher and separate generator; none for CPU bases."""
    return [(base_cfg.get(local) or base_cfg[key], what) for key, local in
            (("hub_id", "base_path"), ("generator_hub_id", "generator_path")) if base_cfg.get(key)]


def run_weights(cfg: dict[str, Any], base: str, method: str) -> list[tuple[str, str]]:
    """(hub id or local folder, what) a run's base and training rewards load (its resolved config)."""
    from rtdmd_bench.config import resolve_config

    out = base_weights(cfg["base"], f"base {base}")
    for name, reward in resolve_config(method, base, []).rewards.items():
        out += [(i, f"reward {name}") for i in hub_ids(reward)]
    return out


def prompt_files_needed(jobs: Iterable[Any], groups: list[Any]) -> list[tuple[str, str, bool]]:
    """(name, cached path, present and verified) for every prompt file the plan reads."""
    from rtdmd_bench import registry
    from rtdmd_bench.paths import cache_dir
    from rtdmd_bench.prompt_files import TRAINING, git_blob_of, sha256_of
    from suites.prompt_sets import OFFICIAL

    specs: dict[str, Any] = {}
    for _, members in groups:
        for reg, _ in members:
            key = getattr(registry.resolve("suites", reg), "prompt_set", "")
            if key in OFFICIAL:
                specs[f"{reg}: {key}"] = OFFICIAL[key]
    for job in jobs:
        for value in _strings(job.config):
            if value in TRAINING:
                specs[value] = TRAINING[value]
    out = []
    for name, spec in specs.items():
        path = cache_dir("prompts") / spec.filename
        ok = path.is_file() and (sha256_of(path) == spec.sha256 if spec.sha256 else
                                 git_blob_of(path) == getattr(spec, "git_blob", ""))
        out.append((name, str(path), ok))
    return out


def weights_needed(jobs: Iterable[Any], groups: list[Any]) -> list[tuple[str, str, bool]]:
    """(hub id or folder, used by, present) for every weight the plan loads, each once."""
    used: dict[str, list[str]] = {}
    for job in jobs:
        pairs = (run_weights(job.config, job.base, job.method) if job.kind == "run"
                 else base_weights(job.config["base_config"], f"teacher {job.base}")[:1])
        for repo, what in pairs:
            used.setdefault(repo, []).append(what)
    for _, members in groups:
        for reg, _ in members:
            for repo in suite_weights(reg):
                used.setdefault(repo, []).append(f"suite {reg}")
            if reg.endswith("ocr"):
                python = os.environ.get("RTDMD_BENCH_OCR_PYTHON", "")
                used.setdefault(f"PaddleOCR environment ($RTDMD_BENCH_OCR_PYTHON={python or 'unset'})", []).append(
                    f"suite {reg}")
    out = []
    for repo, who in used.items():
        if repo.startswith("PaddleOCR"):
            present = bool(os.environ.get("RTDMD_BENCH_OCR_PYTHON")) and Path(os.environ["RTDMD_BENCH_OCR_PYTHON"]).exists()
        elif repo.startswith(("/", ".", "~")):
            present = Path(repo).expanduser().exists()
        else:
            present = in_hub_cache(repo)
        out.append((repo, ", ".join(dict.fromkeys(who)), present))
    return out


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj
