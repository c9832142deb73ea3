"""Evaluation engine: generate (cached on disk) -> score with suites -> eval/<suite>.json.

Samples are cached per (who generated them: run + checkpoint, or the teacher and its sampler;
the prompt-set hash; prompt index; seed), one file per prompt, so that
- evaluating a second suite on the same prompts generates nothing new,
- an interrupted evaluation resumes where it stopped,
- scores do not depend on the generation batch size: image j of prompt i always starts from
  noise seeded by (seed, i, j), and so does every CPS step's noise,
- a sampler's cache folder names the schedule it walks and a digest of its sigmas, so a change of
  schedule (the teacher's Euler now follows the base's scheduler) never reuses stale images,
- generation shards across processes (`accelerate launch -m rtdmd_bench eval ...`): rank r
  generates the prompts i with i % world == r into the shared cache, then rank 0 gathers them
  from the cache and scores (the cache is the gather; results equal a single-process run).
`evaluate_suites` is what `rtdmd-bench eval` runs: a run's generator or a base's teacher, suite by suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence, get_args

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from rtdmd_bench import registry
from rtdmd_bench.compute import unmetered
from rtdmd_bench.core import sampling
from rtdmd_bench.core.rl import stable_seed
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from rtdmd_bench.files import atomic_write_bytes
from rtdmd_bench.runs import atomic_write_json, git_commit, versions


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
    """Identifies the weights (run id + checkpoint) in the cache key."""

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
    50-step teacher at 1024 px does not hold 51 latents per image)."""
    out = []
    for j in js:
        g = torch.Generator().manual_seed(stable_seed("eval", seed, prompt_index, j))
        out.append(torch.randn((num_steps + 1, *shape), generator=g)[:keep])
    return torch.stack(out, dim=1)


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
    """<cache>/<sampler key>/<prompt-set hash>-n<images>-seed<seed>/ (created unless `create` is False)."""
    set_folder = f"{prompt_set_hash(list(prompts))}-n{images_per_prompt}-seed{seed}"
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
    return load_file(str(path))["images"] if path.exists() else None


def _store(path: Path, images: Tensor) -> None:
    """Write one prompt's samples atomically: a reader never sees half a file."""
    atomic_write_bytes(path, save({"images": images.contiguous()}))


def generate(base: Any, spec: SamplerSpec, prompts: Sequence[str], images_per_prompt: int, seed: int,
             cache_dir: Path | None, batch_size: int = 256, stats: GenStats | None = None,
             progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Samples for every prompt, prompt-major; cached per prompt under cache_dir. In a process
    group, each rank first generates its share of the prompts into the cache, then every rank
    reads the whole set back."""
    stats = stats if stats is not None else GenStats()
    rank, world = shard()
    if world > 1 and cache_dir is not None:
        mine = [i for i in range(len(prompts)) if i % world == rank]
        _generate_into_cache(base, spec, prompts, mine, images_per_prompt, seed, cache_dir, batch_size, stats)
        barrier()
    folder = None
    if cache_dir is not None:
        folder = cache_folder(cache_dir, base, spec, prompts, images_per_prompt, seed)
    out = []
    for i, prompt in enumerate(prompts):
        path = cache_file(folder, i) if folder else None
        if world > 1 and path is not None and path.exists():
            out.append(load_file(str(path))["images"])  # made by another rank or earlier: no count
            continue
        if path is not None and path.exists():
            images = load_file(str(path))["images"]
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
                         images_per_prompt: int, seed: int, cache_dir: Path, batch_size: int, stats: GenStats) -> None:
    folder = cache_folder(cache_dir, base, spec, prompts, images_per_prompt, seed)
    for i in indices:
        path = cache_file(folder, i)
        if path.exists():
            stats.cached += images_per_prompt
            continue
        images = generate_prompt(base, spec, prompts[i], i, images_per_prompt, seed, batch_size)
        stats.generated += images.shape[0]
        _store(path, images)


def build_suite(name: str, overrides: dict[str, Any] | None = None) -> Any:
    from rtdmd_bench.config import set_field

    cls = registry.resolve("suites", name)
    cfg = cls.Config()
    for k, v in (overrides or {}).items():
        cfg = set_field(cfg, k.split("."), v, f"suite.{k}")
    return cls(cfg)


def suite_prompts(suite: Any, base: Any) -> list[str]:
    """The suite's prompts; suites whose prompts depend on the base (toy-tilt) get it first."""
    if hasattr(suite, "bind"):
        suite.bind(base)
    return list(suite.prompts())


def evaluate_suite(suite: Any, base: Any, spec: SamplerSpec, rewards: RewardSet, run_config: dict[str, Any],
                   seed: int, cache_dir: Path | None, out_path: Path | None, teacher_spec: SamplerSpec | None = None,
                   batch_size: int = 256, stats: GenStats | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Generate (cached), score, and write the suite's self-describing JSON as soon as it is done.

    In a process group every rank generates its shard; rank 0 alone scores and writes (teacher
    samples for FID-T, if the suite asks for them, are then generated by rank 0); the other ranks
    return {}."""
    t0 = time.perf_counter()
    prompts = suite_prompts(suite, base)
    n = suite.images_per_prompt
    images = generate(base, spec, prompts, n, seed, cache_dir, batch_size, stats, progress)
    if shard()[0] != 0:
        return {}

    ts = teacher_spec or FIDT_TEACHER
    teacher_used: list[SamplerSpec] = []

    def teacher_samples() -> Tensor:
        teacher_used.append(ts)
        return generate(base, ts, prompts, n, seed, cache_dir, batch_size, stats)

    rewards = unmetered(rewards)  # evaluation never spends a run's training budget
    ctx = EvalContext(base=base, rewards=rewards, run_config=run_config, teacher_samples=teacher_samples, seed=seed)
    metrics = suite.score(images, prompts, ctx)
    result = {
        "suite": suite.name, "suite_version": suite.version, "metrics": metrics,
        "higher_is_better": dict(suite.higher_is_better), "images_per_prompt": n, "num_prompts": len(prompts),
        "seed": seed, "sampler": spec.record(base),
        **({"teacher_sampler": teacher_used[0].record(base)} if teacher_used else {}),
        "run": {k: run_config.get("run", {}).get(k) for k in ("method", "base", "seed", "run_id")},
        "processes": shard()[1],
        "eval_wall_time_s": time.perf_counter() - t0, "versions": versions(), "git_commit": git_commit(),
    }
    if out_path is not None:
        atomic_write_json(out_path, result)
    return result


# ---------------------------------------------------------------- what `rtdmd-bench eval` runs
TEACHER_CONFIG_METHOD = "dmd2"
"""A teacher evaluation resolves its config (the base's config, its recipe's rewards and beta) as a
run of this method would; any method gives the same teacher, and the result records the config."""


def teacher_config(base: str, base_overrides: Sequence[str] = ()) -> Any:
    """The resolved config of a teacher evaluation on `base` (what its results record)."""
    from rtdmd_bench.config import resolve_config

    return resolve_config(TEACHER_CONFIG_METHOD, base, list(base_overrides))


def build_teacher(base: str, base_overrides: Sequence[str] = ()) -> Any:
    """`train.Built` of a teacher evaluation: the base prepared (its cached helper networks built
    on first use) and its recipe's rewards."""
    from rtdmd_bench.train import build

    return build(teacher_config(base, base_overrides))


def evaluate_teacher(suite: Any, built: Any, spec: SamplerSpec, cache_dir: Path, out_path: Path, seed: int = 0,
                     batch_size: int = 256) -> dict[str, Any]:
    """`evaluate_suite` of the teacher's own sampler `spec` on a `build_teacher` base."""
    return evaluate_suite(suite, built.base, spec, built.rewards, built.cfg.to_dict(), seed, cache_dir, out_path,
                          batch_size=batch_size)


def evaluate_run(suite: Any, run_dir: Path, seed: int, cache_dir: Path | None = None, tag: str | None = None,
                 batch_size: int = 256, built: Any = None) -> dict[str, Any]:
    """`evaluate_suite` of a run's generator (its EMA weights, latest checkpoint) with the method's own
    sampler; samples cached under `cache_dir` (default RUN/samples) with `tag` in their key (default
    the run's name and checkpoint); the result goes to RUN/eval/<suite>.json."""
    from rtdmd_bench.runs import RunDir
    from rtdmd_bench.train import load_for_eval

    run = RunDir.open(run_dir)
    b = built or load_for_eval(run.path)
    if tag is None:
        ckpt = run.latest_checkpoint()
        tag = f"{run.path.name}-{ckpt.name if ckpt else 'none'}"
    with b.method.generator():
        return evaluate_suite(suite, b.base, SamplerSpec.student(b.cfg.method, tag=tag), b.rewards, b.cfg.to_dict(),
                              seed, cache_dir or run.path / "samples", run.path / "eval" / f"{suite.name}.json",
                              batch_size=batch_size)


def protocol_seed(seed: int | None, suite: Any) -> int:
    """The user's seed, else the suite's protocol seed (DrawBench: 42), else 0."""
    return int(seed) if seed is not None else int(getattr(suite, "seed", 0) or 0)


def evaluate_suites(suites: Sequence[str], run: Path | None = None, base: str | None = None,
                    teacher: SamplerSpec | None = None, suite_overrides: dict[str, Any] | None = None,
                    base_overrides: Sequence[str] = (), out: Path = Path("runs/teacher-eval"), seed: int | None = None,
                    batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """`rtdmd-bench eval`: a run's generator (`run`) or a base's teacher (`base`, sampled by `teacher`,
    its samples and results under `out`) with each suite in turn; yields each suite's result once it
    is written ({} on ranks other than 0 of a process group, which only generate their share)."""
    from rtdmd_bench.runs import RunDir
    from rtdmd_bench.train import load_for_eval

    if (run is None) == (base is None):
        raise UserError("give exactly one of --run RUN or --base BASE")
    _join_process_group()
    run = RunDir.open(run).path if run is not None else None  # not a run folder: the first error
    built_suites = [build_suite(s, suite_overrides) for s in suites]  # bad names or fields fail before any work
    built = load_for_eval(run) if run is not None else build_teacher(base, base_overrides)
    spec = teacher or SamplerSpec(role="teacher", num_steps=4, tag=base)
    for suite in built_suites:
        if run is not None:
            yield evaluate_run(suite, run, protocol_seed(seed, suite), batch_size=batch_size, built=built)
        else:
            yield evaluate_teacher(suite, built, spec, out / "samples", out / "eval" / f"{suite.name}.json",
                                   protocol_seed(seed, suite), batch_size)


def _join_process_group() -> None:
    """Under `accelerate launch` or torchrun join the process group (unless training has): ranks
    share the generation (gloo on CPU, nccl on GPUs, as accelerate chooses)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState()
