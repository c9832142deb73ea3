"""Weights resolution and per-process caching for the reward models.

Every real scorer needs files from the Hugging Face hub (or a local copy of them). This
module turns "which files, from which hub repo, or which local folder" into paths, and
when anything is missing raises ONE `UserError` that names every missing file, its hub
id, the config field / environment variable that points at a local copy, and the command
that downloads it. `HF_HUB_OFFLINE=1` is honoured by never leaving the local hub cache
(`local_files_only=True`), so the check makes no network call.

Loaded models are cached per process keyed by the scorer's config (batch size and pixel
pipelines excluded: they change how calls are made, not the weights), so building the same reward twice, e.g.
once for training and once inside an evaluation suite, loads the weights once. `release_models(kind)`
drops one kind's cached models again (an evaluation that loads one heavy scorer at a time frees
each before the next).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from rtdmd_bench.errors import UserError
from rtdmd_bench.weights import hub_offline

T = TypeVar("T")


@dataclass(frozen=True)
class WeightSpec:
    """The files one scorer component needs and where they may come from."""

    reward: str  # registry name of the reward, for messages ("hpsv21")
    what: str  # what the files are ("HPSv2.1 checkpoint")
    hub_id: str  # Hugging Face repo id ("xswu/HPSv2")
    files: tuple[str, ...]  # file names; "a|b" means either a or b (first found wins)
    env_var: str  # environment variable pointing at a local folder or file
    field: str  # the reward Config field that points at a local folder or file


def _alternatives(group: str) -> list[str]:
    return [name for name in group.split("|") if name]


def _from_local(spec: WeightSpec, root: Path) -> tuple[dict[str, Path], list[str]]:
    """Find the files of `spec` in a folder (or accept a single file for a one-file spec)."""
    if root.is_file():
        if len(spec.files) == 1:
            return {_alternatives(spec.files[0])[0]: root}, []
        return {}, [f"{root} is a file but {len(spec.files)} files are needed: a folder holding "
                    f"{', '.join(spec.files)}"]
    found: dict[str, Path] = {}
    missing: list[str] = []
    for group in spec.files:
        hit = next((root / n for n in _alternatives(group) if (root / n).is_file()), None)
        if hit is None:
            missing.append(f"{group.replace('|', ' or ')} (not in {root})")
        else:
            found[_alternatives(group)[0]] = hit
    return found, missing


def _from_hub(spec: WeightSpec, hub_id: str) -> tuple[dict[str, Path], list[str]]:
    """Download (or, offline, look up in the hub cache) each file of `spec`."""
    from huggingface_hub import hf_hub_download

    offline = hub_offline()
    found: dict[str, Path] = {}
    missing: list[str] = []
    for group in spec.files:
        errors = []
        for name in _alternatives(group):
            try:
                found[_alternatives(group)[0]] = Path(
                    hf_hub_download(hub_id, name, local_files_only=offline))
                break
            except Exception as exc:  # not cached / no network / not in the repo: report below
                errors.append(type(exc).__name__)
        else:
            where = "local hub cache (HF_HUB_OFFLINE is set)" if offline else "hub"
            missing.append(f"{group.replace('|', ' or ')} from {hub_id} "
                           f"(not found in the {where}: {', '.join(sorted(set(errors)))})")
    return found, missing


def _advice(spec: WeightSpec, hub_id: str) -> str:
    # --include with every alternative: which of them a repo holds varies (safetensors or .bin).
    patterns = " ".join(f'"{n}"' for g in spec.files for n in _alternatives(g))
    return (f"  {spec.what} for {spec.reward!r}: download with "
            f"`hf download {hub_id} --include {patterns} --local-dir DIR`, then pass "
            f"`--set reward.{spec.reward}.{spec.field}=DIR` or set the environment variable {spec.env_var}=DIR")


def resolve_files(requests: Sequence[tuple[WeightSpec, str, str]]) -> list[dict[str, Path]]:
    """Resolve several components at once: each request is (spec, local_path, hub_id).

    `local_path` (else `$spec.env_var`) wins over the hub. Returns, per request, a dict from
    each file group's first name to its path. Raises ONE UserError listing everything
    missing across all requests, with how to provide it."""
    results: list[dict[str, Path]] = []
    problems: list[str] = []
    advice: list[str] = []
    for spec, local_path, hub_id in requests:
        hub_id = hub_id or spec.hub_id
        local = local_path or os.environ.get(spec.env_var, "")
        if local:
            root = Path(local).expanduser()
            if not root.exists():
                found, missing = {}, [f"{root} does not exist (from "
                                      f"{spec.field if local_path else spec.env_var})"]
            else:
                found, missing = _from_local(spec, root)
        else:
            found, missing = _from_hub(spec, hub_id)
        results.append(found)
        if missing:
            problems += [f"  - {spec.what}: {m}" for m in missing]
            advice.append(_advice(spec, hub_id))
    if problems:
        reward = requests[0][0].reward
        raise UserError(
            f"reward {reward!r} cannot load its weights; missing files:\n" + "\n".join(problems)
            + "\nTo fix:\n" + "\n".join(advice)
            + "\n  (or run once with network access so the hub cache fills; tests and CI use the"
              " tiny-* stand-in rewards instead)")
    return results


def folder_of(files: dict[str, Path]) -> Path:
    """The one folder that holds all resolved files (hub snapshots and local dirs do)."""
    parents = {p.parent for p in files.values()}
    if len(parents) != 1:
        raise UserError(f"expected the files {sorted(files)} in one folder, found {sorted(parents)}")
    return parents.pop()


def load_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint as a flat state dict, read with `torch.load(weights_only=True)` only.

    Accepts a bare state dict or a training checkpoint holding it under 'state_dict' (the
    HPSv2 release format) or 'model'; strips a DistributedDataParallel 'module.' prefix."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path} as a weights-only torch checkpoint ({exc}); "
                        "re-download the file (it may be truncated or an HTML error page)") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, assign: bool = False) -> None:
    """`load_state_dict(strict=True)`, with a mismatch reported as a UserError naming keys.
    `assign=True` makes the module take the state's tensors instead of copying into its own
    (no second copy of a large model in memory; the tensors keep the state's dtype)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise UserError(
            f"{what} does not match the expected architecture: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} of another "
            f"shape {shapes[:3]}; check that the file is the right release for this reward")
    module.load_state_dict(state, strict=True, assign=assign)


# ---------------------------------------------------------------------------------------
# Per-process model cache keyed by config.

_MODELS: dict[tuple[str, str], Any] = {}
# Fields that do not change what is loaded (pixel pipelines are applied per call).
_NOT_WEIGHTS = ("batch_size", "pixels", "pixels_grad")


def config_key(cfg: Any) -> str:
    """Canonical JSON of a config dataclass (or a tuple of them and plain values) without the
    fields that do not affect weights."""
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {k: v for k, v in dataclasses.asdict(x).items() if k not in _NOT_WEIGHTS}
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        return x
    return json.dumps(plain(cfg), sort_keys=True, default=str)


def cached_model(kind: str, cfg: Any, build: Callable[[], T]) -> T:
    """`build()` once per (kind, config) in this process; later calls return the same object."""
    key = (kind, config_key(cfg))
    if key not in _MODELS:
        _MODELS[key] = build()
    return _MODELS[key]


def clear_model_cache() -> None:
    """Forget every cached model (tests; freeing memory between suites)."""
    _MODELS.clear()


def release_models(kind: str, cfg: Any = None) -> int:
    """Drop the cached models of `kind` (only the one built for `cfg` when given) and return the
    memory they held: garbage collection, then CUDA's cached blocks. Returns how many were dropped.
    The memory comes back only once no reward object still holds the model (rewards that fetch
    it from this cache per call, like `hpsv3`, hold none)."""
    keys = [k for k in _MODELS if k[0] == kind and (cfg is None or k[1] == config_key(cfg))]
    for key in keys:
        del _MODELS[key]
    if keys:
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return len(keys)


def frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Eval mode, no parameter gradients (gradients still flow to the input image)."""
    module.eval().requires_grad_(False)
    return module.to(dtype=dtype)
