"""HPSv3's reward model (MizzenAI/HPSv3) in transformers 5 classes, and how its files are found.

HPSv3 is Qwen2-VL-7B-Instruct plus a small MLP ("rm_head") read at one added special token,
`<|Reward|>`; its `hpsv3` package (1.0.0, the version RTDMD pins) builds it as
`Qwen2VLRewardModelBT` under transformers 4.45. The package cannot be installed beside transformers
5, so this module rebuilds the same computation from transformers 5's `Qwen2VLModel`:

- prompt: one user turn [image, text] rendered by the Qwen2-VL processor's chat template with the
  generation prompt; text = the package's instruction with the prompt filled in + its suffix that
  holds `<|Reward|>` (`PromptTemplate`; read from the package's own file, never copied here);
- positions: HPSv3's forward calls the text decoder with `inputs_embeds` and no `position_ids`,
  so every token, image tokens included, gets the plain sequential position 0..L-1 on all three
  M-RoPE axes (transformers 4.45: the cache positions; 4.57, RTDMD's environment: cumsum of the
  mask - 1, the same for right-padded rows), NOT Qwen2-VL's 3-D image positions: this module
  passes them explicitly (`sequential_positions`);
- read-out: the last hidden state (after the final norm) at the `<|Reward|>` token, through the
  float32 head -> (mu, sigma); the score is mu;
- numerics: the package casts the whole model to bf16 after loading (`model.to(torch.bfloat16)`),
  buffers included, so the rotary inverse frequencies are bf16-rounded, and transformers 4.45 /
  4.57 compute the vision tower's rotary angles and their cos/sin in that dtype. `rotary="hpsv3"`
  reproduces both (`ModelDtypeVisionRope`); `rotary="float32"` is transformers 5's float32 rotary.

Memory (bf16, from the parameter count of the published architecture on the meta device): the
backbone without `lm_head` has 7.745 B parameters (vision 0.676 B) -> 15.5 GB; the head 3.7 M in
fp32; `lm_head` (0.544 B, 1.1 GB) is dropped after the strict check (the package keeps it: 16.6 GB).
Activations per image (~900 tokens, no gradients): ~0.1-0.15 GB in the decoder plus ~0.07 GB of
vision attention, so the estimated peak is ~17 GB at batch 8 and ~20 GB at batch 32 (an estimate:
no GPU here; measure it with `torch.cuda.max_memory_allocated` and put the figure in the docs).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards.loading import WeightSpec, load_strict
from rtdmd_bench.weights import torch_dtype

REWARD_TOKEN = "<|Reward|>"
PIXEL_BUDGET = 256 * 28 * 28
"""HPSv3's image budget (min_pixels = max_pixels = 200,704 = 448 x 448 -> 256 visual tokens)."""
PACKAGE = "hpsv3==1.0.0"
TEMPLATE_MODULE = "hpsv3/dataset/data_collator_qwen.py"
TEMPLATE_SHA256 = "f6ee57479d4e9eee76b49c00dc962e1e696a5a2b3cc32cebd9b1fa76fe27502c"
"""SHA-256 of INSTRUCTION + prompt_with_special_token (UTF-8) in hpsv3 1.0.0's TEMPLATE_MODULE."""
Rotary = Literal["hpsv3", "float32"]

CHECKPOINT_ENV, BASE_ENV, TEMPLATE_ENV = "RTDMD_BENCH_HPSV3_PATH", "RTDMD_BENCH_QWEN2VL_PATH", "RTDMD_BENCH_HPSV3_TEMPLATE_PATH"
# The base repo's weights are not needed (HPSv3.safetensors holds every tensor): its config,
# tokenizer and processor only; the chat template is in chat_template.json or tokenizer_config.json.
BASE_FILES = ("config.json", "preprocessor_config.json|processor_config.json", "tokenizer_config.json", "tokenizer.json",
              "chat_template.json|chat_template.jinja|tokenizer_config.json")


def checkpoint_spec(hub_id: str, checkpoint: str) -> WeightSpec:
    return WeightSpec("hpsv3", "HPSv3 reward weights", hub_id, (checkpoint,), CHECKPOINT_ENV, "local_path")


def base_spec(base_id: str) -> WeightSpec:
    return WeightSpec("hpsv3", f"{base_id} config, tokenizer and processor (its weights are not needed)",
                      base_id, BASE_FILES, BASE_ENV, "base_path")


# ---------------------------------------------------------------------------------------
# The prompt template, read from the hpsv3 package's own file.

@dataclass(frozen=True)
class PromptTemplate:
    """The text of the user turn: `instruction` with one {text_prompt} placeholder, then `suffix`,
    which holds the reward token (the package's INSTRUCTION and prompt_with_special_token)."""

    instruction: str
    suffix: str

    def text(self, prompt: str) -> str:
        return self.instruction.format(text_prompt=prompt) + self.suffix  # str.format, as the package

    @property
    def sha256(self) -> str:
        return hashlib.sha256((self.instruction + self.suffix).encode("utf-8")).hexdigest()


def template_from_source(source: str, where: str) -> PromptTemplate:
    """The two module-level strings of the package's data_collator_qwen.py (parsed, not imported:
    the package imports trl, peft and transformers 4.45 at import time), checked by TEMPLATE_SHA256."""
    found: dict[str, str] = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found[node.targets[0].id] = node.value.value
    if "INSTRUCTION" not in found or "prompt_with_special_token" not in found:
        raise UserError(f"{where} does not define INSTRUCTION and prompt_with_special_token: it is not "
                        f"{TEMPLATE_MODULE} of {PACKAGE}")
    template = PromptTemplate(found["INSTRUCTION"], found["prompt_with_special_token"])
    if template.sha256 != TEMPLATE_SHA256:
        raise UserError(f"the HPSv3 prompt template in {where} has SHA-256 {template.sha256}, expected "
                        f"{TEMPLATE_SHA256} ({PACKAGE}): use that release's file")
    return template


def read_template(path: Path) -> PromptTemplate:
    """From data_collator_qwen.py, the package wheel (.whl), or a folder holding either (an
    unpacked package, a checkout of MizzenAI/HPSv3, a `pip download` folder)."""
    if path.is_dir():
        candidates = [path / TEMPLATE_MODULE, path / TEMPLATE_MODULE.removeprefix("hpsv3/"),
                      path / Path(TEMPLATE_MODULE).name, *sorted(path.glob("hpsv3-*.whl"))]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise UserError(f"{path} holds neither {TEMPLATE_MODULE} nor an hpsv3 wheel")
        path = hit
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            if TEMPLATE_MODULE not in wheel.namelist():
                raise UserError(f"the wheel {path} has no {TEMPLATE_MODULE}")
            return template_from_source(wheel.read(TEMPLATE_MODULE).decode("utf-8"), f"{path}:{TEMPLATE_MODULE}")
    return template_from_source(path.read_text(encoding="utf-8"), str(path))


def find_template(local: str) -> tuple[PromptTemplate | None, str]:
    """(template, "") or (None, what is missing and how to provide it). Sources in order: `local`
    (the config field, else $RTDMD_BENCH_HPSV3_TEMPLATE_PATH), then an installed `hpsv3` package."""
    if local:
        path = Path(local).expanduser()
        if not path.exists():
            return None, f"  - HPSv3 prompt template: {path} does not exist"
        return read_template(path), ""
    spec = importlib.util.find_spec("hpsv3")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        module = Path(next(iter(spec.submodule_search_locations))).parent / TEMPLATE_MODULE
        if module.is_file():
            return read_template(module), ""
    return None, (f"  - HPSv3 prompt template: {TEMPLATE_MODULE} of {PACKAGE} (no template_path, no "
                  f"{TEMPLATE_ENV}, no `hpsv3` package installed)\n"
                  f"  To fix: `pip download {PACKAGE} --no-deps -d DIR` (a 68 kB wheel; installs nothing), then pass "
                  f"`--set reward.hpsv3.template_path=DIR` or set {TEMPLATE_ENV}=DIR; or `pip install {PACKAGE} "
                  "--no-deps` (found without being imported)")


# ---------------------------------------------------------------------------------------
# Inputs and read-out (pure functions).

def sequential_positions(attention_mask: Tensor) -> Tensor:
    """(B, L) right-padded mask -> (3, B, L) position ids: 0..L-1 on all three M-RoPE axes, what
    HPSv3's forward gives every token (image tokens included). Pads get positions too; with causal
    attention they come after the reward token and cannot change it."""
    if (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
        raise ValueError("HPSv3 inputs must be right-padded (the package's processor padding side)")
    b, length = attention_mask.shape
    return torch.arange(length, device=attention_mask.device).view(1, 1, length).expand(3, b, length)


def reward_index(input_ids: Tensor, reward_id: int) -> Tensor:
    """(B, L) -> (B,) the position of the one reward token per row."""
    hits = input_ids == reward_id
    counts = hits.sum(-1)
    if (counts != 1).any():
        raise UserError(f"each HPSv3 input needs exactly one {REWARD_TOKEN} token; found {counts.tolist()} "
                        f"(does a prompt contain the text {REWARD_TOKEN}?)")
    return hits.float().argmax(-1)


def rank_head(width: int) -> nn.Sequential:
    """HPSv3's "ranknet" rm_head (no rm_head_kwargs, output_dim 2): width -> 1024 -> 16 -> (mu, sigma),
    ReLU between, dropout 0.05 (inactive in eval). Keys 0.*, 3.*, 5.*; kept in float32."""
    return nn.Sequential(nn.Linear(width, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(),
                         nn.Linear(16, 2))


class ModelDtypeVisionRope(nn.Module):
    """transformers 4.45/4.57's vision rotary numerics under HPSv3: angles = position x inv_freq
    computed in the buffer's dtype (bf16 after the package's cast; torch.outer in bf16 there) and
    cos/sin taken in that dtype. Wraps transformers 5's module (same buffers and layout), whose own
    forward computes both in float32."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:  # (N, 2) -> (N, head_dim) x2
        inv_freq = self.inner.inv_freq
        freqs = position_ids[..., None].to(inv_freq.dtype) * inv_freq  # (N, 2, head_dim/4), rounded to the dtype
        cos, sin = freqs.cos() * self.inner.attention_scaling, freqs.sin() * self.inner.attention_scaling
        return self.inner.recomposition_frequencies(cos), self.inner.recomposition_frequencies(sin)


class HPSv3Model(nn.Module):
    """Qwen2-VL backbone (transformers 5 `Qwen2VLModel`: vision tower + text decoder, no lm_head),
    HPSv3's head, the processor (tokenizer with `<|Reward|>` added, right padding) and the template."""

    def __init__(self, backbone: nn.Module, head: nn.Module, processor: Any, template: PromptTemplate,
                 reward_id: int) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.processor, self.template, self.reward_id = processor, template, reward_id

    def texts(self, prompts: Sequence[str]) -> list[str]:
        """The chat-template rendering of each prompt's user turn, with the generation prompt."""
        messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.template.text(p)}]}]
                    for p in prompts]
        return list(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def inputs(self, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, Tensor]:
        """PIL images (already at the pixel budget) + prompts -> the model's tensors on its device."""
        batch = self.processor(text=self.texts(prompts), images=list(images), padding=True, return_tensors="pt")
        device = self.head[0].weight.device
        return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor,
                image_grid_thw: Tensor) -> Tensor:  # -> (B, 2): (mu, sigma) in float32
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                               image_grid_thw=image_grid_thw, position_ids=sequential_positions(attention_mask),
                               use_cache=False).last_hidden_state  # (B, L, D)
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), reward_index(input_ids, self.reward_id)]
        # The package runs the head under float32 autocast on the bf16 states: a float32 head.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(rows.float())  # (B, 2); the head on the reward rows only (same values)


# ---------------------------------------------------------------------------------------
# Building: shared finish, the real loader.

def add_reward_token(tokenizer: Any) -> int:
    """Add `<|Reward|>` as an additional special token, as the package does; it must get the next
    id (HPSv3's embedding has exactly len(tokenizer) rows: 151,658 for Qwen2-VL)."""
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    if reward_id != before or len(tokenizer) != before + 1:
        raise UserError(f"adding {REWARD_TOKEN} gave id {reward_id} with {len(tokenizer)} tokens (expected a new "
                        f"id {before}): is this Qwen2-VL's tokenizer?")
    tokenizer.padding_side = "right"
    return reward_id


def finish(backbone: nn.Module, head: nn.Module, processor: Any, template: PromptTemplate, reward_id: int,
           dtype: str, rotary: Rotary) -> HPSv3Model:
    """Frozen model in HPSv3's precision: backbone cast to `dtype` with its buffers (the package's
    model.to(bf16)), head float32; the rotary numerics of `rotary` (module docstring)."""
    if rotary == "float32":
        keep = {n: b.detach().clone() for n, b in backbone.named_buffers() if n.endswith("inv_freq")}
    backbone.eval().requires_grad_(False).to(torch_dtype(dtype))
    if rotary == "float32":
        for name, value in keep.items():
            owner, _, attr = name.rpartition(".")
            setattr(backbone.get_submodule(owner), attr, value)
    else:
        backbone.visual.rotary_pos_emb = ModelDtypeVisionRope(backbone.visual.rotary_pos_emb)
    head.eval().requires_grad_(False).float()
    return HPSv3Model(backbone, head, processor, template, reward_id)


def split_checkpoint(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Checkpoint key -> (part, key in that part): "backbone" (Qwen2VLModel names), "head" or
    "lm_head". Accepts the package's transformers-4.45 names (model.* = text decoder, visual.*) and
    the newer layout RTDMD's loader rewrites them to (model.language_model.*, model.visual.*)."""
    out: dict[str, tuple[str, str]] = {}
    for key in names:
        if key.startswith("rm_head."):
            out[key] = ("head", key.removeprefix("rm_head."))
        elif key.startswith("lm_head."):
            out[key] = ("lm_head", key)
        elif key.startswith(("model.visual.", "model.language_model.")):
            out[key] = ("backbone", key.removeprefix("model."))
        elif key.startswith("visual."):
            out[key] = ("backbone", key)
        elif key.startswith("model."):
            out[key] = ("backbone", "language_model." + key.removeprefix("model."))
        else:
            out[key] = ("backbone", key)  # reported as unexpected by the strict check
    return out


def read_checkpoint(path: Path, dtype: torch.dtype) -> tuple[dict[str, Tensor], dict[str, Tensor], tuple[int, ...]]:
    """(backbone state in `dtype`, head state in float32, lm_head shape), tensor by tensor from the
    safetensors file (never a second full copy); lm_head itself is not read."""
    from safetensors import safe_open

    backbone: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    lm_shape: tuple[int, ...] = ()
    try:
        f = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own error type for a truncated or HTML file
        raise UserError(f"cannot read {path} as safetensors ({exc}); re-download HPSv3.safetensors") from exc
    with f:
        for key, (part, name) in split_checkpoint(list(f.keys())).items():
            if part == "lm_head":
                lm_shape = tuple(f.get_slice(key).get_shape())
            elif part == "head":
                head[name] = f.get_tensor(key).float()
            else:
                backbone[name] = f.get_tensor(key).to(dtype)
    return backbone, head, lm_shape


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_hpsv3(checkpoint: Path, base_dir: Path, template: PromptTemplate, dtype: str, rotary: Rotary) -> HPSv3Model:
    """HPSv3 from resolved local files: `checkpoint` (HPSv3.safetensors), `base_dir` (the Qwen2-VL
    config, tokenizer and processor). Weights via safetensors only; no remote code."""
    from transformers import Qwen2VLConfig, Qwen2VLModel, Qwen2VLProcessor
    from transformers.initialization import no_init_weights

    processor = Qwen2VLProcessor.from_pretrained(str(base_dir))
    if not getattr(processor, "chat_template", None):
        raise UserError(f"{base_dir} has no chat template (chat_template.json or tokenizer_config.json's "
                        "chat_template): download the Qwen2-VL-7B-Instruct processor files again")
    reward_id = add_reward_token(processor.tokenizer)
    config = Qwen2VLConfig.from_pretrained(str(base_dir))
    config.text_config.vocab_size = len(processor.tokenizer)  # the package's resize_token_embeddings
    state, head_state, lm_shape = read_checkpoint(checkpoint, torch_dtype(dtype))
    width = config.text_config.hidden_size
    if lm_shape != (len(processor.tokenizer), width):
        raise UserError(f"{checkpoint}: lm_head has shape {lm_shape}, expected {(len(processor.tokenizer), width)} "
                        f"({base_dir} + {REWARD_TOKEN}); is this HPSv3.safetensors for Qwen2-VL-7B-Instruct?")
    with no_init_weights(), default_dtype(torch_dtype(dtype)):  # storage only: the checkpoint fills it
        backbone = Qwen2VLModel(config)
    load_strict(backbone, state, f"{checkpoint} (Qwen2-VL backbone)", assign=True)
    head = rank_head(width)
    load_strict(head, head_state, f"{checkpoint} (HPSv3 rm_head)")
    return finish(backbone, head, processor, template, reward_id, dtype, rotary)
