"""`toy-tilt`: distances of toy2d samples to the exact reward-tilted target and to the teacher.

The target is p*(x) ∝ p_teacher(x) exp(r(x)/beta), r = sum_k w_k r_k (METHODS.md sections 4
and 8). When every reward is exactly quadratic/linear (`quadratic_form()`), p* is a Gaussian
mixture in closed form (`toy_mixture.tilt_mixture`); otherwise it is computed by quadrature on
a fine grid and labelled `numerical-grid`. Without rewards, p* is the teacher.

Metrics per prompt, then averaged over prompts (all lower-is-better except rewards):
- kl_target / kl_teacher: KL(p_theta || q) = -H(p_theta) - E_theta[log q], H by the
  Kozachenko-Leonenko k-NN entropy estimator; kl_floor: the same estimator on exact target
  samples of the same size (its bias + noise: a perfect generator scores about this).
- mmd: unbiased MMD^2 with a Gaussian kernel; energy_distance: unbiased energy distance;
  both against exact target samples, on subsamples of `mmd_samples` points.
- mode_mass_error: total variation between the fraction of samples assigned to each target
  component (highest responsibility) and the target's component weights.
- mean_reward (weighted total) and reward = {name: mean} (unweighted, per reward; report.py
  flattens it to reward.<name> columns, as for the digits suite).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from torch import Tensor

from rtdmd_bench.compute import unmetered
from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from rtdmd_bench.ranges import NonNegative, Positive, PositiveInt
from rtdmd_bench.toy_mixture import GridTarget, Mixture, tilt_mixture


# ---------------------------------------------------------------- estimators (pure functions)
def knn_entropy(x: np.ndarray, k: int) -> tuple[float, int]:
    """Kozachenko-Leonenko entropy (nats) of samples x (N, d); returns (H, #zero distances).

    H = psi(N) - psi(k) + log V_d + (d/N) sum_i log r_i,k with r_i,k the distance to the k-th
    neighbour and V_d the unit-ball volume (Kozachenko & Leonenko 1987; Kraskov et al. 2004,
    eq. 20). Duplicated points (a collapsed generator) have r = 0 and H -> -inf; their distance
    is floored at 1e-12 and the count is returned so the result says so."""
    n, d = x.shape
    if n <= k:
        raise UserError(f"k-NN entropy needs more than k={k} samples per prompt, got {n}")
    dist, _ = cKDTree(x).query(x, k=k + 1)  # column 0 is the point itself
    r = dist[:, k]
    zeros = int((r <= 0).sum())
    log_vd = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    h = digamma(n) - digamma(k) + log_vd + d * np.mean(np.log(np.maximum(r, 1e-12)))
    return float(h), zeros


def kl_estimate(x: np.ndarray, log_q: np.ndarray, k: int) -> tuple[float, int]:
    """KL(p || q) ≈ -H_kNN(x) - mean log q(x) for x ~ p (N, d); returns (KL, #zero distances)."""
    h, zeros = knn_entropy(x, k)
    return float(-h - log_q.mean()), zeros


def _mean_offdiag(m: Tensor) -> Tensor:
    n = m.shape[0]
    return (m.sum() - m.diagonal().sum()) / (n * (n - 1))


def two_sample_distances(x: Tensor, y: Tensor, bandwidth: float) -> tuple[float, float]:
    """(unbiased MMD^2, unbiased energy distance) of samples x (n, d), y (m, d).

    MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 h^2)) (Gretton et al. 2012, eq. 3); energy distance
    2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo 2013). Both share the pairwise distances."""
    d_xx, d_yy, d_xy = torch.cdist(x, x), torch.cdist(y, y), torch.cdist(x, y)

    def k(d: Tensor) -> Tensor:
        return torch.exp(-d.pow(2) / (2 * bandwidth ** 2))
    mmd2 = _mean_offdiag(k(d_xx)) + _mean_offdiag(k(d_yy)) - 2 * k(d_xy).mean()
    energy = 2 * d_xy.mean() - _mean_offdiag(d_xx) - _mean_offdiag(d_yy)
    return float(mmd2), float(energy)


# ---------------------------------------------------------------- the exact target
def _reward_names_forms(rewards: RewardSet) -> list[tuple[str, float, Any]]:
    out = []
    for name, reward in rewards.rewards.items():
        form_fn = getattr(reward, "quadratic_form", None)
        out.append((name, float(rewards.weights[name]), form_fn() if form_fn else None))
    return out


def exact_target(base: Any, rewards: RewardSet, prompt: str, grid_resolution: int = 400,
                 grid_margin: float = 6.0) -> Mixture | GridTarget:
    """p* ∝ p_teacher(. | prompt) exp(sum_k w_k r_k / beta), exact.

    Closed form (a Mixture) when every reward exposes `quadratic_form() -> (A, b)`; else a
    GridTarget over the teacher's support (means ± `grid_margin` max-std; rewards are bounded
    above, so the tilt cannot move mass outside it)."""
    teacher = base.teacher_mixture(prompt)
    if not rewards:
        return teacher
    if rewards.beta <= 0:
        raise UserError(f"beta must be positive for the tilted target, got {rewards.beta}")
    forms = _reward_names_forms(rewards)
    if all(f is not None for _, _, f in forms):
        a_mat = sum(w * torch.as_tensor(f[0], dtype=torch.float64) for _, w, f in forms)
        b_vec = sum(w * torch.as_tensor(f[1], dtype=torch.float64) for _, w, f in forms)
        return tilt_mixture(teacher, a_mat, b_vec, rewards.beta)

    def log_tilt(x: Tensor) -> Tensor:
        with torch.no_grad():
            return rewards.total(x, [prompt] * x.shape[0]).to(torch.float64) / rewards.beta

    spread = grid_margin * float(torch.linalg.eigvalsh(teacher.covs).max().sqrt())
    lo = teacher.means.min(0).values - spread
    hi = teacher.means.max(0).values + spread
    return GridTarget(teacher, log_tilt, lo, hi, grid_resolution)


def _config_of(obj: Any) -> Any:
    cfg = getattr(obj, "cfg", None)
    return asdict(cfg) if cfg is not None and is_dataclass(cfg) else None


class ToyTilt:
    """toy2d: KL/MMD/energy distance to the exact tilted target and the teacher, reward, modes."""

    name = "toy-tilt"
    version = "toy-tilt/1"
    higher_is_better = {"kl_target": False, "kl_teacher": False, "kl_floor": False, "mmd": False,
                        "energy_distance": False, "mode_mass_error": False, "mean_reward": True,
                        "reward": True}

    @dataclass
    class Config:
        prompts: tuple[str, ...] = ("all modes", "upper half", "left half", "modes 0 and 4")
        """Prompts to evaluate (names of the base's prompts; toy2d and toy2d-hard share them)."""
        images_per_prompt: PositiveInt = 5000
        """Generator samples per prompt (the KL estimator's bias shrinks with it)."""
        knn_k: PositiveInt = 5
        """k of the Kozachenko-Leonenko entropy estimator."""
        mmd_samples: PositiveInt = 2000
        """Points per side for MMD / energy distance (random subsample; O(n^2) cost)."""
        mmd_bandwidth: Positive = 0.5
        """Gaussian kernel bandwidth h (toy units; the toy's modes have std 0.3)."""
        grid_resolution: PositiveInt = 400
        """Cells per axis of the numerical-grid target (rewards without a closed-form tilt);
        400 gives ~10 cells per component std on the default toy."""
        grid_margin: NonNegative = 6.0
        """Grid extent beyond the teacher means, in units of the largest component std."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or self.Config()
        self.images_per_prompt = self.cfg.images_per_prompt
        if self.cfg.images_per_prompt <= self.cfg.knn_k or self.cfg.mmd_samples < 2:
            raise UserError("toy-tilt needs images_per_prompt > knn_k and mmd_samples >= 2")

    def prompts(self) -> list[str]:
        return list(self.cfg.prompts)

    def prepare(self) -> None:
        """Nothing to load: the exact target is computed from the base when scoring."""

    def bind(self, base: Any) -> None:
        """Check, before anything is generated, that the base knows every suite prompt
        (rtdmd_bench.evaluate calls this first); a missing one is a UserError naming the valid ones."""
        if not hasattr(base, "teacher_mixture"):
            raise UserError("suite toy-tilt needs a base with an exact teacher mixture: use --base "
                            "toy2d or toy2d-hard")
        for p in self.cfg.prompts:
            base.teacher_mixture(p)

    def target(self, base: Any, rewards: RewardSet, prompt: str) -> Mixture | GridTarget:
        return exact_target(base, rewards, prompt, self.cfg.grid_resolution, self.cfg.grid_margin)

    def score(self, images: Tensor, prompts: Sequence[str], ctx: EvalContext) -> dict[str, Any]:
        """images (P * images_per_prompt, 2), prompt-major; `prompts` the P distinct prompts
        (or the per-image list, prompt-major) in the same order."""
        n = self.images_per_prompt
        distinct = _distinct_prompts(prompts, n, images.shape[0])
        gen = torch.Generator().manual_seed(int(ctx.seed))
        per_prompt, setup = {}, {}
        with single_thread():  # small 2-D tensors: see core.threads.single_thread
            for i, prompt in enumerate(distinct):
                x = images[i * n:(i + 1) * n].detach().to("cpu", torch.float64)
                per_prompt[prompt], setup[prompt] = self.score_prompt(x, prompt, ctx, gen)
        metric_names = [k for k, v in next(iter(per_prompt.values())).items() if isinstance(v, float)]
        out: dict[str, Any] = {m: float(np.mean([p[m] for p in per_prompt.values()]))
                               for m in metric_names}
        if ctx.rewards:
            out["reward"] = {k: float(np.mean([p["reward"][k] for p in per_prompt.values()]))
                             for k in ctx.rewards.rewards}
        reported = metric_names + (["reward"] if ctx.rewards else [])
        out["higher_is_better"] = {m: self.higher_is_better[m] for m in reported}
        out["version"] = self.version
        out["per_prompt"] = per_prompt
        out["setup"] = {
            "prompts": setup,
            "rewards": {"names": list(ctx.rewards.rewards), "weights": dict(ctx.rewards.weights),
                        "configs": {k: _config_of(r) for k, r in ctx.rewards.rewards.items()},
                        "beta": ctx.rewards.beta},
            "samples": {"images_per_prompt": n, "num_prompts": len(distinct), "seed": int(ctx.seed)},
            "estimators": {
                "kl": f"Kozachenko-Leonenko k-NN entropy, k={self.cfg.knn_k}; KL = -H - E[log q]",
                "kl_floor": "same estimator on exact target samples of the same size",
                "mmd": f"unbiased MMD^2, Gaussian kernel exp(-|x-y|^2/(2h^2)), h={self.cfg.mmd_bandwidth}, "
                       f"{self.cfg.mmd_samples} points per side",
                "energy_distance": f"unbiased, {self.cfg.mmd_samples} points per side",
                "mode_mass_error": "TV between argmax-responsibility mode fractions and target weights",
                "config": asdict(self.cfg)},
        }
        return out

    def score_prompt(self, x: Tensor, prompt: str, ctx: EvalContext, gen: torch.Generator
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics, setup) for one prompt's samples x (n, 2) float64."""
        base, rewards, c = ctx.base, unmetered(ctx.rewards), self.cfg
        teacher = base.teacher_mixture(prompt)
        target = self.target(base, rewards, prompt)
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"toy-tilt: samples for {prompt!r} contain NaN/Inf; the generator diverged")
        n = x.shape[0]
        ref = target.sample(n, gen)  # (n, 2) exact target samples
        xs = x.numpy()
        kl_t, dup = kl_estimate(xs, target.log_prob(x).numpy(), c.knn_k)
        kl_teacher, _ = kl_estimate(xs, teacher.log_prob(x).numpy(), c.knn_k)
        kl_floor, _ = kl_estimate(ref.numpy(), target.log_prob(ref).numpy(), c.knn_k)
        m = min(c.mmd_samples, n)
        xa = x[torch.randperm(n, generator=gen)[:m]]
        ya = target.sample(m, gen)
        mmd2, energy = two_sample_distances(xa, ya, c.mmd_bandwidth)
        masses = torch.bincount(target.responsibilities(x).argmax(-1),
                                minlength=int(target.weights.shape[0])).double() / n
        metrics: dict[str, Any] = {
            "kl_target": kl_t, "kl_teacher": kl_teacher, "kl_floor": kl_floor,
            "mmd": mmd2, "energy_distance": energy,
            "mode_mass_error": float(0.5 * (masses - target.weights).abs().sum()),
        }
        if rewards:
            pts = x.float()
            with torch.no_grad():
                each = rewards.each(pts, [prompt] * n)
                metrics["mean_reward"] = float(sum(rewards.weights[k] * v for k, v in each.items()).mean())
                metrics["reward"] = {k: float(v.mean()) for k, v in each.items()}
        metrics["mode_masses"] = masses.tolist()
        metrics["target_mode_weights"] = target.weights.tolist()
        metrics["duplicate_points"] = dup
        setup = {"teacher": teacher.to_json(),
                 "target": ({"label": "closed-form", **target.to_json()} if isinstance(target, Mixture)
                            else target.to_json()),
                 "num_samples": n}
        return metrics, setup


def _distinct_prompts(prompts: Sequence[str], n: int, total: int) -> list[str]:
    """The P distinct prompts, from either that list or the per-image (prompt-major) list."""
    prompts = list(prompts)
    if n > 1 and len(prompts) == total:
        blocks = [prompts[i:i + n] for i in range(0, total, n)]
        if any(len(set(b)) != 1 for b in blocks):
            raise UserError("toy-tilt: per-image prompts must be prompt-major: images_per_prompt "
                            f"={n} consecutive samples per prompt")
        prompts = [b[0] for b in blocks]
    if len(prompts) * n != total:
        raise UserError(f"toy-tilt: got {total} samples for {len(prompts)} prompts; expected "
                        f"images_per_prompt={n} per prompt, ordered prompt-major")
    return prompts


def plot_samples_over_target(panels: dict[str, Tensor], base: Any, rewards: RewardSet, prompt: str,
                             path: str | Path, max_points: int = 3000, resolution: int = 300) -> Path:
    """One panel per named sample set (n, 2): samples over the exact target density; PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = unmetered(rewards)
    with single_thread():
        target = exact_target(base, rewards, prompt)
        teacher = base.teacher_mixture(prompt)
        spread = 6 * float(torch.linalg.eigvalsh(teacher.covs).max().sqrt())
        half = float(base.mixture.means.abs().max()) + spread
        axis = torch.linspace(-half, half, resolution, dtype=torch.float64)
        gx, gy = torch.meshgrid(axis, axis, indexing="xy")
        dens = target.log_prob(torch.stack([gx.flatten(), gy.flatten()], -1)).exp().reshape(gx.shape)
    label = "closed-form" if isinstance(target, Mixture) else target.label
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 4), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = pts.detach().cpu().double()[:max_points]
        # sqrt keeps low-mass target modes visible next to the dominant ones
        ax.imshow(dens.sqrt().numpy(), extent=(-half, half, -half, half), origin="lower", cmap="Blues")
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1, alpha=0.3, color="tab:red")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_aspect("equal")
    fig.suptitle(f"{prompt!r}: samples over the target p* ({label}, beta={rewards.beta:g})", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
