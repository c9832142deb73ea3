"""The GenEval2 suite: Soft-TIFA GM judged by Qwen3-VL-8B-Instruct (rtdmd_bench/rewards/geneval2.py).

Prompts: GenEval2's 800 lines (`geneval2_data.jsonl`, byte-identical to RTDMD's
dataset/geneval2/test.jsonl), one image per line; each line's own `vqa_list` is asked about its image.
Two forms of the number (`form`), as the two references compute it:

| | "official" (default): GenEval2 evaluation.py | "rtdmd": RTDMD 6c3cb03 (its GenEval2 column) |
|---|---|---|
| judge dtype | bfloat16, the checkpoint's own (no cast) | float16 (`.to(float16)` after loading, RoPE buffers too) |
| per line | gmean of its atoms | the same; an empty vqa_list scores -10 |
| number words | looked up as written | stripped and lower-cased first |
| value | 100 x mean over prompts, in float64 | mean over lines without the -10 entries, of RTDMD's float32 scores (np.mean in float32): a fraction |
| lines | all 800 | RTDMD's inference script: the first 64 (`limit=64`); its training-time eval: all |

On GenEval2's file the forms differ only by dtype and scale (no empty list, lower-case answers,
unique prompts); `dtype` may override the form's precision, and the suite's name then says so.
The official form refuses a file with repeated prompts (GenEval2 maps each prompt to one image).
Extra figures from the same atom scores, scaled like the headline: `soft_tifa_am` (mean of the
per-line arithmetic means, GenEval2's soft_tifa_am), `skill_<skill>` (per-skill atom mean,
soft_tifa_analysis.py's per_skill_analysis) and `atoms_<k>` (per-atomicity GM), each where the
lines carry `skills` / `atom_count`; `atom_scores` lists every line's atom scores (GenEval2's
--output_file). Names: "geneval2", "geneval2[rtdmd]", with "stand-in" (tiny random judge) or a
non-default dtype added in the brackets; results with `limit` are marked partial.

The judge is freed after scoring (`release`), so an evaluation holds one heavy scorer at a time.
Peak GPU memory: 17.5 GB of weights (8.77 B parameters in 16 bits) + ~1 GB at batch_size 1 (see
the reward module).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.progress import progress_bar
from rtdmd_bench.ranges import NonNegativeInt, PositiveInt
from rtdmd_bench.rewards.geneval2 import (
    EMPTY, JUDGE_HUB_ID, Form, GenEval2, ModelSource, image_score, judge_folder, load_vqa_rows,
)
from suites import prompt_sets
from suites.preference import resolve_device, seed_record

FORM_DTYPE: dict[str, str] = {"official": "bfloat16", "rtdmd": "float16"}
"""Each form's judge precision: GenEval2 keeps the checkpoint's bfloat16, RTDMD casts to float16."""
FORM_SCALE: dict[str, float] = {"official": 100.0, "rtdmd": 1.0}
NOTES = {
    "official": "GenEval2 Soft-TIFA GM as facebookresearch/GenEval2 evaluation.py computes it (bfloat16 "
                "Qwen3-VL-8B-Instruct judge, x100), on this environment's transformers classes",
    "rtdmd": "RTDMD's GenEval2 form (Harahan/RTDMD 6c3cb03: float16 judge, -10 lines dropped, a fraction); "
             "not the GenEval2 benchmark's number (x100, bfloat16)",
}
STAND_IN_NOTE = ("STAND-IN: tiny randomly initialised Qwen3-VL judge; these numbers test the code path only "
                 "and are not GenEval2 scores")


def reduce_lines(line_scores: Sequence[float], form: Form) -> tuple[float, int]:
    """(the suite's value, lines dropped) from one score per line. official: 100 * sum / n in
    float64 (the lines' order); rtdmd: drop the -10 entries, np.mean of the rest in float32."""
    if not line_scores:
        raise UserError("geneval2: no lines to score")
    if form == "official":
        return FORM_SCALE["official"] * sum(float(s) for s in line_scores) / len(line_scores), 0
    scores = np.asarray(line_scores, dtype=np.float32)  # RTDMD's scorer returns a float32 tensor
    valid = scores[scores != EMPTY]
    if len(valid) == 0:
        raise UserError("geneval2 (rtdmd form): every line scored -10 (empty vqa_list); nothing to average")
    return float(np.mean(valid)), int(len(scores) - len(valid))


def analyses(atoms: Sequence[Sequence[float]], rows: Sequence[dict[str, Any]], scale: float) -> dict[str, float]:
    """GenEval2's extra figures from the atom scores of the lines that have atoms, x `scale`:
    soft_tifa_am, skill_<s> (atom mean per skill), atoms_<k> (GM per atom count)."""
    kept = [(a, r) for a, r in zip(atoms, rows) if a]
    out = {"soft_tifa_am": scale * sum(sum(a) / len(a) for a, _ in kept) / len(kept)} if kept else {}
    if kept and all("skills" in r for _, r in kept):
        per_skill: dict[str, list[float]] = defaultdict(list)
        for a, r in kept:
            for s, skill in zip(a, r["skills"]):
                per_skill[skill].append(s)
        out.update({f"skill_{k}": scale * sum(v) / len(v) for k, v in sorted(per_skill.items())})
    if kept and all("atom_count" in r for _, r in kept):
        per_count: dict[int, list[float]] = defaultdict(list)
        for a, r in kept:
            per_count[r["atom_count"]].append(image_score(a, "official"))
        out.update({f"atoms_{k}": scale * sum(v) / len(v) for k, v in sorted(per_count.items())})
    return out


class GenEval2Suite:
    """GenEval2: Soft-TIFA GM over 800 compositional prompts, one image each (official or RTDMD's form)."""

    @dataclass
    class Config:
        prompts: str = ""
        """GenEval2 jsonl (prompt + vqa_list per line); empty = the verified download of RTDMD's
        dataset/geneval2/test.jsonl (= GenEval2's geneval2_data.jsonl)."""
        form: Form = "official"
        """"official": GenEval2's evaluation.py (bfloat16 judge, x100); "rtdmd": RTDMD's evaluation of
        its GenEval2 column (float16 judge, fraction, -10 lines dropped). Table in the module docstring."""
        dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
        """Judge precision: auto = the form's (official bfloat16, rtdmd float16); another value is
        named in the suite's name."""
        models: ModelSource = "official"
        """"official": the Qwen3-VL judge below; "stand-in": tiny random judge (CI), "geneval2[stand-in]"."""
        model_id: str = JUDGE_HUB_ID
        """Hugging Face repo of the judge."""
        local_path: str = ""
        """Local folder with the judge's files (else $RTDMD_BENCH_GENEVAL2_PATH, else the hub)."""
        batch_size: PositiveInt = 1
        """Atoms per judge call: 1 = both references' one call per atom; more = left-padded batches
        (float rounding only; ~0.3 GB more GPU memory per extra atom at 1024 px)."""
        limit: NonNegativeInt = 0
        """Use only the first N lines (0 = all 800; RTDMD's inference script: 64); marked partial."""
        seed: int = 42
        """Sampling seed of the protocol (RTDMD: 42; GenEval2 fixes none)."""
        device: str = "auto"
        """Where the judge runs: auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
        progress: bool = True
        """Show a progress bar over the atoms (one judge call each at batch_size 1)."""
        release: bool = True
        """Free the judge after scoring (one heavy scorer in memory at a time); false keeps it cached."""
        stand_in_seed: int = 0
        """Seed of the stand-in judge's random weights (not a sampling seed)."""

    images_per_prompt = 1

    def __init__(self, cfg: "GenEval2Suite.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        if self.cfg.form not in FORM_DTYPE:
            raise UserError(f"suite geneval2: form must be one of {', '.join(FORM_DTYPE)}, got {self.cfg.form!r}")
        self.stand_in = self.cfg.models == "stand-in"
        tags = (["rtdmd"] if self.cfg.form == "rtdmd" else []) + \
               ([self.dtype()] if self.dtype() != FORM_DTYPE[self.cfg.form] else []) + \
               (["stand-in"] if self.stand_in else [])
        self.name = "geneval2" + (f"[{','.join(tags)}]" if tags else "")
        variant = self.cfg.form + ("" if self.dtype() == FORM_DTYPE[self.cfg.form] else f"-{self.dtype()}")
        self.version = f"geneval2/{'stand-in-' if self.stand_in else ''}{variant}-1"
        self.seed = self.cfg.seed
        self.higher_is_better: dict[str, bool] = {"geneval2": True, "soft_tifa_am": True}
        self._rows: list[dict[str, Any]] | None = None

    def dtype(self) -> str:
        return FORM_DTYPE[self.cfg.form] if self.cfg.dtype == "auto" else self.cfg.dtype

    def rows(self) -> list[dict[str, Any]]:
        """The scored lines (validated; the first `limit`), aligned with `prompts()`."""
        if self._rows is None:
            rows = load_vqa_rows(prompt_sets.resolve("geneval2", self.cfg.prompts))
            rows = rows[: self.cfg.limit] if self.cfg.limit > 0 else rows
            prompts = [r["prompt"] for r in rows]
            if self.cfg.form == "official" and len(set(prompts)) != len(prompts):
                raise UserError("suite geneval2 (official form): the prompt file repeats prompts, but GenEval2 "
                                "maps each prompt to one image; use form=rtdmd (one image per line)")
            self._rows = rows
        return self._rows

    def prompts(self) -> list[str]:
        return [r["prompt"] for r in self.rows()]

    def prepare(self) -> None:
        """Before any image is generated: the judge's files (weight shards included) are found, not
        loaded (17.5 GB: it loads when scoring, one heavy scorer at a time)."""
        resolve_device(self.cfg.device)
        if self.cfg.models != "stand-in":
            judge_folder(self.cfg.model_id, self.cfg.local_path)

    def scorer(self) -> GenEval2:
        """The judge as this suite's form sets it (built on call: missing weights raise here)."""
        c = self.cfg
        return GenEval2(GenEval2.Config(model_id=c.model_id, local_path=c.local_path, dtype=self.dtype(), form=c.form,  # type: ignore[arg-type]
                                        batch_size=c.batch_size, models=c.models, stand_in_seed=c.stand_in_seed),
                        lookup=False)

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        rows = self.rows()[: len(prompts)]
        if list(prompts) != [r["prompt"] for r in rows]:
            raise UserError("GenEval2 images must come in the order of the suite's prompts()")
        if images.shape[0] != len(prompts):
            raise UserError(f"GenEval2 takes one image per line: got {images.shape[0]} for {len(prompts)} lines")
        scorer, device = self.scorer(), resolve_device(self.cfg.device)
        try:
            with progress_bar(counts=True, disable=not self.cfg.progress) as bar:
                task = bar.add_task(f"{self.name} judge", total=sum(len(r["vqa_list"]) for r in rows), info="atoms")
                atoms = scorer.atom_scores(images, [r["vqa_list"] for r in rows], device,
                                           lambda n: bar.advance(task, n))
        finally:
            if self.cfg.release:
                scorer.release()
        value, dropped = reduce_lines([image_score(a, self.cfg.form) for a in atoms], self.cfg.form)
        metrics = {"geneval2": value, **analyses(atoms, rows, FORM_SCALE[self.cfg.form])}
        self.higher_is_better = {k: True for k in metrics}
        notes = [STAND_IN_NOTE if self.stand_in else NOTES[self.cfg.form], seed_record(self.seed, ctx).get("seed_note", "")]
        return {
            **metrics, "suite": self.name, "version": self.version, "note": "; ".join(n for n in notes if n),
            "form": self.cfg.form, "scale": FORM_SCALE[self.cfg.form], "dtype": self.dtype(), "device": str(device),
            "judge": {"reward": scorer.name, "model_id": self.cfg.model_id, "local_path": self.cfg.local_path,
                      "batch_size": self.cfg.batch_size, "released": self.cfg.release},
            **{k: v for k, v in seed_record(self.seed, ctx).items() if k != "seed_note"},
            "images_per_prompt": 1, "n_images": len(images), "n_prompts": len(prompts), "lines_dropped": dropped,
            "n_atoms": sum(len(a) for a in atoms), "partial": len(prompts) < prompt_sets.OFFICIAL["geneval2"].lines,
            "atom_scores": atoms,
        }
