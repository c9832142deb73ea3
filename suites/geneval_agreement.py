"""How far the suite's transformers detector is from GenEval's own scorer, on the same images.

`rtdmd-bench geneval-agreement --run RUN` (the run's GenEval samples, generated or read from
its cache exactly as `rtdmd-bench eval --suite geneval --run RUN` does) or `--images DIR` (a
folder in GenEval's reference layout `<idx:05d>/metadata.jsonl` + `samples/NNNN.png`) scores
every image twice: with the GenEval suite's in-process scorer (transformers Mask2Former, or the
stand-ins under `--set suite.models=stand-in`) and with the official evaluator
(suites/geneval_official.py; `--set suite.official.python=... checkout=... detector=...` or
the RTDMD_BENCH_GENEVAL_* variables). Other `--set suite.*` fields apply as in `eval`
(`suite.limit=N` keeps the first N prompts, also of an image folder); `suite.scorer` is not
accepted: both scorers always run. This module is the study (`study`, kappa, the output format);
opening the run, generating its samples and writing the file is the harness's part,
rtdmd_bench/agreement.py.

Output (printed as a table, written as JSON to --out, default RUN/eval/geneval-agreement.json
or DIR/geneval-agreement.json):
  study, format            "geneval-agreement", 1
  source                   {"run": path} or {"images": path}
  images, prompts, images_per_prompt
  scorers.transformers     {suite, version, note, metrics}   metrics = the suite's aggregation
  scorers.official         {suite, version, note, metrics, official}  (official = provenance and
                           the figures summary_scores.py printed)
  per_tag.<tag>, all_images   one agreement row each (all_images pools every image):
      images               images with this tag
      transformers_accuracy, official_accuracy   fraction judged correct by each
      agreement            fraction of images with the same verdict
      kappa                Cohen's kappa of the two verdicts, (p_o - p_e) / (1 - p_e) with
                           p_e = p_T p_O + (1 - p_T)(1 - p_O); null when undefined (both scorers
                           gave every image the same single verdict, p_e = 1)
      both_correct, transformers_only, official_only, both_wrong   counts
  difference               transformers - official for every figure of the aggregation
                           (per tag, "overall" = GenEval score, and the prompt-level figures)
  disagreements            every image judged differently: image, prompt_index, sample, tag,
                           prompt, transformers, official (verdicts), transformers_reason,
                           official_reason
  versions, git_commit
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import TAGS, aggregate

FORMAT = 1
COUNTS = ("both_correct", "transformers_only", "official_only", "both_wrong")


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters over the same items; None when p_e = 1 (both gave one
    and the same verdict to every item). Exact integer counts, so p_e = 1 is detected exactly."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError(f"kappa needs two equally long, non-empty verdict lists (got {len(a)} and {len(b)})")
    agree = sum(bool(x) == bool(y) for x, y in zip(a, b))
    a1, b1 = sum(map(bool, a)), sum(map(bool, b))
    chance = a1 * b1 + (n - a1) * (n - b1)  # n^2 p_e
    if chance == n * n:
        return None
    return (n * agree - chance) / (n * n - chance)


def agreement_row(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """One row of the study: a = transformers verdicts, b = official verdicts (same images)."""
    n = len(a)
    pairs = list(zip(map(bool, a), map(bool, b)))
    counts = dict(zip(COUNTS, (pairs.count((True, True)), pairs.count((True, False)),
                               pairs.count((False, True)), pairs.count((False, False)))))
    return {"images": n, "transformers_accuracy": sum(map(bool, a)) / n, "official_accuracy": sum(map(bool, b)) / n,
            "agreement": (counts["both_correct"] + counts["both_wrong"]) / n, "kappa": cohen_kappa(a, b), **counts}


def compare(tags: Sequence[str], a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Per-tag rows (tags in GenEval's order) and the row of all images pooled."""
    order = [t for t in TAGS if t in tags] + sorted(set(tags) - set(TAGS))
    per_tag = {t: agreement_row([x for x, s in zip(a, tags) if s == t], [y for y, s in zip(b, tags) if s == t])
               for t in order}
    return {"per_tag": per_tag, "all_images": agreement_row(a, b)}


def study(images: Tensor, rows: Sequence[dict[str, Any]], suite: Any, official: Any) -> dict[str, Any]:
    """Score images (P * k, 3, H, W) in [0, 1], prompt-major, for the P metadata rows with the
    suite's in-process scorer and with the official one; the study's dict (module docstring)."""
    k = images.shape[0] // max(len(rows), 1)
    if k * len(rows) != images.shape[0] or k == 0:
        raise UserError(f"{images.shape[0]} images do not split evenly over {len(rows)} prompts")
    per_image = [rows[i // k] for i in range(images.shape[0])]
    tags = [r["tag"] for r in per_image]
    official_result = official.evaluate(images, rows)  # first: a broken environment fails before models load
    b = [c for c, _ in official_result.verdicts]
    judged = suite.judge(images, per_image)
    a = [c for c, _ in judged]
    keys = [json.dumps(r) for r in per_image]  # prompts grouped by metadata, as summary_scores.py
    metrics_a, metrics_b = aggregate(tags, a, keys), aggregate(tags, b, keys)
    return {
        "study": "geneval-agreement", "format": FORMAT,
        "images": len(per_image), "prompts": len(rows), "images_per_prompt": k,
        "scorers": {
            "transformers": {"suite": suite.name, "version": suite.version, "note": _note(suite), "metrics": metrics_a},
            "official": {"suite": official.name, "version": official.version, "note": official.note, "metrics": metrics_b,
                         "official": {**official.provenance(), "summary": official_result.figures}},
        },
        **compare(tags, a, b),
        "difference": {key: metrics_a[key] - metrics_b[key] for key in metrics_a if key in metrics_b},
        "disagreements": [
            {"image": i, "prompt_index": i // k, "sample": i % k, "tag": tags[i], "prompt": per_image[i]["prompt"],
             "transformers": a[i], "official": b[i], "transformers_reason": judged[i][1],
             "official_reason": official_result.verdicts[i][1]}
            for i in range(len(a)) if a[i] != b[i]],
    }


def folder_samples(folder: Path, limit: int = 0) -> tuple[Tensor, list[dict[str, Any]]]:
    """Images and metadata rows of a folder in GenEval's layout; limit > 0 keeps the first prompts."""
    from suites.geneval import read_official_layout

    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder")
    pixels, rows = read_official_layout(folder)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"tag", "prompt", "include"} <= set(row):
            raise UserError(f"prompt folder {i} of {folder}: metadata.jsonl is not a GenEval metadata line "
                            "(needs tag, prompt and include, as in evaluation_metadata.jsonl)")
    if limit > 0:
        k = pixels.shape[0] // len(rows)
        pixels, rows = pixels[: limit * k], rows[:limit]
    return pixels, rows


def format_table(result: dict[str, Any]) -> str:
    """The study as plain text: one line per tag, then all images, then the figure differences."""
    t, o = result["scorers"]["transformers"], result["scorers"]["official"]
    rows = [[name, str(r["images"]), f"{r['transformers_accuracy']:.4f}", f"{r['official_accuracy']:.4f}",
             f"{r['agreement']:.4f}", "undef." if r["kappa"] is None else f"{r['kappa']:.4f}",
             *(str(r[c]) for c in COUNTS)]
            for name, r in [*result["per_tag"].items(), ("all images", result["all_images"])]]
    figures = [[key, f"{t['metrics'][key]:.4f}", f"{o['metrics'][key]:.4f}", f"{diff:+.4f}"]
               for key, diff in result["difference"].items()]
    return "\n".join([
        f"GenEval agreement on {result['images']} images ({result['prompts']} prompts x {result['images_per_prompt']})",
        f"  T = {t['suite']} ({t['version']})", f"  O = {o['suite']} ({o['version']})", "",
        *_columns(["tag", "images", "T acc", "O acc", "agree", "kappa", "both ok", "T only", "O only", "both bad"], rows),
        "", *_columns(["figure", "T", "O", "T - O"], figures)])


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned text lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [head, *rows]]


def _note(suite: Any) -> str:
    from suites import geneval

    return geneval.STAND_IN_NOTE if suite.stand_in else geneval.NOTE
