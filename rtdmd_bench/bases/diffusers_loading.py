"""Where the diffusers bases' weights come from, and small loading helpers.

`weights_location` / `load_component`: config field, `RTDMD_BENCH_<BASE>_PATH`, or the hub id,
and the single clear error when weights are absent (CONTRIBUTING.md "Errors"); `word_tokenizer`:
tokenizers built locally for the tiny bases (no download, ever); device choice. Prompt files:
`rtdmd_bench/prompt_files.py`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from rtdmd_bench.core.schedules import FlowMatchSchedulerConfig, scheduler_config_differences
from rtdmd_bench.errors import UserError
from rtdmd_bench.weights import hub_offline


def weights_location(cfg_path: str | None, env_var: str, hub_id: str) -> tuple[str, bool]:
    """(path or hub id, is_local). Config field first, then the env var, then the hub id."""
    path = cfg_path or os.environ.get(env_var) or ""
    return (path, True) if path else (hub_id, False)


def missing_weights_message(base: str, hub_id: str, env_var: str, subfolders: Sequence[str],
                            where: str, reason: str, gated: bool = True) -> str:
    lines = [
        f"weights for base {base!r} are not available ({reason}).",
        f"  needed: {', '.join(s + '/' for s in subfolders)} of the diffusers repository {hub_id}",
        f"  looked in: {where}",
        f"  download:  huggingface-cli download {hub_id} --local-dir DIR",
        f"  then point at it: --base-path DIR  (or --set base.base_path=DIR, or {env_var}=DIR)",
    ]
    if gated:
        lines.append(f"  {hub_id} is a gated model: accept its licence on https://huggingface.co/{hub_id} "
                     "and log in (huggingface-cli login) before downloading.")
    return "\n".join(lines)


def check_local_weights(path: str, subfolders: Sequence[str]) -> list[str]:
    """Subfolders of a local diffusers directory that lack a config file."""
    root = Path(path).expanduser()
    return [s for s in subfolders if not any((root / s / f).is_file() for f in
                                             ("config.json", "tokenizer_config.json", "scheduler_config.json"))]


def load_component(cls: Any, location: str, subfolder: str, local: bool, message: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(location, subfolder=...)`; any hub/file error becomes one UserError."""
    try:
        with warnings.catch_warnings():  # diffusers passes a deprecated hub argument; not the user's concern
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return cls.from_pretrained(location, subfolder=subfolder, local_files_only=local or hub_offline(), **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:  # hub errors subclass OSError/ValueError
        raise UserError(message) from err


def word_tokenizer(prompts: Sequence[str], max_length: int, chat_template: str | None = None) -> Any:
    """A word-level fast tokenizer over the words of `prompts` (+ specials), built in memory.

    Ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>; every encoding is `<bos> words <eos>`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for p in prompts for w in p.lower().replace(",", " ").split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", model_max_length=max_length)
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def pick_device(spec: str) -> torch.device:
    """'auto' -> this rank's GPU (LOCAL_RANK, as set by `accelerate launch`) if any, else CPU."""
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def freeze(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


def check_scheduler_config(location: str, local: bool, recorded: FlowMatchSchedulerConfig, base: str) -> list[str]:
    """Compare the weights' own `scheduler/scheduler_config.json` with the scheduler config the
    base records (`real_configs`), warn on any schedule-deciding difference and return the
    differences. The file is read from the local directory or the hub cache (downloaded when
    online); when it cannot be had, nothing is compared (the recorded config stands)."""
    import json

    path = Path(location).expanduser() / "scheduler" / "scheduler_config.json" if local else None
    if not local:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(location, "scheduler_config.json", subfolder="scheduler",
                                        local_files_only=hub_offline()))
        except Exception:  # noqa: BLE001  (no network, gated repo, ...: the recorded config stands)
            path = None
    if path is None or not path.is_file():
        return []
    diffs = scheduler_config_differences(json.loads(path.read_text()), recorded)
    if diffs:
        warnings.warn(f"base {base!r}: {path} differs from the scheduler config the suite records "
                      f"({'; '.join(diffs)}); teacher samplers use the recorded schedule, so they may not "
                      "match this checkpoint's diffusers pipeline: please report it", stacklevel=2)
    return diffs
