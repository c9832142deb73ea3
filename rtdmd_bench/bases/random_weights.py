"""Real bases with random weights (`--set base.init=random`): for speed and memory work on a GPU
that has no weights (`benchmarks/step_cost.py`).

Every network is built from the published architecture config that `real_configs` records (the one
`rtdmd-bench plan` counts on the meta device), directly on the base's device and in its weights
dtype (no fp32 copy of T5-XXL on the way), and initialised by each class's own initialiser from a
generator seeded by `base.seed`. Tokenizers are word-level ones built in memory, as the tiny bases'
(`word_tokenizer`); every encoding is padded to the real max length, so the sequence lengths, and
with them the costs, are the real ones. Nothing is downloaded and the hub is never asked.

The samples and scores of such a base mean nothing: runs and results carry `random_init_note`
(train's result.json, every eval/<suite>.json, `compare`'s row labels say `[random-init]`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from rtdmd_bench.bases.real_configs import REAL_BASES, Component, RealBase

RANDOM_INIT = "random-init"
"""Label appended to the base name wherever a random-init run shows up (`sd3[random-init]`)."""

WORD_TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
"""Special ids of `word_tokenizer`; the text encoders get them in place of their real ones (a
special id is not a parameter: the architecture and its parameter count do not change)."""


def random_init_note(base: str, seed: int) -> str:
    """What every result of a random-init run says about itself."""
    return (f"base.init=random: {base} is the published architecture with RANDOM weights (seed {seed}) and "
            "word tokenizers, built without a download for speed and memory measurements; its samples and "
            "scores are not the model's")


def architecture(base: str) -> RealBase:
    """The recorded architecture of a real base (looked up at call time, so tests can shrink it)."""
    return REAL_BASES[base]


@contextlib.contextmanager
def constructing(device: torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Modules created inside get their parameters on `device`, in `dtype`, initialised from a
    generator seeded by `seed` (the global random state outside is left as it was)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def build_component(c: Component, **config_overrides: Any) -> nn.Module:
    """One network of a recorded config: diffusers classes take the kwargs, transformers classes
    a config object made from them (`config_overrides` replace config values, e.g. special ids)."""
    kwargs = {**c.kwargs, **config_overrides}
    if c.library == "diffusers":
        import diffusers

        return getattr(diffusers, c.cls)(**kwargs)
    import transformers

    return getattr(transformers, c.cls)(getattr(transformers, c.config_cls)(**kwargs))


def random_networks(base: str, seed: int, device: torch.device, dtype: torch.dtype,
                    text_keys: Sequence[str], tokenizers: dict[str, Any], separate_generator: bool = False) -> Any:
    """`Networks` of `base` from its recorded architecture: transformer, VAE, the text encoders
    under `text_keys` (in `RealBase.text_encoders` order) beside `tokenizers`, and (FLUX.2-klein)
    a second, differently initialised transformer for the generator."""
    from rtdmd_bench.bases.diffusers_common import Networks

    rb = architecture(base)
    if len(text_keys) != len(rb.text_encoders):
        raise ValueError(f"{base}: {len(rb.text_encoders)} text encoders recorded, keys {list(text_keys)}")
    with constructing(device, dtype, seed):
        transformer = build_component(rb.transformer)
        vae = build_component(rb.vae)
        encoders = {k: build_component(c, **WORD_TOKEN_IDS) for k, c in zip(text_keys, rb.text_encoders)}
        generator = build_component(rb.transformer) if separate_generator else None  # later draws: other weights
    return Networks(transformer=transformer, vae=vae, text={**tokenizers, **encoders}, generator=generator)
