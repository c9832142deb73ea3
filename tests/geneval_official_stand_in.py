"""A stand-in GenEval checkout for tests: evaluate_images.py and summary_scores.py with the
official command line and output formats (djghosh13/geneval evaluation/), no models.

The stand-in evaluator judges an image correct when the red value of its top-left pixel is
above 127 (so tests choose every verdict), writes results.jsonl records with the official
fields in reverse folder order (the official order is os.listdir's, i.e. arbitrary), and obeys
STAND_IN_MODE: ok | fail (30 numbered stderr lines, a partial file, exit 3) | drop-one (one
image missing) | silent (exit 0, no file) | lying-summary (the summary misprints the overall).
"""

from __future__ import annotations

import sys
from pathlib import Path

EVALUATE = r'''
import argparse, json, os, re, sys
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("imagedir", type=str)
parser.add_argument("--outfile", type=str, default="results.jsonl")
parser.add_argument("--model-config", type=str, default=None)
parser.add_argument("--model-path", type=str, default="./")
parser.add_argument("--options", nargs="*", type=str, default=[])
args = parser.parse_args()
mode = os.environ.get("STAND_IN_MODE", "ok")
assert os.path.isfile(os.path.join(args.model_path, "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"))
records = []
for subfolder in sorted(os.listdir(args.imagedir), reverse=True):
    folderpath = os.path.join(args.imagedir, subfolder)
    if not os.path.isdir(folderpath) or not subfolder.isdigit():
        continue
    with open(os.path.join(folderpath, "metadata.jsonl")) as fp:
        metadata = json.load(fp)
    for imagename in sorted(os.listdir(os.path.join(folderpath, "samples")), reverse=True):
        imagepath = os.path.join(folderpath, "samples", imagename)
        if not re.match(r"\d+\.png", imagename):
            continue
        correct = Image.open(imagepath).convert("RGB").getpixel((0, 0))[0] > 127
        records.append({"filename": imagepath, "tag": metadata["tag"], "prompt": metadata["prompt"],
                        "correct": correct, "reason": "" if correct else "stand-in: dark corner",
                        "metadata": json.dumps(metadata), "details": json.dumps({})})
if mode == "drop-one":
    records = records[1:]
with open(args.outfile, "w") as fp:
    for rec in records[: 2 if mode == "fail" else len(records)]:
        fp.write(json.dumps(rec) + "\n")
if mode == "silent":
    os.remove(args.outfile)
if mode == "fail":
    for i in range(1, 31):
        print(f"stderr line {i:02d}", file=sys.stderr)
    sys.exit(3)
'''

SUMMARY = r'''
import json, os, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by_meta, by_tag = {}, {}
for r in rows:
    by_meta[r["metadata"]] = by_meta.get(r["metadata"], False) or r["correct"]
    by_tag.setdefault(r["tag"], []).append(r["correct"])
print("Summary")
print("=======")
print(f"Total images: {len(rows)}")
print(f"Total prompts: {len(by_meta)}")
print(f"% correct images: {sum(r['correct'] for r in rows) / len(rows):.2%}")
print(f"% correct prompts: {sum(by_meta.values()) / len(by_meta):.2%}")
print()
print("Task breakdown")
print("==============")
scores = []
for tag, v in by_tag.items():
    scores.append(sum(v) / len(v))
    print(f"{tag:<16} = {sum(v) / len(v):.2%} ({sum(v)} / {len(v)})")
print()
overall = sum(scores) / len(scores) + (0.1 if os.environ.get("STAND_IN_MODE") == "lying-summary" else 0.0)
print(f"Overall score (avg. over tasks): {overall:.5f}")
'''

CHECKPOINT_BYTES = b"stand-in detector"


def make_checkout(root: Path) -> dict[str, str]:
    """Write the stand-in checkout and detector folder under root; returns the three locations
    as suite.official fields (python = this interpreter)."""
    (root / "geneval" / "evaluation").mkdir(parents=True, exist_ok=True)
    (root / "geneval" / "evaluation" / "evaluate_images.py").write_text(EVALUATE)
    (root / "geneval" / "evaluation" / "summary_scores.py").write_text(SUMMARY)
    (root / "detector").mkdir(exist_ok=True)
    (root / "detector" / "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth").write_bytes(CHECKPOINT_BYTES)
    return {"python": sys.executable, "checkout": str(root / "geneval"), "detector": str(root / "detector")}

# GenEval metadata of three prompts, one per tag kind the tests need (shared by the test files).
META = [
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]
