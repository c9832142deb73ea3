"""Rewards of the `shapes` base, on images from `Shapes.decode`: (B, 3, 24, 24) in [0, 1].

- `shapes-partial` (not differentiable): GenEval partial credit of the rule-based detector's
  objects (rtdmd_bench/shapes/detect.py), with the `geneval-partial` reward's own credit functions
  (form "rtdmd": RTDMD's training reward, the default; "clauses": the fraction of GenEval clauses
  met). The exact reward the evaluator implies, as geneval-partial is for GenEval.
- `shapes-proxy` (differentiable): a small CNN + prompt embedding (`ProxyNet`) trained on renders
  to predict max(partial credit, 0) ("rtdmd" form, computed from the true objects), cached like
  the teacher. It is what reward backpropagation can follow; being learned, it can be fooled
  by images unlike renders, which the exact reward and the suite then expose.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.digits.training import isolated_rng
from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import Detection, select_detections
from rtdmd_bench.progress import progress_bar
from rtdmd_bench.rewards.geneval_partial import FORMS
from rtdmd_bench.shapes.cache import load_or_train
from rtdmd_bench.shapes.detect import colour_of, detect, noisy
from rtdmd_bench.shapes.nets import ProxyConfig, ProxyNet, tokenize
from rtdmd_bench.shapes.scenes import IMAGE_SHAPE, all_rows, metadata_of, render, scene_for, truth_detections

CreditForm = Literal["rtdmd", "clauses"]
"""Partial-credit form (rtdmd_bench.rewards.geneval_partial): "rtdmd" = RTDMD's training reward,
"clauses" = the fraction of GenEval clauses satisfied."""


def check_images(images: Tensor, prompts: Sequence[str], name: str) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise UserError(f"{name} scores (B, 3, 24, 24) images from the `shapes` base, got {tuple(images.shape)}; "
                        "use it with --base shapes")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{name}: {images.shape[0]} images but {len(prompts)} prompts")


def partial_credit(detections: Sequence[Detection], meta: dict[str, Any], form: CreditForm = "rtdmd") -> float:
    """Partial credit of one image's detections for one metadata row (GenEval's thresholds and
    per-class cap first, as geneval-partial applies them)."""
    selected = select_detections(detections, meta["tag"])
    return FORMS[form](torch.zeros(3, 1, 1), selected, meta, colour_of)[0]


class ShapesPartial:
    """GenEval partial credit of the rule-based detector's objects (not differentiable)."""

    @dataclass
    class Config:
        form: CreditForm = "rtdmd"
        """"rtdmd" (RTDMD's training reward) or "clauses" (fraction of GenEval clauses met)."""

    name = "shapes-partial"
    differentiable = False

    def __init__(self, cfg: "ShapesPartial.Config | None" = None) -> None:
        self.cfg = cfg or ShapesPartial.Config()

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        check_images(images, prompts, self.name)
        scores = [partial_credit(detect(img), metadata_of(p), self.cfg.form) for img, p in zip(images, prompts)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


# ----------------------------------------------------------------------------- the learned proxy
def proxy_examples(n: int, seed: int) -> tuple[Tensor, list[str], Tensor]:
    """(renders (n, 3, 24, 24) in [0, 1], prompts, targets (n,)): each scene rendered for a prompt
    (uniform tag, then prompt) and paired with that prompt (half), another prompt of its tag (30%)
    or any prompt (20%); target = max(partial credit of the true objects, 0), "rtdmd" form."""
    rows = all_rows()
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    tags = sorted(by_tag)
    rng = random.Random(seed)
    images, prompts, targets = [], [], []
    for _ in range(n):
        tag = rng.choice(tags)
        meta = rng.choice(by_tag[tag])
        scene = scene_for(meta, rng)
        u = rng.random()
        paired = meta if u < 0.5 else rng.choice(by_tag[tag]) if u < 0.8 else rng.choice(rows)
        images.append(render(scene))
        prompts.append(paired["prompt"])
        targets.append(max(partial_credit(truth_detections(scene), paired), 0.0))
    return torch.stack(images), prompts, torch.tensor(targets)


@isolated_rng
@single_thread()
def train_proxy(cfg: ProxyConfig, progress: bool = True) -> tuple[ProxyNet, dict[str, Any]]:
    """Fit the proxy to the partial credit of renders (MSE), deterministically; report its error
    on held-out renders (seed 10000 up, noise 0.1)."""
    torch.manual_seed(cfg.seed)
    net = ProxyNet(cfg)
    start = time.time()
    images, prompts, targets = proxy_examples(cfg.dataset_size, cfg.seed)
    tokens = tokenize(prompts)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / max(cfg.train_steps, 1), 1.0))))
    with progress_bar(counts=True, disable=not progress) as bar:
        task = bar.add_task("shapes reward proxy", total=cfg.train_steps, info="")
        for _ in range(cfg.train_steps):
            idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
            std = cfg.noise_std * torch.rand(len(idx), 1, 1, 1, generator=gen)
            x = (images[idx] + std * torch.randn(images[idx].shape, generator=gen)).clamp(0, 1)
            loss = F.mse_loss(net(x, tokens[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(task, advance=1, info=f"mse {loss.item():.4f}")
    net.eval().requires_grad_(False)
    held_x, held_p, held_t = proxy_examples(cfg.held_out_size, 10_000)
    with torch.no_grad():
        pred = net(noisy(held_x, 0.1, torch.Generator().manual_seed(10_000)), tokenize(held_p))
    return net, {"held_out_mae": (pred - held_t).abs().mean().item(),
                 "held_out_corr": torch.corrcoef(torch.stack([pred, held_t]))[0, 1].item(),
                 "wall_seconds": time.time() - start}


def load_proxy(cfg: ProxyConfig, force: bool = False, progress: bool = True) -> tuple[ProxyNet, dict[str, Any]]:
    """The cached proxy (trained now if absent, or if `force`) and its metadata."""
    return load_or_train("proxy", cfg, lambda: ProxyNet(cfg), lambda: train_proxy(cfg, progress), force)


class ShapesProxy:
    """Learned, differentiable prediction of the shapes partial credit (ProxyNet), in (0, 1)."""

    @dataclass
    class Config:
        proxy: ProxyConfig = field(default_factory=ProxyConfig)
        """Which cached proxy (hash of this config); the defaults match the suite's."""
        progress: bool = True
        """Show a progress bar if the proxy has to be trained."""

    name = "shapes-proxy"
    differentiable = True

    def __init__(self, cfg: "ShapesProxy.Config | None" = None) -> None:
        self.cfg = cfg or ShapesProxy.Config()
        self.net, self.meta = load_proxy(self.cfg.proxy, progress=self.cfg.progress)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        check_images(images, prompts, self.name)
        for p in prompts:
            metadata_of(p)  # only benchmark prompts: the proxy was trained on nothing else
        return self.net.to(images.device)(images, tokenize(prompts).to(images.device))
