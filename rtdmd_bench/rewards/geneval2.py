"""GenEval2's Soft-TIFA score, judged by Qwen3-VL-8B-Instruct (non-differentiable reward).

GenEval2 (facebookresearch/GenEval2 `evaluation.py`, method soft_tifa_gm) asks a vision-language
model one question per atom of a prompt (the prompt's `vqa_list` of [question, answer] pairs) and
reads the answer's probability at the first generated position:
- one call per atom: the user turn [image, question + " Answer in one word."] through the model's
  own chat template (with the generation prompt), then `generate(max_new_tokens=1,
  do_sample=False, output_scores=True, return_dict_in_generate=True)`; `scores[0]` is that
  position's logits, cast to float32 by `generate` before its logits processors (no sampling
  warpers under do_sample=False); softmax over the whole vocabulary, in float32;
- atom score = the sum over the answer variants of p[the variant's first token] (a token shared by
  two variants counts twice, as in the original; " 1" and " one" start with a lone space on Qwen's
  tokenizer): "How many" questions take [a, a.capitalize(), " "+a, " "+a.capitalize(), d, " "+d]
  with d the digit string of the number word (else "other"); all others "Yes", "yes", " yes", " Yes";
  each probability is `.item()`-ed and summed as a Python float;
- image score = geometric mean of its atoms (`scipy.stats.gmean`, one zero atom gives zero).
RTDMD's reward (rtdmd/rewards/geneval2_scorer.py at 6c3cb03) is the same but for three points,
each a switch here: it casts the judge to float16 after loading (`dtype`); an image whose VQA list
is empty scores -10, RTDMD's "no score" sentinel that its means drop (`form`); it strips and
lower-cases the number word before the digit lookup (`form`; GenEval2's answers are lower-case
words, so this changes nothing on its file). Per-prompt means and their scale (fraction or x100)
are the suite's (suites/geneval2.py). Images reach the judge as uint8 PIL images rounded as RTDMD
rounds (`pixels.to_uint8`); both originals pass a PNG of them, which is lossless.

Peak GPU memory, from the parameter count: Qwen3-VL-8B-Instruct has 8,767,123,696 parameters
(counted on the meta device from its architecture; vision tower 0.576 B, lm_head 0.622 B), so
17.5 GB (16.3 GiB) of weights in float16 or bfloat16 (35 GB in float32). One atom at 1024 px is
~1,060 tokens (1,024 visual): KV cache 36 layers x 2 x 8 KV heads x 128 x 2 bytes = 0.15 MB per
token, ~0.16 GB, plus the vision tower on 4,096 patches and MLP transients. Estimated peak
~18.5 GB at batch_size 1, ~21 GB at batch_size 8 (estimates; measure on a GPU).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from PIL import Image
from scipy.stats import gmean
from torch import Tensor, nn

from rtdmd_bench import prompt_files
from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.rewards.loading import WeightSpec, cached_model, folder_of, release_models, resolve_files
from rtdmd_bench.rewards.pixels import to_uint8
from rtdmd_bench.weights import torch_dtype

Form = Literal["rtdmd", "official"]
ModelSource = Literal["official", "stand-in"]

EMPTY = -10.0
"""RTDMD's score of an image whose VQA list is empty ("no score"); its means drop it."""
QUESTION_SUFFIX = " Answer in one word."
YES_VARIANTS = ("Yes", "yes", " yes", " Yes")
NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9", "ten": "10"}
JUDGE_HUB_ID = "Qwen/Qwen3-VL-8B-Instruct"
JUDGE_ENV = "RTDMD_BENCH_GENEVAL2_PATH"
DATA_ENV = "RTDMD_BENCH_GENEVAL2_DATA"
# The hub repo's files; "a|b": a transformers-5 save_pretrained folder has the second name.
JUDGE_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json|model.safetensors",
               "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json|processor_config.json",
               "video_preprocessor_config.json|processor_config.json", "chat_template.json|chat_template.jinja")


# ---------------------------------------------------------------------------------------
# The read-out: pure functions.

def digit_string(answer: str, form: Form) -> str:
    """The digit string of a number word, "other" if none; RTDMD strips and lower-cases first."""
    return NUMBER_WORDS.get(answer.strip().lower() if form == "rtdmd" else answer, "other")


def answer_variants(question: str, answer: str, form: Form) -> tuple[str, ...]:
    """The strings whose first tokens count as the right answer (GenEval2's lists, in its order)."""
    if question.startswith("How many"):
        d = digit_string(answer, form)
        return (answer, answer.capitalize(), " " + answer, " " + answer.capitalize(), d, " " + d)
    return YES_VARIANTS


def atom_probability(scores: Tensor, token_ids: Sequence[int]) -> float:
    """scores: (V,) float32 logits of the first generated position -> sum_i softmax(scores)[id_i]."""
    probs = torch.softmax(scores.float(), dim=-1)  # (V,)
    return sum(float(probs[i]) for i in token_ids)


def image_score(atom_scores: Sequence[float], form: Form) -> float:
    """Geometric mean of an image's atom scores; an empty list is RTDMD's -10 (GenEval2 divides by
    zero there: refused)."""
    if not atom_scores:
        if form == "rtdmd":
            return EMPTY
        raise UserError("GenEval2 cannot score a prompt with an empty vqa_list (its soft_tifa divides by "
                        "zero); RTDMD's form scores it -10 and drops it (form=rtdmd)")
    return float(gmean([float(s) for s in atom_scores]))


# ---------------------------------------------------------------------------------------
# VQA data: GenEval2's jsonl rows ({"prompt", "vqa_list", "skills"?, "atom_count"?} per line).

def check_row(row: Any, where: str) -> dict[str, Any]:
    """A validated GenEval2 row: a non-empty 'prompt' string and a 'vqa_list' of [question, answer]
    string pairs (empty allowed: RTDMD scores it -10); 'skills' (one string per pair) and
    'atom_count' (an integer) are optional."""
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise UserError(f"{where}: a GenEval2 line needs a non-empty 'prompt' string")
    vqa = row.get("vqa_list")
    if not isinstance(vqa, list) or not all(
            isinstance(qa, list) and len(qa) == 2 and all(isinstance(s, str) for s in qa) for qa in vqa):
        raise UserError(f"{where}: 'vqa_list' must be a list of [question, answer] string pairs, got {vqa!r:.120}")
    skills = row.get("skills")
    if skills is not None and (not isinstance(skills, list) or len(skills) != len(vqa)
                               or not all(isinstance(s, str) for s in skills)):
        raise UserError(f"{where}: 'skills' must be a list of {len(vqa)} strings, one per vqa_list pair")
    if "atom_count" in row and not (isinstance(row["atom_count"], int) and not isinstance(row["atom_count"], bool)):
        raise UserError(f"{where}: 'atom_count' must be an integer, got {row['atom_count']!r}")
    return row


def load_vqa_rows(path: Path) -> list[dict[str, Any]]:
    """Every line of a GenEval2-style jsonl file, validated (a malformed line fails loudly)."""
    rows = []
    for n, line in enumerate(prompt_files.read_text(Path(path)).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: not JSON ({err}); expected GenEval2 lines "
                            '{"prompt": ..., "vqa_list": [[question, answer], ...]}') from err
        rows.append(check_row(row, f"{path}:{n}"))
    if not rows:
        raise UserError(f"{path} holds no GenEval2 lines")
    return rows


def vqa_lookup(rows: Sequence[dict[str, Any]], where: str) -> dict[str, list[list[str]]]:
    """prompt -> vqa_list, as RTDMD's lookup: a repeated prompt must repeat its list."""
    out: dict[str, list[list[str]]] = {}
    for row in rows:
        if out.setdefault(row["prompt"], row["vqa_list"]) != row["vqa_list"]:
            raise UserError(f"{where}: prompt {row['prompt']!r} appears with two different vqa_lists")
    return out


# ---------------------------------------------------------------------------------------
# The judge: Qwen3VLForConditionalGeneration + Qwen3VLProcessor.

class Judge(nn.Module):
    """A loaded judge (its processor holds the tokenizer, image processor and chat template)."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__()
        self.model, self.processor = model.eval().requires_grad_(False), processor

    def first_token(self, text: str) -> int:
        """Id of the first token of `text` (RTDMD: encode without special tokens; GenEval2's plain
        encode is the same on Qwen's tokenizer, which adds none)."""
        ids = self.processor.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"answer variant {text!r} has no tokens")
        return int(ids[0])

    @torch.no_grad()
    def next_token_scores(self, images: Sequence[Image.Image], questions: Sequence[str]) -> Tensor:
        """(n, V) float32 scores of the first generated token, one row per (image, question). n = 1 is
        exactly GenEval2's call; n > 1 batches with left padding (same values up to float rounding)."""
        chats = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}]
                 for im, q in zip(images, questions)]
        batch = {} if len(chats) == 1 else {"processor_kwargs": {"padding": True, "padding_side": "left"}}
        inputs = self.processor.apply_chat_template(chats[0] if len(chats) == 1 else chats, tokenize=True,
                                                    add_generation_prompt=True, return_dict=True,
                                                    return_tensors="pt", **batch)
        inputs = inputs.to(next(self.model.parameters()).device)
        out = self.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)
        return out.scores[0]


def set_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """The judge's precision as each original sets it. GenEval2 loads with dtype="auto" (the
    checkpoint's bfloat16) and never casts; RTDMD loads the same and then calls .to(float16), which
    also casts the float32 RoPE buffers (inv_freq) to float16. So: a dtype equal to the loaded one
    is left alone, another is applied with .to (parameters and buffers)."""
    target = torch_dtype(dtype)
    return model if next(model.parameters()).dtype == target else model.to(target)


def judge_folder(model_id: str, local_path: str) -> Path:
    """The folder of the judge's files (hub snapshot or local), weight shards included; ONE
    UserError per stage names everything missing (the shards are known once the index is read)."""
    spec = WeightSpec("geneval2", f"Qwen3-VL judge ({model_id})", model_id, JUDGE_FILES, JUDGE_ENV, "local_path")
    (files,) = resolve_files([(spec, local_path, model_id)])
    weights = files["model.safetensors.index.json"]
    if weights.name.endswith(".index.json"):
        shards = tuple(sorted(set(json.loads(weights.read_text())["weight_map"].values())))
        shard_spec = WeightSpec("geneval2", f"Qwen3-VL judge weight shards ({model_id})", model_id, shards,
                                JUDGE_ENV, "local_path")
        (more,) = resolve_files([(shard_spec, local_path, model_id)])
        files = {**files, **more}
    return folder_of(files)


def load_judge(folder: Path, dtype: str) -> Judge:
    """The judge from a resolved local folder (no hub access here)."""
    try:
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    except ImportError as err:
        raise UserError("the geneval2 reward needs transformers>=4.57 (Qwen3-VL classes)") from err
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype="auto")
    return Judge(set_dtype(model, dtype), Qwen3VLProcessor.from_pretrained(str(folder)))


@dataclass(frozen=True)
class JudgeKey:
    """What determines the loaded judge (the per-process cache key)."""

    models: str
    model_id: str
    local_path: str
    dtype: str
    stand_in_seed: int


JUDGE_KIND = "geneval2-judge"


def build_judge(key: JudgeKey) -> Judge:
    if key.models == "stand-in":
        from rtdmd_bench.rewards.tiny_vlm import tiny_qwen3vl

        model, processor = tiny_qwen3vl(key.stand_in_seed)
        return Judge(set_dtype(model, key.dtype), processor)
    return load_judge(judge_folder(key.model_id, key.local_path), key.dtype)


# ---------------------------------------------------------------------------------------
# The reward.

class GenEval2:
    """GenEval2 Soft-TIFA GM per image (Qwen3-VL-8B-Instruct judge), RTDMD's reward by default."""

    @dataclass
    class Config:
        model_id: str = JUDGE_HUB_ID
        """Hugging Face repo of the judge (GenEval2 and RTDMD: Qwen/Qwen3-VL-8B-Instruct)."""
        local_path: str = ""
        """Local folder with the judge's files (else $RTDMD_BENCH_GENEVAL2_PATH, else the hub)."""
        dtype: Literal["float16", "bfloat16", "float32"] = "float16"
        """Judge precision: float16 = RTDMD (loaded as stored, then .to(float16), buffers included);
        bfloat16 = the official GenEval2 benchmark (the checkpoint's own dtype, no cast)."""
        form: Form = "rtdmd"
        """"rtdmd": an empty vqa_list scores -10 and number words are stripped/lower-cased before the
        digit lookup (RTDMD's reward); "official": GenEval2's evaluation.py (an empty list is an error)."""
        data_path: str = ""
        """GenEval2-style jsonl mapping each scored prompt to its vqa_list (RTDMD's reward looks prompts
        up in rtdmd:geneval2/merged.jsonl, train + test), else $RTDMD_BENCH_GENEVAL2_DATA. Suites pass
        their lines' lists directly and need none."""
        batch_size: PositiveInt = 1
        """Atoms per generate call: 1 = GenEval2's and RTDMD's one call per atom (exact); more batches
        with left padding (float rounding only; see the module docstring for memory)."""
        models: ModelSource = "official"
        """"official": the judge above; "stand-in": a tiny random Qwen3-VL (tests), never reported as GenEval2."""
        stand_in_seed: int = 0
        """Seed of the stand-in's random weights."""

    name = "geneval2"
    differentiable = False

    def __init__(self, cfg: "GenEval2.Config | None" = None, lookup: bool = True) -> None:
        """`lookup=False` skips the prompt -> vqa_list file (suites give each line's list)."""
        self.cfg = cfg or self.Config()
        if self.cfg.batch_size < 1:
            raise UserError(f"reward geneval2: batch_size must be >= 1, got {self.cfg.batch_size}")
        self.name = "tiny-geneval2[stand-in]" if self.cfg.models == "stand-in" else "geneval2"
        self.lookup = self._load_lookup() if lookup else None
        self.judge: Judge | None = self._load()  # now: missing weights fail at construction

    def key(self) -> JudgeKey:
        c = self.cfg
        return JudgeKey(c.models, c.model_id, c.local_path, c.dtype, c.stand_in_seed)

    def _load(self) -> Judge:
        key = self.key()
        return cached_model(JUDGE_KIND, key, lambda: build_judge(key))

    def release(self) -> bool:
        """Free the judge (this object and the process cache drop it); the next call reloads."""
        self.judge = None
        return release_models(JUDGE_KIND, self.key()) > 0

    def _load_lookup(self) -> dict[str, list[list[str]]]:
        source = self.cfg.data_path or os.environ.get(DATA_ENV, "")
        if not source:
            raise UserError(f"reward {self.name!r} needs each prompt's vqa_list: pass --set reward."
                            f"{self.name.split('[')[0]}.data_path=FILE (GenEval2-style jsonl, e.g. "
                            f"rtdmd:geneval2/merged.jsonl, RTDMD's) or set {DATA_ENV}=FILE")
        path = prompt_files.resolve_source(source, f"--set reward.{self.name.split('[')[0]}.data_path")
        return vqa_lookup(load_vqa_rows(path), str(path))

    @torch.no_grad()
    def atom_scores(self, images: Tensor, vqa_lists: Sequence[Sequence[Sequence[str]]],
                    device: torch.device | None = None, advance: Callable[[int], None] | None = None
                    ) -> list[list[float]]:
        """Per image, the soft score of each of its atoms; images (B, 3, H, W) in [0, 1], judged on
        `device` (default: the images'), one image at a time turned into uint8 PIL (800 images at
        1024 px never sit on the GPU at once). `advance(n)` is told of every n atoms done."""
        if images.ndim != 4 or images.shape[1] != 3 or len(vqa_lists) != images.shape[0]:
            raise ValueError(f"geneval2 takes images (B, 3, H, W) and one vqa_list each; got "
                             f"{tuple(images.shape)} and {len(vqa_lists)} lists")
        if self.judge is None:  # released: load again
            self.judge = self._load()
        judge = self.judge
        device = images.device if device is None else device
        if next(judge.parameters()).device != device:
            judge.to(device)
        atoms = [(i, q, a) for i, vqa in enumerate(vqa_lists) for q, a in vqa]
        found: list[float] = []
        for start in range(0, len(atoms), self.cfg.batch_size):
            chunk = atoms[start:start + self.cfg.batch_size]
            pil = {i: Image.fromarray(to_uint8(images[i:i + 1])[0].permute(1, 2, 0).cpu().numpy())
                   for i in sorted({i for i, _, _ in chunk})}
            scores = judge.next_token_scores([pil[i] for i, _, _ in chunk], [q + QUESTION_SUFFIX for _, q, _ in chunk])
            if torch.isnan(scores).any() or torch.isposinf(scores).any():  # float16 overflow: fail, never average NaN
                raise UserError(f"the geneval2 judge produced NaN/inf logits in {self.cfg.dtype} (Qwen models can "
                                f"overflow in float16, RTDMD's dtype); rerun with dtype=bfloat16 (GenEval2's)")
            for row, (_, q, a) in zip(scores, chunk):
                ids = [judge.first_token(v) for v in answer_variants(q, a, self.cfg.form)]
                found.append(atom_probability(row, ids))
            if advance is not None:
                advance(len(chunk))
        out: list[list[float]] = [[] for _ in vqa_lists]
        for (i, _, _), p in zip(atoms, found):
            out[i].append(p)
        return out

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        if self.lookup is None:
            raise UserError("this geneval2 reward was built without a prompt lookup (lookup=False)")
        missing = [p for p in prompts if p not in self.lookup]
        if missing:
            raise UserError(f"geneval2 has no vqa_list for prompt {missing[0]!r} ({len(missing)} missing): "
                            f"score prompts of data_path ({len(self.lookup)} prompts)")
        atoms = self.atom_scores(images, [self.lookup[p] for p in prompts])
        return torch.tensor([image_score(a, self.cfg.form) for a in atoms], dtype=torch.float32, device=images.device)


class TinyGenEval2(GenEval2):
    """Stand-in for `geneval2`: a tiny random Qwen3-VL judge, same read-out."""

    @dataclass
    class Config(GenEval2.Config):
        models: ModelSource = "stand-in"
        """The tiny random judge (the point of this stand-in)."""

    name = "tiny-geneval2[stand-in]"
