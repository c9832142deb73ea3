"""GenEval's own scorer (djghosh13/geneval) run in an environment the user names.

`--set suite.scorer=official` makes the GenEval suite score its images with the official code
instead of the transformers detector: the images are written in GenEval's reference layout to a
temporary folder, `evaluation/evaluate_images.py IMAGEDIR --outfile results.jsonl --model-path
DETECTOR [--model-config CONFIG]` runs under the user's python from the user's checkout, then
`evaluation/summary_scores.py results.jsonl`. The per-image `correct`/`reason` of results.jsonl
become the suite's verdicts and go through the suite's own aggregation; the figures the official
summary prints (% correct images, % correct prompts, overall) are checked against the verdicts.

Three locations are needed; each comes from a `suite.official.*` field or, when that is empty,
from an environment variable:
  python     RTDMD_BENCH_GENEVAL_PYTHON    the environment's python (mmdet 2.x, mmcv-full,
                                           open_clip, clip_benchmark, pandas; evaluate_images.py
                                           asserts a CUDA GPU)
  checkout   RTDMD_BENCH_GENEVAL_DIR       a clone of djghosh13/geneval
  detector   RTDMD_BENCH_GENEVAL_DETECTOR  the folder filled by its evaluation/download_models.sh
Results are named "geneval[official]", versioned "geneval/official-mmdet-1" (with
"+unverified-checkpoint" when the checkpoint's sha256 is not the published file's), and never
share a name or version with the transformers detector's "geneval".
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import aggregate
from rtdmd_bench.prompt_files import sha256_of

NAME = "geneval[official]"
VERSION = "geneval/official-mmdet-1"
UNVERIFIED = "+unverified-checkpoint"
ENV = {"python": "RTDMD_BENCH_GENEVAL_PYTHON", "checkout": "RTDMD_BENCH_GENEVAL_DIR",
       "detector": "RTDMD_BENCH_GENEVAL_DETECTOR"}
# evaluate_images.py loads <model-path>/<model>.pth with this default model name; download_models.sh
# saves the published OpenMMLab file ..._20220504_001756-743b7d99.pth under it. OpenMMLab names a
# published file by the first 8 hex digits of its sha256.
CHECKPOINT = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
CHECKPOINT_SHA256_PREFIX = "743b7d99"
EVALUATE = Path("evaluation") / "evaluate_images.py"
SUMMARY = Path("evaluation") / "summary_scores.py"
TAIL_LINES = 20
HOW = {
    "python": "the python of an environment set up as in GenEval's README (conda env create -f environment.yml, "
              "then mmdetection 2.x with pip install -e .)",
    "checkout": "a clone of https://github.com/djghosh13/geneval",
    "detector": f"a folder filled by `evaluation/download_models.sh DIR` of the GenEval checkout (it holds {CHECKPOINT})",
}


class OfficialScorer:
    """Runs GenEval's evaluate_images.py + summary_scores.py on images; checks its three
    locations when built, so a misconfiguration fails before any image is generated."""

    @dataclass
    class Config:
        python: str = ""
        """Python executable of the environment that runs GenEval's evaluator; empty = $RTDMD_BENCH_GENEVAL_PYTHON."""
        checkout: str = ""
        """Clone of djghosh13/geneval (has evaluation/evaluate_images.py); empty = $RTDMD_BENCH_GENEVAL_DIR."""
        detector: str = ""
        """Folder from the checkout's evaluation/download_models.sh (holds mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth);
        empty = $RTDMD_BENCH_GENEVAL_DETECTOR."""
        model_config: str = ""
        """mmdet config file passed as --model-config; empty = evaluate_images.py's default (mmdet 2.x's
        configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py beside an editable install)."""

    def __init__(self, cfg: "OfficialScorer.Config", environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        given = {f: getattr(cfg, f) or environ.get(ENV[f], "") for f in ENV}
        for f, value in given.items():
            if not value:
                raise UserError(f"GenEval's official scorer needs the {f}: set --set suite.official.{f}=PATH or the "
                                f"environment variable {ENV[f]} to {HOW[f]}")
        self.python = _executable(given["python"])
        self.checkout = _folder(given["checkout"], "checkout")
        for script in (EVALUATE, SUMMARY):
            if not (self.checkout / script).is_file():
                raise UserError(f"{self.checkout} has no {script}: suite.official.checkout / {ENV['checkout']} "
                                f"must be {HOW['checkout']}")
        self.detector = _folder(given["detector"], "detector")
        if not (self.detector / CHECKPOINT).is_file():
            raise UserError(f"{self.detector} has no {CHECKPOINT}: suite.official.detector / {ENV['detector']} "
                            f"must be {HOW['detector']}")
        self.model_config = cfg.model_config
        if self.model_config and not Path(self.model_config).is_file():
            raise UserError(f"suite.official.model_config={self.model_config!r} is not a file")
        self.checkpoint_sha256 = sha256_of(self.detector / CHECKPOINT)
        self.verified = self.checkpoint_sha256.startswith(CHECKPOINT_SHA256_PREFIX)
        self.name = NAME
        self.version = VERSION + ("" if self.verified else UNVERIFIED)
        self.note = ("GenEval's own evaluator (djghosh13/geneval evaluation/evaluate_images.py and summary_scores.py: "
                     "mmdet Mask2Former Swin-S, OpenAI CLIP ViT-L/14) run by " + str(self.python))
        if not self.verified:
            self.note += (f"; the detector checkpoint's sha256 {self.checkpoint_sha256[:16]}... is not the published "
                          f"file's ({CHECKPOINT_SHA256_PREFIX}...), so these are not official GenEval numbers")

    def evaluate_command(self, imagedir: Path, outfile: Path) -> list[str]:
        cmd = [self.python, str(self.checkout / EVALUATE), str(imagedir), "--outfile", str(outfile),
               "--model-path", str(self.detector)]
        return cmd + (["--model-config", self.model_config] if self.model_config else [])

    def summary_command(self, outfile: Path) -> list[str]:
        return [self.python, str(self.checkout / SUMMARY), str(outfile)]

    def evaluate(self, images: Tensor, rows: Sequence[dict[str, Any]]) -> "OfficialResult":
        """Official verdicts for images (P * k, 3, H, W) in [0, 1], prompt-major, with the P
        prompts' metadata rows. Everything lives in a temporary folder removed on return or error."""
        from suites.geneval import write_official_layout  # (suites.geneval imports this module)

        k = images.shape[0] // max(len(rows), 1)
        with tempfile.TemporaryDirectory(prefix="geneval-official-") as tmp:
            imagedir = write_official_layout(images, rows, Path(tmp) / "images")
            outfile = Path(tmp) / "results.jsonl"
            run_process(self.evaluate_command(imagedir, outfile), self.checkout)
            verdicts = parse_results(outfile, rows, k, imagedir)
            summary = run_process(self.summary_command(outfile), self.checkout)
        result = OfficialResult(verdicts, summary, parse_summary(summary))
        check_summary(result, rows, k)
        return result

    def provenance(self) -> dict[str, Any]:
        """Where the numbers come from (recorded in every result)."""
        return {"python": self.python, "checkout": str(self.checkout), "checkout_commit": _git_commit(self.checkout),
                "detector": str(self.detector / CHECKPOINT), "checkpoint_sha256": self.checkpoint_sha256,
                "checkpoint_verified": self.verified, "model_config": self.model_config or None}


@dataclass
class OfficialResult:
    verdicts: list[tuple[bool, str]]
    """(correct, reason) per image, prompt-major, as results.jsonl says."""
    summary: str
    """What summary_scores.py printed."""
    figures: dict[str, float]
    """correct_images, correct_prompts (fractions) and overall, parsed from the summary."""


def run_process(cmd: list[str], cwd: Path) -> str:
    """Run one official script; its stdout, or a UserError with the command and stderr's tail."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"could not start GenEval's official evaluator ({err}):\n  $ {shlex.join(cmd)}\n"
                        f"suite.official.python / {ENV['python']} must be an executable python") from err
    if proc.returncode != 0:
        stream, lines = "stderr", proc.stderr.splitlines()
        if not lines:
            stream, lines = "stdout (stderr was empty)", proc.stdout.splitlines()
        tail = "\n".join("  | " + line for line in lines[-TAIL_LINES:])
        raise UserError(f"GenEval's official evaluator failed with exit status {proc.returncode}; nothing was written.\n"
                        f"  $ {shlex.join(cmd)}\nlast {min(len(lines), TAIL_LINES)} lines of its {stream}:\n{tail}\n"
                        f"The environment must run GenEval's evaluator: mmdet 2.x, mmcv-full, open_clip, clip_benchmark, "
                        f"pandas, and a CUDA GPU (evaluate_images.py asserts one).")
    return proc.stdout


def parse_results(path: Path, rows: Sequence[dict[str, Any]], k: int, imagedir: Path) -> list[tuple[bool, str]]:
    """results.jsonl (one JSON object per image: filename, tag, prompt, correct, reason, metadata,
    details; in os.listdir order) -> (correct, reason) per image, prompt-major. Every image of
    the layout must appear exactly once, with its prompt."""
    if not path.is_file():
        raise UserError(f"GenEval's official evaluator exited normally but wrote no {path.name}")
    found: dict[int, tuple[bool, str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name = Path(rec["filename"])
            p, j = int(name.parent.parent.name), int(re.fullmatch(r"(\d+)\.png", name.name).group(1))
            correct, reason, prompt = rec["correct"], rec.get("reason") or "", rec["prompt"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{path.name} line {n} is not an official GenEval result ({type(err).__name__}: {err}): "
                            f"{line[:200]}") from None
        if not isinstance(correct, bool) or not (0 <= p < len(rows) and 0 <= j < k):
            raise UserError(f"{path.name} line {n}: unexpected image or verdict: {line[:200]}")
        if prompt != rows[p]["prompt"] or name.parent.parent.parent != imagedir:
            raise UserError(f"{path.name} line {n}: {rec['filename']} is not an image of prompt {rows[p]['prompt']!r}")
        if p * k + j in found:
            raise UserError(f"{path.name} lists {rec['filename']} twice")
        found[p * k + j] = (correct, reason)
    missing = [i for i in range(len(rows) * k) if i not in found]
    if missing:
        raise UserError(f"{path.name} has no result for {len(missing)} of {len(rows) * k} images "
                        f"(first: prompt {missing[0] // k}, sample {missing[0] % k})")
    return [found[i] for i in range(len(rows) * k)]


SUMMARY_LINES = {"correct_images": r"% correct images: ([0-9.]+)%", "correct_prompts": r"% correct prompts: ([0-9.]+)%",
                 "overall": r"Overall score \(avg\. over tasks\): ([0-9.]+)"}


def parse_summary(text: str) -> dict[str, float]:
    """The figures summary_scores.py prints, as fractions."""
    out = {}
    for key, pattern in SUMMARY_LINES.items():
        m = re.search(pattern, text)
        if m is None:
            raise UserError(f"summary_scores.py printed no line matching {pattern!r}; it printed:\n{text[-2000:]}")
        out[key] = float(m.group(1)) / (100 if key != "overall" else 1)
    return out


def check_summary(result: OfficialResult, rows: Sequence[dict[str, Any]], k: int) -> None:
    """The summary's figures must follow from the per-image verdicts as summary_scores.py
    defines them (prompts grouped by their metadata JSON, a prompt correct when any image is;
    overall = mean over tags of image accuracy), to the printed precision."""
    ok = [c for c, _ in result.verdicts]
    by_meta: dict[str, bool] = {}
    by_tag: dict[str, list[bool]] = {}
    for i, c in enumerate(ok):
        row = rows[i // k]
        key = json.dumps(row)
        by_meta[key] = by_meta.get(key, False) or c
        by_tag.setdefault(row["tag"], []).append(c)
    expected = {"correct_images": sum(ok) / len(ok), "correct_prompts": sum(by_meta.values()) / len(by_meta),
                "overall": sum(sum(v) / len(v) for v in by_tag.values()) / len(by_tag)}
    tolerance = {"correct_images": 5e-5, "correct_prompts": 5e-5, "overall": 5e-6}  # printed as .2% and .5f
    for key, value in expected.items():
        if abs(result.figures[key] - value) > tolerance[key] + 1e-12:
            raise UserError(f"summary_scores.py says {key} = {result.figures[key]} but its results.jsonl gives {value:.6f}: "
                            f"is the GenEval checkout modified?")


def score_official(scorer: OfficialScorer, images: Tensor, rows: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    """The GenEval suite's result dict (same keys as the transformers scorer's) from the official
    verdicts; rows: the metadata of the P prompts, images (P * k, 3, H, W) prompt-major."""
    from suites import prompt_sets

    result = scorer.evaluate(images, rows)
    per_image = [rows[i // k] for i in range(len(result.verdicts))]
    metrics = aggregate([r["tag"] for r in per_image], [c for c, _ in result.verdicts],
                        [json.dumps(r) for r in per_image])  # prompts grouped by metadata, as summary_scores.py
    return {
        **metrics,
        "suite": scorer.name,
        "version": scorer.version,
        "note": scorer.note,
        # The official scorer runs in the user's environment, as GenEval's own code sets it up:
        # open_clip 2.20's OpenAI ViT-L/14 (QuickGELU) under CUDA fp16 autocast.
        "device": "official environment (CUDA)",
        "clip_precision": "fp16-autocast",
        "clip_activation": "quick_gelu",
        "images_per_prompt": k,
        "n_prompts": len(rows),
        "n_images": len(result.verdicts),
        "partial": len(rows) < prompt_sets.OFFICIAL["geneval"].lines,
        "failures": [{"index": i, "prompt": per_image[i]["prompt"], "reason": reason}
                     for i, (c, reason) in enumerate(result.verdicts) if not c][:50],
        "official": {**scorer.provenance(), "summary": result.figures, "summary_text": result.summary},
        # per image, as the transformers suite gives it, so `compare` can pair two runs' verdicts
        "per_image": {"correct_images": [1.0 if c else 0.0 for c, _ in result.verdicts]},
    }


def _executable(value: str) -> str:
    path = shutil.which(value) if os.sep not in value else value
    if not path or not Path(path).is_file() or not os.access(path, os.X_OK):
        raise UserError(f"suite.official.python / {ENV['python']} = {value!r} is not an executable file: give "
                        f"{HOW['python']}")
    return str(Path(path).absolute())


def _folder(value: str, field: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"suite.official.{field} / {ENV[field]} = {value!r} is not a folder: give {HOW[field]}")
    return path.resolve()


def _git_commit(folder: Path) -> str | None:
    """The checkout's commit, or None when it is not a git clone (or git is absent)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
