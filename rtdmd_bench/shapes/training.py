"""How the shapes teacher is trained, deterministically, and the teacher check.

Like the digits teacher: seeded from its config, one intra-op thread, on a fork of torch's global
RNG, so the weights depend on the config alone (what the cache key hashes). The training set is a
fixed set of renders, each for a prompt drawn with a uniform tag (every prompt, training and
evaluation alike: the teacher's "pretraining" world holds all of them, as a real teacher's does;
the disjoint split is between the methods' training prompts and the suite's).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rtdmd_bench.core.sampling import euler_sample
from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.digits.training import isolated_rng
from rtdmd_bench.geneval.rules import aggregate
from rtdmd_bench.progress import progress_bar
from rtdmd_bench.shapes.detect import detect, verdict
from rtdmd_bench.shapes.nets import ShapesFlowNet, TeacherConfig, guided_velocity, tokenize
from rtdmd_bench.shapes.scenes import split_rows, training_scenes
from rtdmd_bench.shapes.slots import LATENT_SHAPE, decode_slots, encode_scene


def flow_matching_loss(net: ShapesFlowNet, x0: Tensor, tokens: Tensor, gen: torch.Generator) -> Tensor:
    """E ||v(x_sigma, sigma, c) - (eps - x0)||^2, sigma ~ U(0, 1) (METHODS.md section 1; uniform, as
    for digits, because the methods query the teacher on all of [0.02, 0.98])."""
    eps = torch.randn(x0.shape, generator=gen)  # (B, 4, 12)
    sigma = torch.rand(x0.shape[0], generator=gen)  # (B,)
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return F.mse_loss(net((1 - s) * x0 + s * eps, sigma, tokens), eps - x0)


@isolated_rng
@single_thread()
def train_teacher(cfg: TeacherConfig, progress: bool = True) -> tuple[ShapesFlowNet, dict[str, Any]]:
    """Train the flow teacher from scratch on the slot codes of fixed scenes; return its EMA copy and a log."""
    torch.manual_seed(cfg.seed)  # global RNG forked by @isolated_rng: initialisation only
    net, ema = ShapesFlowNet(cfg), ShapesFlowNet(cfg)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    net.step.weight.requires_grad_(False)  # the step table stays zero in the teacher
    start = time.time()
    scenes, prompts, rng = training_scenes(cfg.dataset_size, cfg.seed)
    images = torch.stack([encode_scene(s, rng) for s in scenes])  # (N, 4, 12) slot latents
    tokens = tokenize(prompts)  # (N, L)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / max(cfg.train_steps, 1), 1.0))))
    order, pos, losses = torch.randperm(len(images), generator=gen), 0, []
    with progress_bar(counts=True, disable=not progress) as bar:
        task = bar.add_task("shapes teacher", total=cfg.train_steps, info="")
        for _ in range(cfg.train_steps):
            if pos + cfg.batch_size > len(order):
                order, pos = torch.randperm(len(images), generator=gen), 0
            idx = order[pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            tok = tokens[idx].clone()
            tok[torch.rand(len(idx), generator=gen) < cfg.prompt_dropout] = 0  # the null prompt
            loss = flow_matching_loss(net, images[idx], tok, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - cfg.ema)
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    return ema.eval(), {"final_loss": sum(losses[-100:]) / max(len(losses[-100:]), 1),
                        "wall_seconds": time.time() - start, "train_steps": cfg.train_steps}


def geneval_scores(images: Tensor, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """GenEval's summary figures (per tag, overall, % correct images / prompts) of images
    (N, 3, H, W) in [0, 1], one metadata row each, scored by the rule-based detector."""
    correct = [verdict(detect(img), meta) for img, meta in zip(images, rows)]
    return aggregate([m["tag"] for m in rows], correct, [m["prompt"] for m in rows])


@single_thread()
@torch.no_grad()
def teacher_check(teacher: ShapesFlowNet, cfg_scale: float, samples_per_prompt: int = 8, steps: int = 50,
                  seed: int = 1234) -> dict[str, Any]:
    """GenEval figures of the teacher's 50-step Euler CFG samples on the evaluation prompts (fixed
    seeds): the teacher's compositional accuracy, which should leave rewards headroom."""
    rows = [r for r in split_rows("eval") for _ in range(samples_per_prompt)]
    tokens = tokenize([r["prompt"] for r in rows])
    noise = torch.randn((len(rows), *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed))
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    x0 = euler_sample(lambda x, s: guided_velocity(teacher, x, s, tokens, cfg_scale), noise, sigmas)
    scores = geneval_scores(decode_slots(x0), rows)
    return {**{k: round(v, 4) for k, v in scores.items()}, "cfg_scale": cfg_scale, "steps": steps,
            "samples_per_prompt": samples_per_prompt, "seed": seed}
