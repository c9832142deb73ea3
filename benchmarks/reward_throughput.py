"""Reward scorer throughput (images/s) on this CPU for the tiny stand-in configs, and the
per-process model cache (second construction of the same reward loads nothing).

Run:  python benchmarks/reward_throughput.py [--images 16] [--size 64] [--repeats 3]
                                            [--out results/benchmarks/reward_throughput.md]

The stand-ins run the real code paths (differentiable preprocessing, the real transformers /
open_clip towers, heads and score formulas) at tiny widths, so these numbers measure the
harness overhead around a scorer, not the official models' cost (which needs their weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rtdmd_bench import registry
from rtdmd_bench.rewards.loading import clear_model_cache

REWARDS = ["tiny-clipscore", "tiny-pickscore", "tiny-hpsv2", "tiny-aesthetic", "tiny-imagereward",
           "tiny-geneval-partial"]
PROMPTS = ["a photo of a cat", "a photo of a dog and a bench", "a photo of three apples",
           "a photo of a red car"]


def training_metadata(folder: Path) -> Path:
    """GenEval-style metadata for the benchmark prompts (geneval-partial looks prompts up)."""
    rows = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": PROMPTS[0]},
            {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "bench", "count": 1}],
             "prompt": PROMPTS[1]},
            {"tag": "counting", "include": [{"class": "apple", "count": 3}], "prompt": PROMPTS[2]},
            {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": PROMPTS[3]}]
    path = folder / "train_metadata.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def build(name: str, metadata: Path, batch_size: int):
    cls = registry.resolve("rewards", name)
    cfg = cls.Config()
    if hasattr(cfg, "metadata_path"):
        cfg = replace(cfg, metadata_path=str(metadata))
    return cls(replace(cfg, batch_size=batch_size))


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, images: torch.Tensor, prompts: list[str], metadata: Path, repeats: int,
            batch_size: int) -> dict[str, float | str]:
    clear_model_cache()
    start = time.perf_counter()
    reward = build(name, metadata, batch_size)
    first_load = time.perf_counter() - start
    start = time.perf_counter()
    again = build(name, metadata, batch_size)
    second_load = time.perf_counter() - start
    weights = [getattr(r, "encoder", getattr(r, "model", getattr(r, "_detector", None))) for r in (reward, again)]
    cache = "yes" if weights[0] is weights[1] else "no"
    n = images.shape[0]
    with torch.no_grad():
        fwd = timed(lambda: reward(images, prompts), repeats)
    row: dict[str, float | str] = {"reward": reward.name, "load_s": first_load, "cached_load_s": second_load,
                                   "cache_hit": cache, "fwd_img_s": n / fwd}
    if reward.differentiable:
        def fwd_bwd() -> None:
            x = images.clone().requires_grad_(True)
            reward(x, prompts).sum().backward()
        row["fwd_bwd_img_s"] = n / timed(fwd_bwd, repeats)
    return row


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(rows: list[dict], args: argparse.Namespace) -> str:
    head = ("# Reward throughput (tiny stand-ins, CPU)\n\n"
            f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; git {git_commit()}; {args.images} images of "
            f"{args.size}x{args.size}, batch size {args.batch_size}, median of {args.repeats} runs; "
            f"load average at the end {os.getloadavg()[0]:.1f} (a shared machine makes these noisy).\n\n"
            "Stand-ins are tiny random models on the real code paths: the numbers measure the "
            "harness around each scorer (preprocessing, tokenisation, batching), not the official "
            "models. `cached_load_s`: building the same reward again in the process (model cache).\n\n"
            "| reward | load s | cached load s | cache hit | forward img/s | fwd+bwd img/s |\n"
            "|---|---|---|---|---|---|\n")
    lines = [f"| {r['reward']} | {r['load_s']:.2f} | {r['cached_load_s']:.4f} | {r['cache_hit']} | "
             f"{r['fwd_img_s']:.1f} | " + (f"{r['fwd_bwd_img_s']:.1f}" if "fwd_bwd_img_s" in r else "n/a (not differentiable)")
             + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rewards", default=",".join(REWARDS))
    parser.add_argument("--out", default="results/benchmarks/reward_throughput.md")
    args = parser.parse_args()
    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        metadata = training_metadata(Path(tmp))
        rows = [measure(name, images, prompts, metadata, args.repeats, args.batch_size)
                for name in args.rewards.split(",")]
    text = render(rows, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
