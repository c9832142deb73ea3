"""What loading pretrained weights needs on both sides: the diffusers bases and the reward models.

- `hub_offline()`: whether the Hugging Face hub may be contacted (loaders then pass
  `local_files_only=True` and never leave the local hub cache).
- `torch_dtype(name)`: a config's dtype name as a torch dtype. The bases' configs spell them
  fp32 / bf16 / fp16 (`weights_dtype`), the rewards' float32 / bfloat16 / float16 (`dtype`); both
  spellings are read here, so the two config vocabularies stay as users know them.
"""

from __future__ import annotations

import os

import torch

from rtdmd_bench.errors import UserError

_TRUE = {"1", "true", "yes", "on"}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set to 1/true/yes/on, read at call time
    (huggingface_hub reads it once at import, so tests that set it later would be ignored)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def torch_dtype(name: str) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or 'fp32' | 'bf16' | 'fp16') -> torch dtype;
    anything else is a UserError listing the valid names."""
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}")
    return _DTYPES[name]
