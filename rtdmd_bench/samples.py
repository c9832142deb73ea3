"""Sampling for evaluation and the on-disk sample cache (used by rtdmd_bench.evaluate).

Samples are cached per (who generated them: run + checkpoint, or the teacher and its sampler;
the prompt-set hash; the latent shape, i.e. the resolution; prompt index; seed), one file per
prompt, so that
- evaluating a second suite on the same prompts generates nothing new,
- an interrupted evaluation resumes where it stopped,
- scores do not depend on the generation batch size: image j of prompt i always starts from
  noise seeded by (seed, i, j), and so does every CPS step's noise,
- a sampler's cache folder names the schedule it walks and a digest of its sigmas, so a change of
  schedule (the teacher's Euler now follows the base's scheduler) never reuses stale images, and
  the latent shape, so images of one resolution are never served for another,
- generation shards across processes (`accelerate launch -m rtdmd_bench eval ...`): rank r
  generates the prompts i with i % world == r into the shared cache, then rank 0 gathers them
  from the cache and scores (the cache is the gather; results equal a single-process run).
The cache is derived data: an entry is checked when read (it loads, and holds the prompt's images
as float32), and a bad one (a truncated file, say) is generated again, with a warning naming it,
and overwritten atomically. A run's samples are keyed by its checkpoint's content
(`evaluate.checkpoint_tag`), not only its step, so a run trained again into the same folder never
scores the old run's images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from rtdmd_bench.core import sampling
from rtdmd_bench.core.rl import stable_seed
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_write_bytes
from rtdmd_bench.runs import WRITE_ERRORS, write_failure


SamplerKind = Literal["cps", "euler", "euler-pipeline", "euler-few-step"]
SAMPLER_KINDS: tuple[str, ...] = get_args(SamplerKind)


@dataclass
class SamplerSpec:
    """Who samples and how: the student (a run's EMA generator) or the teacher."""

    role: str
    """"student" | "teacher"."""
    num_steps: int
    """Sampler steps N."""
    kind: SamplerKind = "cps"
    """"cps": the few-step stochastic CPS sampler (`eta`) on the base's few-step schedule `sigmas(N)`.
    "euler": deterministic Euler x <- x + (sigma' - sigma) v (diffusers'
    `FlowMatchEulerDiscreteScheduler.step`) on the teacher's own schedule `teacher_sigmas(N)`:
    the base's scheduler after `set_timesteps(N)`, as RTDMD's normal inference mode sets it.
    "euler-pipeline": the same on the schedule the base's diffusers pipeline sets (differs from
    "euler" on FLUX, whose pipelines pass sigmas linspace(1, 1/N, N)).
    "euler-few-step": Euler on the few-step formula `sigmas(N)` (the suite's "euler" before it
    followed the scheduler; on SD3 at 28 steps it stops at sigma 0.1 instead of 0.0089)."""
    eta: float = 0.9
    """CPS noise level (cps only)."""
    cfg: float | None = None
    """Teacher guidance scale; None = the base's default. Ignored for the student."""
    tag: str = ""
    """Identifies the weights in the cache key (a run's: its name, checkpoint and checkpoint content
    digest, `evaluate.checkpoint_tag`; a teacher's: the base)."""

    def __post_init__(self) -> None:
        if self.kind not in SAMPLER_KINDS:
            raise UserError(f"unknown sampler {self.kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
        if self.role not in ("student", "teacher"):
            raise UserError(f"unknown sampler role {self.role!r}; valid: student, teacher")

    @property
    def schedule(self) -> str:
        """Which schedule the sampler walks: "few-step" (`Base.sigmas`), "teacher" or
        "teacher-pipeline" (`Base.teacher_sigmas`)."""
        return {"cps": "few-step", "euler-few-step": "few-step", "euler": "teacher",
                "euler-pipeline": "teacher-pipeline"}[self.kind]

    def sigmas(self, base: Any) -> Tensor:
        """(num_steps + 1,) the sigmas this sampler walks on `base`."""
        if self.schedule == "few-step":
            return base.sigmas(self.num_steps)
        return base.teacher_sigmas(self.num_steps, pipeline=self.schedule == "teacher-pipeline")

    def key(self, sigmas: Tensor) -> str:
        """Cache folder name: who, how, and a digest of the sigmas walked, so images made on one
        schedule are never served for another (e.g. after a base's schedule changes)."""
        digest = hashlib.sha256(sigmas.detach().double().cpu().numpy().tobytes()).hexdigest()[:8]
        return (f"{self.role}-{self.kind}{self.num_steps}-{self.schedule}{digest}-eta{self.eta}"
                f"-cfg{self.cfg}-{self.tag}")

    def record(self, base: Any) -> dict[str, Any]:
        """What the results JSON says about the sampler: the spec, its schedule and the sigmas."""
        return {**dataclasses.asdict(self), "schedule": self.schedule,
                "sigmas": [round(float(v), 8) for v in self.sigmas(base)]}

    @classmethod
    def student(cls, method_cfg: Any, tag: str = "") -> "SamplerSpec":
        """The trained student's own sampler: `num_steps` and `eta` from the method config, or
        from the nested config that holds them (rtdmd's `stage1`, which also defines stage 2's
        rollouts)."""
        for c in (method_cfg, *(getattr(method_cfg, f.name) for f in dataclasses.fields(method_cfg))):
            if dataclasses.is_dataclass(c) and hasattr(c, "num_steps"):
                return cls(role="student", num_steps=int(c.num_steps), eta=float(getattr(c, "eta", 0.9)), tag=tag)
        raise UserError(f"method config {type(method_cfg).__name__} has no num_steps: cannot sample its student")


FIDT_TEACHER = SamplerSpec(role="teacher", num_steps=50, kind="euler")
"""The teacher reference of FID-T when the caller gives none: 50 Euler steps on the teacher's own
schedule, at the base's default guidance."""


@dataclass
class GenStats:
    generated: int = 0  # images generated now
    cached: int = 0  # images read from the cache


def prompt_set_hash(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:12]


def _noises(shape: tuple[int, ...], seed: int, prompt_index: int, js: range, num_steps: int,
            keep: int | None = None) -> Tensor:
    """(num_steps + 1, len(js), *shape): initial noise and each step's CPS noise, per image; only the
    first `keep` rows when given (Euler needs the initial noise alone: the draw is the same, but a
    50-step teacher at 1024 px does not hold 51 latents per image).

    Small draws are remembered (`_NOISE_MEMO`): a training run's curve evaluates the same prompts
    and seeds at every point, and one generator per image is most of a toy evaluation's cost."""
    key = (tuple(shape), seed, prompt_index, js.start, js.stop, js.step, num_steps, keep)
    if key in _NOISE_MEMO:
        _NOISE_MEMO.move_to_end(key)
        return _NOISE_MEMO[key].clone()
    out = []
    for j in js:
        g = torch.Generator().manual_seed(stable_seed("eval", seed, prompt_index, j))
        out.append(torch.randn((num_steps + 1, *shape), generator=g)[:keep])
    z = torch.stack(out, dim=1)
    if z.numel() * z.element_size() <= _NOISE_MEMO_BYTES // 16:
        _NOISE_MEMO[key] = z.clone()
        while sum(t.numel() * t.element_size() for t in _NOISE_MEMO.values()) > _NOISE_MEMO_BYTES:
            _NOISE_MEMO.popitem(last=False)
    return z


_NOISE_MEMO: OrderedDict[tuple[Any, ...], Tensor] = OrderedDict()  # least recently used first
_NOISE_MEMO_BYTES = 64 << 20  # a few toy or digits evaluations; a real base's latents are not kept


def sample_latents(base: Any, spec: SamplerSpec, cond: Any, z: Tensor, sigmas: Tensor | None = None) -> Tensor:
    """(B, *latent_shape) final latents of the spec's sampler, without grad.

    z: (K, B, *latent_shape); z[0] is the initial latent at sigma 1, z[j + 1] the CPS noise of step j
    (K = num_steps + 1 for CPS; Euler reads z[0] only). The teacher is guided as the diffusers
    pipelines do: v = v_uncond + w (v_cond - v_uncond), w = `spec.cfg` or the base's default."""
    sigmas = spec.sigmas(base) if sigmas is None else sigmas
    cfg = (base.default_cfg if spec.cfg is None else spec.cfg) if spec.role == "teacher" else None
    velocity = sampling.base_velocity(base, spec.role, cond, cfg=cfg)
    with torch.no_grad():
        if spec.kind == "cps":
            return sampling.rollout(velocity, z[0], sigmas, spec.eta, lambda j: z[j + 1]).xs[-1]
        return sampling.euler_sample(lambda x, s: velocity(x, s, None), z[0], sigmas)


def generate_prompt(base: Any, spec: SamplerSpec, prompt: str, prompt_index: int, n: int, seed: int,
                    batch_size: int) -> Tensor:
    """Decoded samples (n, ...) for one prompt, batch-size independent."""
    sigmas = spec.sigmas(base)
    chunks = []
    for start in range(0, n, batch_size):
        js = range(start, min(n, start + batch_size))
        z = _noises(tuple(base.latent_shape), seed, prompt_index, js, spec.num_steps,
                    keep=None if spec.kind == "cps" else 1)
        x = sample_latents(base, spec, base.encode([prompt] * len(js)), z, sigmas)
        with torch.no_grad():
            chunks.append(base.decode(x).float().cpu())
    return torch.cat(chunks)


def shard() -> tuple[int, int]:
    """(rank, world size) of this process in a torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cache_folder(cache_dir: Path, base: Any, spec: SamplerSpec, prompts: Sequence[str], images_per_prompt: int,
                 seed: int, create: bool = True) -> Path:
    """<cache>/<sampler key>/<prompt-set hash>-n<images>-seed<seed>-lat<latent shape>/ (created unless
    `create` is False). The latent shape names the resolution the base renders at."""
    shape = "x".join(str(int(d)) for d in base.latent_shape)
    set_folder = f"{prompt_set_hash(list(prompts))}-n{images_per_prompt}-seed{seed}-lat{shape}"
    folder = Path(cache_dir) / spec.key(spec.sigmas(base)) / set_folder
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_file(folder: Path, prompt_index: int) -> Path:
    """Where a `cache_folder` holds the samples of prompt `prompt_index`."""
    return folder / f"{prompt_index:05d}.safetensors"


def cached_samples(cache_dir: Path, base: Any, spec: SamplerSpec, prompts: Sequence[str], images_per_prompt: int,
                   seed: int, prompt_index: int) -> Tensor | None:
    """(images_per_prompt, ...) samples of prompt `prompt_index` if `generate` cached them under
    `cache_dir` with these arguments, else None."""
    path = cache_file(cache_folder(cache_dir, base, spec, prompts, images_per_prompt, seed, create=False), prompt_index)
    return _load(path, images_per_prompt) if path.exists() else None


def _load(path: Path, n: int) -> Tensor | None:
    """The `n` images a cache entry holds; None, with a warning naming the file, when it does not
    read back as (n, ...) float32 images (the caller generates them again and overwrites it)."""
    try:
        images = load_file(str(path))["images"]
    except (SafetensorError, OSError, KeyError) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    else:
        if images.ndim >= 2 and images.shape[0] == n and images.dtype == torch.float32:
            return images
        problem = f"holds {tuple(images.shape)} {images.dtype} instead of {n} float32 images"
    warnings.warn(f"sample cache entry {path} is {problem}; generating it again", stacklevel=3)
    return None


def _store(path: Path, images: Tensor) -> None:
    """Write one prompt's samples atomically: a reader never sees half a file."""
    try:
        atomic_write_bytes(path, save({"images": images.contiguous()}))
    except WRITE_ERRORS as e:
        raise write_failure(path, e, "Samples cached before it are kept; free space on that disk (or make the folder "
                            "writable) and run the evaluation again: it generates only what is missing.") from None


def generate(base: Any, spec: SamplerSpec, prompts: Sequence[str], images_per_prompt: int, seed: int,
             cache_dir: Path | None, batch_size: int = 256, stats: GenStats | None = None,
             progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Samples for every prompt, prompt-major; cached per prompt under cache_dir. In a process
    group, each rank first generates its share of the prompts into the cache, then every rank
    reads the whole set back. `progress(done, total)` after each prompt (in a process group: of
    this rank's share)."""
    stats = stats if stats is not None else GenStats()
    rank, world = shard()
    if world > 1 and cache_dir is not None:
        mine = [i for i in range(len(prompts)) if i % world == rank]
        _generate_into_cache(base, spec, prompts, mine, images_per_prompt, seed, cache_dir, batch_size, stats, progress)
        barrier()
    folder = None
    if cache_dir is not None:
        folder = cache_folder(cache_dir, base, spec, prompts, images_per_prompt, seed)
    out = []
    for i, prompt in enumerate(prompts):
        path = cache_file(folder, i) if folder else None
        cached = _load(path, images_per_prompt) if path is not None and path.exists() else None
        if world > 1 and cached is not None:
            out.append(cached)  # made by another rank or earlier: no count
            continue
        if cached is not None:
            images = cached
            stats.cached += images.shape[0]
        else:
            images = generate_prompt(base, spec, prompt, i, images_per_prompt, seed, batch_size)
            stats.generated += images.shape[0]
            if path is not None:
                _store(path, images)
        out.append(images)
        if progress is not None:
            progress(i + 1, len(prompts))
    return torch.cat(out)


def _generate_into_cache(base: Any, spec: SamplerSpec, prompts: Sequence[str], indices: list[int],
                         images_per_prompt: int, seed: int, cache_dir: Path, batch_size: int, stats: GenStats,
                         progress: Callable[[int, int], None] | None = None) -> None:
    """This process's share `indices` into the cache; `progress(done, len(indices))` after each."""
    folder = cache_folder(cache_dir, base, spec, prompts, images_per_prompt, seed)
    for done, i in enumerate(indices, 1):
        path = cache_file(folder, i)
        if path.exists() and _load(path, images_per_prompt) is not None:
            stats.cached += images_per_prompt
        else:
            images = generate_prompt(base, spec, prompts[i], i, images_per_prompt, seed, batch_size)
            stats.generated += images.shape[0]
            _store(path, images)
        if progress is not None:
            progress(done, len(indices))
