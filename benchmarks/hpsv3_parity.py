"""HPSv3 parity: the suite's transformers-5 `hpsv3` reward against the `hpsv3` package itself on the
same uint8 images and prompts, and the reward's peak GPU memory. Needs the real weights (not run
in CI; the CPU tests pin each piece on the tiny stand-in instead).

Setup (once). The package pins transformers 4.45.2 and imports trl, peft, datasets, ... at import
time, so it runs in a side environment, never the project's. Its declared dependencies (deepspeed,
an unpinned trl) do not install or import beside transformers 4.45.2; what worked here
(results/benchmarks/hpsv3_parity_tiny.md) is --no-deps plus the modules it imports:

    python -m venv /opt/hpsv3-env
    /opt/hpsv3-env/bin/pip install torch torchvision numpy pillow safetensors pyyaml accelerate peft
    /opt/hpsv3-env/bin/pip install --no-deps hpsv3==1.0.0 transformers==4.45.2 tokenizers==0.20.3 \
        huggingface_hub==0.29.3 trl==0.12.2 datasets==3.2.0 pandas python-dateutil pytz tzdata omegaconf \
        antlr4-python3-runtime fire termcolor tensorboard absl-py protobuf pyarrow multiprocess dill \
        xxhash fsspec aiohttp aiohappyeyeballs aiosignal frozenlist multidict yarl propcache attrs \
        regex requests tqdm filelock packaging
    hf download MizzenAI/HPSv3 HPSv3.safetensors --local-dir /data/hpsv3
    hf download Qwen/Qwen2-VL-7B-Instruct --local-dir /data/qwen2-vl-7b-instruct
    # (the package loads the full base weights before overwriting them; the suite needs only its
    #  config/tokenizer/processor files)

Run (GPU recommended; the package runs in the side environment, the suite's reward in this one):

    python benchmarks/hpsv3_parity.py --package-python /opt/hpsv3-env/bin/python \
        --checkpoint /data/hpsv3/HPSv3.safetensors --base /data/qwen2-vl-7b-instruct \
        [--images DIR_OF_PNGS] [--prompts FILE] [--n 16] [--batch 4] [--rotary hpsv3]
        [--out results/benchmarks/hpsv3_parity.md]

Without weights, `--tiny` checks the same computation on a tiny random Qwen2-VL (the `tiny-hpsv3`
stand-in's weights saved in the published layout: a transformers-4.45 config.json + model.safetensors
folder and an HPSv3.safetensors in the package's key names), with HPSv3's real prompt template:

    python benchmarks/hpsv3_parity.py --tiny --package-python /opt/hpsv3-env/bin/python \
        --rotary hpsv3,float32 --out results/benchmarks/hpsv3_parity_tiny.md

The suite reads HPSv3's prompt template from the side environment's installed package. Without
--images, N deterministic smooth random images (1024 and 512 px in turn) are scored (parity of the computation,
not meaningful scores); prompts default to the first N lines of RTDMD's hpsv3/test.txt. Without
--package-python only the suite's scores and memory are reported. Expected: |mu difference| at
bf16 noise (attention kernels, flash-attention 2 vs sdpa), far below the spread of mu across images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
if not a["device"].startswith("cuda"):  # its float32 autocast is CUDA-only: do its cast on other devices
    inf.model.rm_head.register_forward_pre_hook(lambda module, args: (args[0].float(),))
out = []
for i in range(0, len(a["images"]), a["batch"]):
    imgs = [Image.open(p).convert("RGB") for p in a["images"][i:i + a["batch"]]]
    with torch.no_grad():
        out += inf.reward(imgs, a["prompts"][i:i + a["batch"]])[:, 0].float().tolist()
print("MU " + json.dumps(out))
"""
FIND_TEMPLATE = "import importlib.util, pathlib; s = importlib.util.find_spec('hpsv3'); " \
                "print(pathlib.Path(s.origin).parent / 'dataset' / 'data_collator_qwen.py')"


def synthetic_images(n: int, folder: Path) -> list[Path]:
    """Smooth random RGB images (bicubic upsampling of 8x8 noise), 1024 and 512 px in turn (both
    become 448 x 448 under HPSv3's budget), saved as PNG."""
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        side = 1024 if i % 2 == 0 else 512
        big = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(side, side), mode="bicubic",
                            align_corners=False).clamp(0, 1)[0]
        paths.append(folder / f"{i:04d}.png")
        Image.fromarray((big * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def tiny_published_folder(folder: Path) -> tuple[str, str]:
    """(HPSv3.safetensors, base folder) from the float32 `tiny-hpsv3` stand-in, in the layout the
    package loads under transformers 4.45: a flat Qwen2-VL config.json, model.safetensors in 4.45
    names (vocabulary without <|Reward|>), tokenizer, preprocessor_config.json, chat_template.json."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLImageProcessor

    from rtdmd_bench.rewards.tiny import _QWEN_SPECIALS, TINY_QWEN_CHAT_TEMPLATE, TinyHPSv3, tiny_qwen2_tokenizer

    model, tok, base = TinyHPSv3(TinyHPSv3.Config(dtype="float32", stand_in_seed=3)).model(), tiny_qwen2_tokenizer(), folder / "base"
    n, c = len(tok), model.backbone.config
    t, v = c.text_config, c.vision_config
    tok.save_pretrained(base)
    (base / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "additional_special_tokens": _QWEN_SPECIALS, "model_max_length": 32768}))
    Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056).save_pretrained(base)
    (base / "chat_template.json").write_text(json.dumps({"chat_template": TINY_QWEN_CHAT_TEMPLATE}))
    ids = {k: getattr(c, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    (base / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "vocab_size": n,
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_parameters["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": t.rope_parameters["mrope_section"]},
        "tie_word_embeddings": False, "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, **ids,
        "vision_config": {"depth": v.depth, "embed_dim": v.embed_dim, "hidden_size": v.hidden_size, "hidden_act": v.hidden_act,
                          "mlp_ratio": v.mlp_ratio, "num_heads": v.num_heads, "in_chans": 3, "patch_size": v.patch_size,
                          "spatial_merge_size": v.spatial_merge_size, "temporal_patch_size": v.temporal_patch_size}}))
    state = {("model." + k.removeprefix("language_model.") if k.startswith("language_model.") else k): x.clone()
             for k, x in model.backbone.state_dict().items()}
    state["lm_head.weight"] = torch.randn(n + 1, t.hidden_size, generator=torch.Generator().manual_seed(5)) * 0.02
    save_file({**state, **{f"rm_head.{k}": x.clone() for k, x in model.head.state_dict().items()}},
              str(folder / "HPSv3.safetensors"))
    # The package first loads the base weights (vocabulary without <|Reward|>), then overwrites them all.
    state = {k: (x[:n].clone() if k in ("model.embed_tokens.weight", "lm_head.weight") else x) for k, x in state.items()}
    save_file(state, str(base / "model.safetensors"), metadata={"format": "pt"})
    return str(folder / "HPSv3.safetensors"), str(base)


def default_prompts(n: int) -> list[str]:
    from suites import prompt_sets

    return prompt_sets.load_prompts(prompt_sets.resolve("hpsv3", ""))[:n]


def suite_scores(args: argparse.Namespace, paths: list[Path], prompts: list[str], template: str,
                 rotary: str) -> tuple[list[float], dict]:
    from rtdmd_bench.rewards.hpsv3 import HPSv3

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    reward = HPSv3(HPSv3.Config(local_path=args.checkpoint, base_path=args.base, template_path=template,
                                rotary=rotary, batch_size=args.batch))
    load_s = time.perf_counter() - t0
    # uint8 PNG -> [0, 1] float: the reward rounds back to the same uint8 values. One call per
    # image (sizes may differ; scores do not depend on the batch, tests/test_rewards_hpsv3.py).
    images = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
    t0 = time.perf_counter()
    mu = [float(reward(x[None].float().div(255).to(device), [q])[0]) for x, q in zip(images, prompts)]
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


def report(ours: dict[str, list[float]], theirs: list[float] | None, prompts: list[str], stats: dict, args) -> str:
    lines = ["# HPSv3 parity: suite (transformers 5) vs the hpsv3 1.0.0 package", "",
             ("tiny random Qwen2-VL in the published layout (`--tiny`), HPSv3's real prompt template" if args.tiny
              else f"checkpoint `{args.checkpoint}`, base `{args.base}`")
             + f"; device {args.device}, batch {args.batch}; load {stats['load_s']:.1f} s, score {stats['score_s']:.1f} s"
             + (f", peak GPU memory {stats['peak_gb']:.2f} GB" if "peak_gb" in stats else ""), ""]
    names = [f"suite rotary={r}" for r in ours]
    head = ["#", "prompt"] + (["package"] if theirs is not None else []) + names
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, prompt in enumerate(prompts):
        cells = [str(i), prompt[:50]] + ([f"{theirs[i]:.7g}"] if theirs is not None else [])
        lines.append("| " + " | ".join(cells + [f"{v[i]:.7g}" for v in ours.values()]) + " |")
    lines.append("")
    for rotary, mu in ours.items():
        line = f"- rotary={rotary}: mean mu {np.mean(mu):.7g}"
        if theirs is not None:
            diff = np.abs(np.array(mu) - np.array(theirs))
            line += (f"; package mean {np.mean(theirs):.7g}; max |diff| {diff.max():.3g}, mean |diff| {diff.mean():.3g}, "
                     f"std of mu across images {np.std(theirs):.3g}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def versions(args: argparse.Namespace) -> str:
    import transformers

    line = (f"command: `python {' '.join(sys.argv)}`\n\n"
            f"suite: transformers {transformers.__version__}, torch {torch.__version__}")
    if args.package_python:
        probe = ("import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
                 "('hpsv3', 'transformers', 'torch')))")
        line += "; package side: " + subprocess.run([args.package_python, "-c", probe], capture_output=True,
                                                     text=True).stdout.strip()
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="", help="HPSv3.safetensors")
    p.add_argument("--base", default="", help="Qwen2-VL-7B-Instruct folder (full, for the package)")
    p.add_argument("--tiny", action="store_true", help="no weights: a tiny random model in the published layout")
    p.add_argument("--package-python", default="", help="python of the side environment with hpsv3 installed")
    p.add_argument("--template", default="", help="hpsv3 template source (default: the side environment's package)")
    p.add_argument("--images", default="", help="folder of PNG images (sorted); default: synthetic")
    p.add_argument("--prompts", default="", help="prompt file aligned with the images; default: RTDMD's hpsv3 test")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rotary", default="hpsv3", help="comma-separated: hpsv3 (official numerics), float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="results/benchmarks/hpsv3_parity.md")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hpsv3-parity-"))
    if args.tiny:
        args.checkpoint, args.base = tiny_published_folder(tmp)
    elif not (args.checkpoint and args.base):
        raise SystemExit("pass --checkpoint and --base (or --tiny)")
    paths = sorted(Path(args.images).glob("*.png"))[: args.n] if args.images else synthetic_images(args.n, tmp)
    prompts = (Path(args.prompts).read_text().splitlines()[: len(paths)] if args.prompts else default_prompts(len(paths)))
    template = args.template
    if not template and args.package_python:
        template = subprocess.run([args.package_python, "-c", FIND_TEMPLATE], capture_output=True, text=True,
                                  check=True).stdout.strip()
    ours: dict[str, list[float]] = {}
    for rotary in args.rotary.split(","):
        ours[rotary], stats = suite_scores(args, paths, prompts, template, rotary)
    theirs = package_scores(args, paths, prompts) if args.package_python else None
    text = report(ours, theirs, prompts, stats, args) + "\n" + versions(args) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
