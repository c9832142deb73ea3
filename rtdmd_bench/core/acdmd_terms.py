"""AC-DMD ("ambient-consistent" DMD) terms shared by `acdmd` and `rtdmd` (METHODS.md 3, 4.4-4.5).

`acdmd` is RTDMD's stage 1; `rtdmd` reuses the same fake-score step (stage 2, step 4) and the
same generator DM term on its deterministic last step (stage 2, step 5). Both methods compose
these functions instead of importing one another. The hyper-parameters live in one config
dataclass, `ACDMDConfig`: it is `acdmd`'s Config and `rtdmd`'s nested `stage1` config.

Sources: the formulas are METHODS.md section 3 (read from the official code Harahan/RTDMD,
`rtdmd/trainers/ac_dmd_trainer.py`, `ac_dmd_mixin.py`, `ac_dmd_utils.py`); the defaults are the
official `configs/cold_start/sd3m.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor

from rtdmd_bench.core import dmd, optim, rl, sampling
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.ranges import AdamBeta, NonNegative, PositiveInt, Unit

TimeDist = Literal["uniform", "logit_normal"]
VelocityAt = Callable[[Tensor, Tensor], Tensor]  # (x (B, ...), sigma (B,)) -> v (B, ...)


@dataclass
class ACDMDConfig:
    """AC-DMD hyper-parameters; defaults are the official cold-start (stage-1) config."""

    num_steps: PositiveInt = 4
    """Student sampling steps N (timesteps 1000, 750, 500, 250 before the base's shift)."""
    eta: Unit = 0.9
    """CPS stochasticity of the rollout and of the AC transitions (official cps_eta 0.9)."""
    lr_generator: NonNegative = 3e-5
    """AdamW learning rate of the generator (official SD3/SD3.5: 3e-5; FLUX.2: 1e-6)."""
    lr_fake: NonNegative = 3e-5
    """AdamW learning rate of the fake score (official: same as the generator)."""
    betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    """AdamW betas of both networks (official: 0.9, 0.999)."""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay of both networks (official: 0)."""
    grad_clip: NonNegative = 1.0
    """Gradient-norm clip of both networks (official max_grad_norm 1)."""
    num_fake_per_gen: PositiveInt = 10
    """TTUR: fake-score steps per generator step (official fake_update_ratio 10)."""
    ema_decay: Unit = 0.99
    """Generator EMA decay, updated every iteration (official ema_decay 0.99, ema_every 1)."""
    cfg: float | None = None
    """Teacher guidance scale in the DM gradient; None = the base's default (official SD3-M: 7)."""
    dm_normalize: Literal["mean_abs", "none"] = "mean_abs"
    """Per-sample normalisation of the DM gradient (official gradient_normalization: true)."""
    fake_weighting: Literal["official", "none"] = "official"
    """Ambient fake-score loss weight: min(1, 10 b^2) (official clamp of 1/b^2 at 10) or 1."""
    consistency: bool = True
    """Ablation: the consistency regulariser on the fake score (METHODS.md 3.4)."""
    consistency_weight: NonNegative = 0.01
    """Weight of the consistency regulariser (official 1e-2)."""
    consistency_max_delta: Unit = 0.2
    """t' = max(t - delta, 0) with delta ~ U{1..1000 x this}/1000 (official 200 timesteps)."""
    random_stop: bool = True
    """Random-stop rollout k ~ U{1..N} (official random_stop_idx); False always runs N steps."""
    renoise_offset: Unit = 0.01
    """Re-noising levels start at s + this (official timestep_offset 10 of 1000)."""
    t_min: Unit = 0.02
    """Lowest re-noising level (official min_renoise_step 20 of 1000)."""
    t_max: Unit = 0.98
    """Highest re-noising level (official max_renoise_step 980 of 1000)."""
    fake_t_dist: TimeDist = "uniform"
    """Fake-score re-noising level within [s + offset, 1]: uniform (official with AC-DMD on) or
    logit-normal(0, 1) mapped into the interval (the official plain fake-score distribution,
    METHODS.md section 9). The generator's DM levels stay uniform (official stage 1)."""
    fake_step_conditioning: bool = False
    """Ablation: give the fake score the index of the sampler step whose output it models (off in
    the papers; see METHODS.md section 2)."""


@dataclass
class SubInterval:
    """A generator output x_s at level s re-noised to t > s (METHODS.md 3.2)."""

    x_s: Tensor  # (B, ...) detached
    s: Tensor  # (B,)
    t: Tensor  # (B,)
    noise: Tensor  # (B, ...) n
    x_t: Tensor  # (B, ...) a x_s + b n


def renoise_level(s: Tensor, gen: BatchRandom, dist: TimeDist, offset: float, t_min: float,
                  t_max: float) -> Tensor:
    """(B,) t in [s + offset, 1], clamped to [t_min, t_max] and kept above s.

    uniform: the official AC sampler (`_sample_ac_timesteps`); logit_normal: sigmoid(N(0,1))
    mapped affinely into the interval (a suite choice; at s = 0, offset = 0 it is exactly the
    official logit-normal(0, 1) within [t_min, t_max])."""
    u = gen.rand(s.shape) if dist == "uniform" else torch.sigmoid(gen.randn(s.shape))
    lo = s + offset
    t = (lo + (1 - lo) * u).clamp(t_min, t_max)
    # The clamp must never put t at or below s: the re-noising std b would be 0 (target undefined).
    return torch.maximum(t, lo.clamp(max=1 - 1e-4))


def sub_interval(x_s: Tensor, s: Tensor, t: Tensor, gen: BatchRandom) -> SubInterval:
    """Draw n and form x_t = a x_s + b n from a detached x_s (the networks at x_t get no grad)."""
    x_s = x_s.detach()
    noise = gen.randn(x_s.shape).to(x_s)
    return SubInterval(x_s, s, t, noise, sampling.renoise(x_s, s, t, noise))


def fake_score_loss(fake: VelocityAt, sub: SubInterval, cfg: ACDMDConfig, gen: BatchRandom,
                    consistency: bool) -> tuple[Tensor, dict[str, float]]:
    """AC-DMD fake-score loss: weighted MSE to the ambient target + consistency regulariser.

    `fake(x, sigma)` is the fake score with grad (its step conditioning already bound).
    Loss = mean_b w_b mean_d (v_phi - v*)^2 + lambda_c L_cons (official `_update_fake_score`)."""
    v = fake(sub.x_t, sub.t)  # (B, ...) with grad
    target = dmd.ambient_target(sub.x_s, sub.s, sub.t, sub.noise)
    w = dmd.ambient_weight(sub.s, sub.t, cfg.fake_weighting).to(v)  # (B,)
    loss_ac = (((v - target) ** 2).flatten(1).mean(dim=1) * w).mean()
    logs = {"loss_fake_ac": float(loss_ac.detach())}
    if not (consistency and cfg.consistency_weight > 0):
        return loss_ac, logs
    # delta ~ U{1..200}/1000 per sample, t' = max(t - delta, 0) (official consistency_epsilon 200).
    steps = max(1, round(cfg.consistency_max_delta * 1000))
    delta = gen.randint(1, steps + 1, sub.t.shape).to(sub.t) / 1000
    t_next = (sub.t - delta).clamp_min(0.0)
    noise1 = gen.randn(sub.x_t.shape).to(v)
    noise2 = gen.randn(sub.x_t.shape).to(v)
    x_t, t = sub.x_t, sub.t

    def h(x: Tensor, sigma: Tensor) -> Tensor:
        # x0-prediction of the fake score. The anchor h(x_t, t) reuses v (official: h_anchor from
        # v_pred_end) instead of paying a third fake forward.
        vel = v if x is x_t else fake(x, sigma)
        return sampling.x0_from_velocity(x, sigma, vel)

    loss_cons = dmd.consistency_loss(h, x_t, t, v, t_next, cfg.eta, noise1, noise2)
    logs["loss_consistency"] = float(loss_cons.detach())
    return loss_ac + cfg.consistency_weight * loss_cons, logs


def generator_dm_loss(x_s: Tensor, sub: SubInterval, v_real: Tensor, v_fake: Tensor, eta: float,
                      noise: Tensor, normalize: Literal["mean_abs", "none"], mask: Tensor | None = None,
                      kept: float | None = None) -> Tensor:
    """AC-DMD generator loss (METHODS.md 3.5): map teacher and fake predictions at (x_t, t) back to
    s with one shared-noise CPS transition each; g = (xs_fake - xs_real) / mean|x_s - xs_real|;
    loss 0.5 MSE(x_s, sg(x_s - g)). x_s carries the generator's graph; v_real, v_fake are detached.
    `mask` (B,) bool: the mean over the kept rows only (`rl.masked_mean`, with its `kept`)."""
    xs_real, xs_fake = dmd.shared_noise_cps_pair(sub.x_t, sub.t, v_real.detach(), v_fake.detach(),
                                                 sub.s, eta, noise)
    g = dmd.dmd_gradient(x_s.detach(), xs_fake, xs_real, normalize)
    if mask is None:
        return dmd.dmd_generator_loss(x_s, g)
    return rl.masked_mean(dmd.dmd_generator_loss_per_row(x_s, g), mask, kept)


def random_stop_rollout(base: Any, cond: Any, n: int, sigmas: Tensor, cfg: ACDMDConfig,
                        gen: BatchRandom, grad: bool) -> tuple[Tensor, Tensor, int]:
    """Stage-1 rollout (METHODS.md 3.1): k ~ U{1..N} CPS steps (the same k on every rank: it comes
    from the batch seed), grad only through step k. Returns x_s (B, ...) the output of step k at
    its next level, s (B,) that level (0 when k = N, where x_s = x0_hat), and k - 1."""
    k = gen.integer(1, cfg.num_steps + 1) if cfg.random_stop else cfg.num_steps
    noise = gen.randn((n, *base.latent_shape))
    velocity = sampling.base_velocity(base, "student", cond)
    with torch.set_grad_enabled(grad):
        r = sampling.rollout(velocity, noise, sigmas, cfg.eta,
                             lambda j: gen.randn(noise.shape), num_steps=k)
    s = sigmas[k].expand(n).to(r.xs[-1])
    return r.xs[-1], s, k - 1


def fake_velocity(base: Any, cond: Any, step_index: int, conditioned: bool) -> VelocityAt:
    """The fake score as (x, sigma) -> v; with `conditioned` (the fake_step_conditioning ablation)
    it is told the index of the sampler step whose output it models."""
    def fn(x: Tensor, sigma: Tensor) -> Tensor:
        step = torch.full((x.shape[0],), step_index, dtype=torch.long) if conditioned else None
        return base.velocity("fake", x, sigma, cond, step=step)
    return fn


def stage1_fake_loss(base: Any, cfg: ACDMDConfig, cond: Any, n: int, sigmas: Tensor,
                     gen: BatchRandom) -> tuple[Tensor, dict[str, float]]:
    """Stage-1 fake-score loss on a fresh no-grad random-stop rollout (official `_update_fake_score`)."""
    with torch.no_grad():
        x_s, s, k = random_stop_rollout(base, cond, n, sigmas, cfg, gen, grad=False)
    t = renoise_level(s, gen, cfg.fake_t_dist, cfg.renoise_offset, cfg.t_min, cfg.t_max)
    fake = fake_velocity(base, cond, k, cfg.fake_step_conditioning)
    return fake_score_loss(fake, sub_interval(x_s, s, t, gen), cfg, gen, cfg.consistency)


def stage1_generator_loss(base: Any, cfg: ACDMDConfig, cond: Any, n: int, sigmas: Tensor,
                          gen: BatchRandom, guidance: float | None) -> tuple[Tensor, dict[str, float]]:
    """Stage-1 generator loss on a fresh random-stop rollout with grad through step k (official
    `_update_generator`); the DM levels are uniform in the sub-interval (official stage 1)."""
    x_s, s, k = random_stop_rollout(base, cond, n, sigmas, cfg, gen, grad=True)
    t = renoise_level(s, gen, "uniform", cfg.renoise_offset, cfg.t_min, cfg.t_max)
    sub = sub_interval(x_s, s, t, gen)
    with torch.no_grad():
        v_real = base.velocity("teacher", sub.x_t, sub.t, cond, cfg=guidance)
        v_fake = fake_velocity(base, cond, k, cfg.fake_step_conditioning)(sub.x_t, sub.t)
    noise = gen.randn(sub.x_t.shape).to(sub.x_t)  # shared by both CPS mappings
    loss = generator_dm_loss(x_s, sub, v_real, v_fake, cfg.eta, noise, cfg.dm_normalize)
    return loss, {"loss_dm": float(loss.detach()), "gen/stop_step": float(k + 1)}


def final_sample_fake_loss(base: Any, cfg: ACDMDConfig, x0: Tensor, cond: Any, gen: BatchRandom,
                           consistency: bool, plain: bool) -> tuple[Tensor, dict[str, float]]:
    """Fake-score loss on final samples (s = 0, RTDMD stage 2 step 4; official
    `_train_fake_score_ac_from_rollout` on the last step). The ambient target at s = 0 is n - x0;
    `plain` = DMD's unweighted flow matching at uniform levels, without consistency."""
    s = torch.zeros(x0.shape[0])
    fake = fake_velocity(base, cond, cfg.num_steps - 1, cfg.fake_step_conditioning)
    if plain:
        sub = sub_interval(x0, s, renoise_level(s, gen, "uniform", 0.0, cfg.t_min, cfg.t_max), gen)
        return dmd.flow_matching_loss(fake(sub.x_t, sub.t), sub.x_s, sub.noise), {}
    t = renoise_level(s, gen, cfg.fake_t_dist, cfg.renoise_offset, cfg.t_min, cfg.t_max)
    return fake_score_loss(fake, sub_interval(x0, s, t, gen), cfg, gen, consistency)


def final_sample_dm_loss(base: Any, cfg: ACDMDConfig, x0_hat: Tensor, cond: Any, gen: BatchRandom,
                         dist: TimeDist, offset: float, guidance: float | None, mask: Tensor | None = None,
                         kept: float | None = None) -> Tensor:
    """DM loss on a final-step x0_hat (s = 0; RTDMD stage 2's last step, official
    `_compute_aux_loss_ac_dmd`). At s = 0 the shared-noise CPS mapping to sigma 0 is deterministic,
    so this is exactly the DMD gradient on x0 at the drawn level. `mask`/`kept`: the mean over the
    samples the GRPO filter kept (official: the last-step terms see only the filtered batch)."""
    s = torch.zeros(x0_hat.shape[0])
    sub = sub_interval(x0_hat, s, renoise_level(s, gen, dist, offset, cfg.t_min, cfg.t_max), gen)
    with torch.no_grad():
        v_real = base.velocity("teacher", sub.x_t, sub.t, cond, cfg=guidance)
        v_fake = fake_velocity(base, cond, cfg.num_steps - 1, cfg.fake_step_conditioning)(sub.x_t, sub.t)
    noise = gen.randn(sub.x_t.shape).to(sub.x_t)
    return generator_dm_loss(x0_hat, sub, v_real, v_fake, cfg.eta, noise, cfg.dm_normalize, mask, kept)


@dataclass
class TrainState:
    """The trainable state of a generator + fake-score method: parameters, optimisers, EMA."""

    student: list[torch.nn.Parameter]
    fake: list[torch.nn.Parameter]
    opt_g: torch.optim.Optimizer
    opt_f: torch.optim.Optimizer
    ema: EMA

    def state_dict(self, base: Any) -> dict[str, Any]:
        return {"student": base.state_dict("student"), "fake": base.state_dict("fake"),
                "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_f": self.opt_f.state_dict()}

    def load_state_dict(self, base: Any, state: dict[str, Any]) -> None:
        base.load_state_dict("student", state["student"])
        base.load_state_dict("fake", state["fake"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_f.load_state_dict(state["opt_f"])


def stage1_state(base: Any, cfg: ACDMDConfig) -> TrainState:
    """AdamW for both networks and the generator EMA with the AC-DMD hyper-parameters."""
    student, fake = base.trainable("student"), base.trainable("fake")
    return TrainState(student, fake, optim.adamw(student, cfg.lr_generator, cfg.betas, cfg.weight_decay),
                      optim.adamw(fake, cfg.lr_fake, cfg.betas, cfg.weight_decay), EMA(student, cfg.ema_decay))


def stage1_step(base: Any, cfg: ACDMDConfig, state: TrainState, sigmas: Tensor, prompts: Sequence[Sequence[str]],
                gens: Sequence[BatchRandom], step: int) -> dict[str, float]:
    """One AC-DMD iteration (official `DMDTrainer.train_step` order): a fake-score step; when
    (step + 1) % num_fake_per_gen == 0 a generator step (TTUR); the generator EMA every iteration
    (official ema_every 1). Each optimiser step accumulates the gradients of the process's
    micro-batches: `prompts[c]` are micro-batch c's rows and `gens[c]` its random stream (the
    method passes `chunk.local(chunk.prompts)` and `chunk.random()` of each `Batch.chunks()`), so
    all randomness comes from the batch seed (a resumed run reproduces exactly; every rank draws
    the same stop index and its own rows' noise). Each stream continues across the two phases."""
    conds = [(base.encode(p), len(p)) for p in prompts]
    fake_logs: list[dict[str, float]] = []

    def fake_losses() -> Iterator[Tensor]:
        for gen, (cond, n) in zip(gens, conds):
            loss, logs = stage1_fake_loss(base, cfg, cond, n, sigmas, gen)
            fake_logs.append(logs)
            yield loss

    loss_f, _ = optim.accumulated_step(state.opt_f, fake_losses(), len(conds), state.fake, cfg.grad_clip,
                                       step, "loss_fake")
    logs = {**mean_logs(fake_logs), "loss_fake": loss_f}
    if (step + 1) % cfg.num_fake_per_gen == 0:
        guidance = base.default_cfg if cfg.cfg is None else cfg.cfg
        gen_logs: list[dict[str, float]] = []

        def generator_losses() -> Iterator[Tensor]:
            for gen, (cond, n) in zip(gens, conds):
                loss, logs_c = stage1_generator_loss(base, cfg, cond, n, sigmas, gen, guidance)
                gen_logs.append(logs_c)
                yield loss

        _, norm = optim.accumulated_step(state.opt_g, generator_losses(), len(conds), state.student,
                                         cfg.grad_clip, step, "loss_dm")
        logs.update(mean_logs(gen_logs), **{"gen/grad_norm": norm})
    state.ema.update()
    return logs


def mean_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    """Per-key means of the micro-batches' scalar logs (equal-size micro-batches: the step's mean)."""
    if len(logs) == 1:
        return logs[0]
    return {k: sum(d[k] for d in logs) / len(logs) for k in logs[0]}
