"""HPSv3 parity: the suite's transformers-5 `hpsv3` reward against the `hpsv3` package itself on the
same uint8 images and prompts, and the reward's peak GPU memory. Needs the real weights (not run
in CI; the CPU tests pin each piece on the tiny stand-in instead).

Setup (once). The package pins transformers 4.45.2 and imports trl, peft, datasets, ... at import
time, so it runs in a side environment, never the project's:

    python -m venv /opt/hpsv3-env
    /opt/hpsv3-env/bin/pip install torch torchvision transformers==4.45.2 "hpsv3==1.0.0" --no-deps
    /opt/hpsv3-env/bin/pip install trl==0.12.2 peft==0.17.0 datasets pandas matplotlib tensorboard \
        fire omegaconf pyyaml safetensors accelerate huggingface_hub tokenizers pillow numpy
    hf download MizzenAI/HPSv3 HPSv3.safetensors --local-dir /data/hpsv3
    hf download Qwen/Qwen2-VL-7B-Instruct --local-dir /data/qwen2-vl-7b-instruct
    # (the package loads the full base weights before overwriting them; the suite needs only its
    #  config/tokenizer/processor files)

Run (GPU recommended; the package runs in the side environment, the suite's reward in this one):

    python benchmarks/hpsv3_parity.py --package-python /opt/hpsv3-env/bin/python \
        --checkpoint /data/hpsv3/HPSv3.safetensors --base /data/qwen2-vl-7b-instruct \
        [--images DIR_OF_PNGS] [--prompts FILE] [--n 16] [--batch 4] [--rotary hpsv3]
        [--out results/benchmarks/hpsv3_parity.md]

The suite reads HPSv3's prompt template from the side environment's installed package. Without
--images, N deterministic smooth random 1024-px images are scored (parity of the computation,
not meaningful scores); prompts default to the first N lines of RTDMD's hpsv3/test.txt. Without
--package-python only the suite's scores and memory are reported. Expected: |mu difference| at
bf16 noise (attention kernels, flash-attention 2 vs sdpa), far below the spread of mu across images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Runs in the side environment: the package's own inferencer on the PNG files (as RTDMD's
# HPSv3Scorer: PIL images in, column 0 of the (B, 2) output out).
PACKAGE_DRIVER = r"""
import json, sys, tempfile, pathlib, yaml, torch
from PIL import Image
import hpsv3
from hpsv3 import HPSv3RewardInferencer
a = json.loads(sys.argv[1])
cfg = yaml.safe_load(open(pathlib.Path(hpsv3.__file__).parent / "config" / "HPSv3_7B.yaml"))
cfg["model_name_or_path"] = a["base"]
path = pathlib.Path(tempfile.mkdtemp()) / "HPSv3_7B.yaml"
path.write_text(yaml.safe_dump(cfg))
inf = HPSv3RewardInferencer(config_path=str(path), checkpoint_path=a["checkpoint"], device=a["device"])
out = []
for i in range(0, len(a["images"]), a["batch"]):
    imgs = [Image.open(p).convert("RGB") for p in a["images"][i:i + a["batch"]]]
    with torch.no_grad():
        out += inf.reward(imgs, a["prompts"][i:i + a["batch"]])[:, 0].float().tolist()
print("MU " + json.dumps(out))
"""
FIND_TEMPLATE = "import importlib.util, pathlib; s = importlib.util.find_spec('hpsv3'); " \
                "print(pathlib.Path(s.origin).parent / 'dataset' / 'data_collator_qwen.py')"


def synthetic_images(n: int, side: int, folder: Path) -> list[Path]:
    """Smooth random RGB images (bicubic upsampling of 8x8 noise), saved as PNG."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(n, 3, 8, 8, generator=g)
    big = F.interpolate(small, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    paths = []
    for i, img in enumerate((big * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()):
        paths.append(folder / f"{i:04d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def default_prompts(n: int) -> list[str]:
    from suites import prompt_sets

    return prompt_sets.load_prompts(prompt_sets.resolve("hpsv3", ""))[:n]


def suite_scores(args: argparse.Namespace, paths: list[Path], prompts: list[str], template: str) -> tuple[list[float], dict]:
    from rtdmd_bench.rewards.hpsv3 import HPSv3

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    reward = HPSv3(HPSv3.Config(local_path=args.checkpoint, base_path=args.base, template_path=template,
                                rotary=args.rotary, batch_size=args.batch))
    load_s = time.perf_counter() - t0
    # uint8 PNG -> [0, 1] float: the reward rounds back to the same uint8 values.
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])
    t0 = time.perf_counter()
    mu = reward(x.float().div(255).to(device), prompts).tolist()
    stats = {"load_s": load_s, "score_s": time.perf_counter() - t0}
    if device.type == "cuda":
        stats["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    reward.release()  # free the GPU before the package loads its own copy
    return mu, stats


def package_scores(args: argparse.Namespace, paths: list[Path], prompts: list[str]) -> list[float]:
    payload = json.dumps({"base": args.base, "checkpoint": args.checkpoint, "device": args.device,
                          "batch": args.batch, "images": [str(p) for p in paths], "prompts": prompts})
    out = subprocess.run([args.package_python, "-c", PACKAGE_DRIVER, payload], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the package run failed:\n{out.stderr[-4000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("MU "))
    return json.loads(line[3:])


def report(ours: list[float], theirs: list[float] | None, prompts: list[str], stats: dict, args) -> str:
    lines = ["# HPSv3 parity: suite (transformers 5) vs the hpsv3 1.0.0 package", "",
             f"checkpoint `{args.checkpoint}`, base `{args.base}`, device {args.device}, batch {args.batch}, "
             f"rotary {args.rotary}; load {stats['load_s']:.1f} s, score {stats['score_s']:.1f} s"
             + (f", peak GPU memory {stats['peak_gb']:.2f} GB" if "peak_gb" in stats else ""), ""]
    if theirs is None:
        lines += ["| # | prompt | mu (suite) |", "|---|---|---|"]
        lines += [f"| {i} | {p[:60]} | {m:.4f} |" for i, (p, m) in enumerate(zip(prompts, ours))]
        return "\n".join(lines + ["", f"mean mu {np.mean(ours):.4f}"]) + "\n"
    diff = np.abs(np.array(ours) - np.array(theirs))
    lines += ["| # | prompt | mu (package) | mu (suite) | abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {p[:60]} | {t:.4f} | {o:.4f} | {d:.4f} |"
              for i, (p, t, o, d) in enumerate(zip(prompts, theirs, ours, diff))]
    lines += ["", f"mean mu: package {np.mean(theirs):.4f}, suite {np.mean(ours):.4f}; max |diff| {diff.max():.4f}, "
              f"mean |diff| {diff.mean():.4f}; std of mu across images {np.std(theirs):.4f}; "
              f"Pearson r {np.corrcoef(ours, theirs)[0, 1]:.5f}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="HPSv3.safetensors")
    p.add_argument("--base", required=True, help="Qwen2-VL-7B-Instruct folder (full, for the package)")
    p.add_argument("--package-python", default="", help="python of the side environment with hpsv3 installed")
    p.add_argument("--template", default="", help="hpsv3 template source (default: the side environment's package)")
    p.add_argument("--images", default="", help="folder of PNG images (sorted); default: synthetic")
    p.add_argument("--prompts", default="", help="prompt file aligned with the images; default: RTDMD's hpsv3 test")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rotary", default="hpsv3", choices=["hpsv3", "float32"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="results/benchmarks/hpsv3_parity.md")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hpsv3-parity-"))
    paths = sorted(Path(args.images).glob("*.png"))[: args.n] if args.images else synthetic_images(args.n, 1024, tmp)
    prompts = (Path(args.prompts).read_text().splitlines()[: len(paths)] if args.prompts else default_prompts(len(paths)))
    template = args.template
    if not template and args.package_python:
        template = subprocess.run([args.package_python, "-c", FIND_TEMPLATE], capture_output=True, text=True,
                                  check=True).stdout.strip()
    ours, stats = suite_scores(args, paths, prompts, template)
    theirs = package_scores(args, paths, prompts) if args.package_python else None
    text = report(ours, theirs, prompts, stats, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
