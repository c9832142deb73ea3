"""Evaluation engine: generate (cached on disk, rtdmd_bench/samples.py) -> score with suites ->
eval/<suite>.json.

`evaluate_suites` is what `rtdmd-bench eval` runs: a run's generator or a base's teacher, suite by
suite. A suite may carry an evaluation protocol (suites/rtdmd_protocol.py): its `sampler(spec)`
sets the sampler (RTDMD: 4 CPS steps, eta 0.9, guidance 1), its `resolution` the image size the
base renders at (a real base is rebuilt at that size; tiny stand-in bases keep theirs, recorded),
and its `release()` frees its heavy scorer once it has scored, so one evaluation holds one heavy
scorer at a time.

Evaluating a run claims its folder shared (rtdmd_bench/run_lock.py): evaluations of one run may
run at once (each file they write is atomic and the same whoever writes it), but not while it
trains, and no training starts into it while they run.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from rtdmd_bench import distributed, registry, run_lock
from rtdmd_bench.compute import unmetered
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from rtdmd_bench.ranges import check_ranges
from rtdmd_bench.runs import WRITE_ERRORS, RunDir, atomic_write_json, git_commit, versions, write_failure
from rtdmd_bench.samples import (  # noqa: F401  (re-exported: the engine's names stay importable from here)
    FIDT_TEACHER, SAMPLER_KINDS, GenStats, SamplerKind, SamplerSpec, barrier, cache_file, cache_folder,
    cached_samples, generate, generate_prompt, prompt_set_hash, sample_latents, shard,
)


def build_suite(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """Suite `name` with its config's fields set from `overrides` (strict; ranges checked)."""
    from rtdmd_bench.config import set_field

    cls = registry.resolve("suites", name)
    cfg = cls.Config()
    for k, v in (overrides or {}).items():
        cfg = set_field(cfg, k.split("."), v, f"suite.{k}")
    check_ranges(cfg, name)
    return cls(cfg)


def prepare_suite(suite: Any) -> None:
    """What a suite needs before any image is generated: its prompts (unless they depend on the
    base: toy-tilt's `bind`) and, on the process that scores, its `prepare()` (scorer models loaded,
    or the heavy judges' files found), so a missing prompt file or missing weights fail in seconds,
    before the base is built, not after the generation."""
    if not hasattr(suite, "bind"):
        suite.prompts()
    if hasattr(suite, "prepare") and shard()[0] == 0:  # rank 0 alone scores
        suite.prepare()


def build_suites(names: Sequence[str], overrides: dict[str, Any] | None = None) -> list[Any]:
    """The suites `names` (groups expanded), each built with its overrides and prepared."""
    names = expand_suites(names)
    suites = [build_suite(s, suite_overrides(s, overrides, names)) for s in names]  # bad names fail first
    for suite in suites:
        prepare_suite(suite)
    return suites


def suite_overrides(name: str, overrides: dict[str, Any] | None, names: Sequence[str]) -> dict[str, Any]:
    """The overrides of suite `name` among `names`: plain keys apply to every suite, keys "NAME.FIELD"
    to suite NAME only (a NAME that is not evaluated is an error)."""
    own: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head in registry.table("suites") and rest:
            if head not in names:
                raise UserError(f"--set {key}=...: suite {head!r} is not among the suites evaluated ({', '.join(names)})")
            if head == name:
                own[rest] = value
        else:
            own[key] = value
    return own


def suite_prompts(suite: Any, base: Any) -> list[str]:
    """The suite's prompts; suites whose prompts depend on the base (toy-tilt) get it first."""
    if hasattr(suite, "bind"):
        suite.bind(base)
    return list(suite.prompts())


def evaluate_suite(suite: Any, base: Any, spec: SamplerSpec, rewards: RewardSet, run_config: dict[str, Any],
                   seed: int, cache_dir: Path | None, out_path: Path | None, teacher_spec: SamplerSpec | None = None,
                   batch_size: int = 256, stats: GenStats | None = None,
                   progress: Any = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Generate (cached), score, and write the suite's self-describing JSON as soon as it is done:
    to `out_path`, or to `out_dir`/<the suite's name once scored>.json (a suite's name can change
    while it scores, e.g. when its scorers turn out to be stand-ins). `progress` (optional, e.g.
    `progress.EvalBars`) hears `generating(label, done, total)` after each prompt and
    `scoring(suite, finished)` around the scoring.

    In a process group every rank generates its shard; rank 0 alone scores and writes (teacher
    samples for FID-T, if the suite asks for them, are then generated by rank 0); the other ranks
    return {}."""
    t0 = time.perf_counter()
    spec = suite.sampler(spec) if hasattr(suite, "sampler") else spec  # a protocol's sampler settings
    prompts = suite_prompts(suite, base)
    n = suite.images_per_prompt
    label = suite.name

    def generated(what: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress.generating(what, done, total))

    images = generate(base, spec, prompts, n, seed, cache_dir, batch_size, stats, generated(label))
    if shard()[0] != 0:
        return {}

    ts = teacher_spec or FIDT_TEACHER
    teacher_used: list[SamplerSpec] = []

    def teacher_samples() -> Tensor:
        teacher_used.append(ts)
        return generate(base, ts, prompts, n, seed, cache_dir, batch_size, stats, generated(f"{label} teacher"))

    rewards = unmetered(rewards)  # evaluation never spends a run's training budget
    ctx = EvalContext(base=base, rewards=rewards, run_config=run_config, teacher_samples=teacher_samples, seed=seed)
    if progress is not None:
        progress.scoring(label, False)
    metrics = suite.score(images, prompts, ctx)
    per_image = per_image_record(metrics, len(prompts), n)
    if progress is not None:
        progress.scoring(label, True)
    if hasattr(suite, "release"):
        suite.release()  # its heavy scorer leaves memory before the next suite loads one
    requested = getattr(suite, "resolution", 0)
    result = {
        "suite": suite.name, "suite_version": suite.version, "metrics": metrics,
        "higher_is_better": dict(suite.higher_is_better), "images_per_prompt": n, "num_prompts": len(prompts),
        "seed": seed, "sampler": spec.record(base), "image_size": list(images.shape[-2:]),
        **({"resolution": resolution_record(requested, images, base)} if requested else {}),
        **({"teacher_sampler": teacher_used[0].record(base)} if teacher_used else {}),
        **({"per_image": per_image} if per_image else {}),
        "run": {k: run_config.get("run", {}).get(k) for k in ("method", "base", "seed", "run_id")},
        "processes": shard()[1],
        "eval_wall_time_s": time.perf_counter() - t0, "versions": versions(), "git_commit": git_commit(),
    }
    note = getattr(base, "weights_note", lambda: None)()  # base.init=random: scores of random weights
    if note:
        result["run"]["base"], result["note"] = base.label, note
    if out_path is None and out_dir is not None:
        out_path = Path(out_dir) / f"{suite.name}.json"
    if out_path is not None:
        try:
            atomic_write_json(out_path, result)
        except WRITE_ERRORS as e:
            raise write_failure(out_path, e, "Results of the suites before it and the cached samples are kept; "
                                "free space on that disk (or make the folder writable) and run the evaluation "
                                "again: it generates only what is missing.") from None
    return result


def per_image_record(metrics: dict[str, Any], num_prompts: int, images_per_prompt: int) -> dict[str, list[list[float]]]:
    """The per-image scores a suite returned under `per_image` (metric -> scores of its images, prompt-
    major), moved out of the metrics and listed [prompt index][image index], so `compare` can pair two
    methods prompt by prompt (rtdmd_bench/paired.py). Results written before it have none."""
    raw = metrics.pop("per_image", None) or {}
    out = {}
    for metric, scores in raw.items():
        flat = [float(x) for x in (scores.reshape(-1).tolist() if isinstance(scores, Tensor) else scores)]
        if len(flat) != num_prompts * images_per_prompt:
            raise ValueError(f"suite per-image scores of {metric!r}: {len(flat)} for {num_prompts} prompts x "
                             f"{images_per_prompt} images")
        k = images_per_prompt
        out[metric] = [flat[i * k:(i + 1) * k] for i in range(num_prompts)]
    return out


# ---------------------------------------------------------------- what `rtdmd-bench eval` runs
TEACHER_CONFIG_METHOD = "dmd2"
"""A teacher evaluation resolves its config (the base's config, its recipe's rewards and beta) as a
run of this method would; any method gives the same teacher, and the result records the config."""


def teacher_config(base: str, base_overrides: Sequence[str] = ()) -> Any:
    """The resolved config of a teacher evaluation on `base` (what its results record)."""
    from rtdmd_bench.config import resolve_config

    return resolve_config(TEACHER_CONFIG_METHOD, base, list(base_overrides))


def resolution_record(requested: int, images: Tensor, base: Any) -> dict[str, Any]:
    """What a protocol asked for and what the images are (stand-in bases keep their own size)."""
    used = int(images.shape[-1])
    out: dict[str, Any] = {"requested": requested, "used": used}
    if used != requested:
        out["note"] = (f"{getattr(base, 'name', 'the base')} rendered at {used} px, not the protocol's {requested}: "
                       "tiny stand-in bases keep their own size")
    return out


def protocol_resolution(suite: Any, base_name: str, base_cfg: Any) -> int | None:
    """The resolution a real base must be rebuilt at for `suite`, or None (no protocol resolution,
    already that size, a base without one, or a tiny stand-in base, which keeps its size)."""
    want = int(getattr(suite, "resolution", 0) or 0)
    have = getattr(base_cfg, "resolution", None)
    if not want or have is None or base_name.startswith("tiny-") or want == have:
        return None
    return want


def build_teacher(base: str, base_overrides: Sequence[str] = ()) -> Any:
    """`train.Built` of a teacher evaluation: the base prepared (its cached helper networks built
    on first use) and its recipe's rewards."""
    from rtdmd_bench.train import build

    return build(teacher_config(base, base_overrides))


def evaluate_teacher(suite: Any, built: Any, spec: SamplerSpec, cache_dir: Path, out_path: Path | None, seed: int = 0,
                     batch_size: int = 256, out_dir: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """`evaluate_suite` of the teacher's own sampler `spec` on a `build_teacher` base; the result goes to
    `out_path`, or `out_dir`/<suite>.json."""
    return evaluate_suite(suite, built.base, spec, built.rewards, built.cfg.to_dict(), seed, cache_dir, out_path,
                          batch_size=batch_size, out_dir=out_dir, progress=progress)


def checkpoint_tag(run: RunDir, tag: str | None = None) -> str:
    """The sample-cache tag of a run's latest checkpoint: `tag` (default: the run's name and checkpoint
    folder) and the start of the checkpoint's content digest (`RunDir.checkpoint_digest`), so a run
    trained again into the same folder, to the same step, never reads the old run's samples."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise UserError(run.no_checkpoint())
    return f"{tag if tag is not None else f'{run.path.name}-{ckpt.name}'}-{run.checkpoint_digest(ckpt)[:12]}"


def hold_run(run_dir: Path) -> Any:
    """`run_lock.hold` of a run folder for evaluation: shared, claimed by rank 0 of a process group."""
    return run_lock.hold(run_dir, "eval", shared=True, claimant=shard()[0] == 0, agree=distributed.agree)


def evaluate_run(suite: Any, run_dir: Path, seed: int, cache_dir: Path | None = None, tag: str | None = None,
                 batch_size: int = 256, built: Any = None, progress: Any = None) -> dict[str, Any]:
    """`evaluate_suite` of a run's generator (its EMA weights, latest checkpoint) with the method's own
    sampler; samples cached under `cache_dir` (default RUN/samples) keyed by `checkpoint_tag(run, tag)`;
    the result goes to RUN/eval/<suite>.json. The run folder is held for evaluation (`hold_run`)."""
    from rtdmd_bench.train import load_for_eval

    run = RunDir.open(run_dir)
    with hold_run(run.path):
        b = built or load_for_eval(run.path)
        spec = SamplerSpec.student(b.cfg.method, tag=checkpoint_tag(run, tag))
        with b.method.generator():
            return evaluate_suite(suite, b.base, spec, b.rewards, b.cfg.to_dict(), seed,
                                  cache_dir or run.path / "samples", None, batch_size=batch_size,
                                  out_dir=run.path / "eval", progress=progress)


def protocol_seed(seed: int | None, suite: Any) -> int:
    """The user's seed, else the suite's protocol seed (DrawBench: 42), else 0."""
    return int(seed) if seed is not None else int(getattr(suite, "seed", 0) or 0)


def expand_suites(names: Sequence[str]) -> list[str]:
    """Suite names with each group (`rtdmd-bench list suites`: e.g. rtdmd = RTDMD's five protocol
    suites in its dataset order) replaced by its members."""
    return [m for n in names for m in registry.SUITE_GROUPS.get(n, (n,))]


def evaluate_suites(suites: Sequence[str], run: Path | None = None, base: str | None = None,
                    teacher: SamplerSpec | None = None, overrides: dict[str, Any] | None = None,
                    base_overrides: Sequence[str] = (), out: Path = Path("runs/teacher-eval"), seed: int | None = None,
                    batch_size: int = 256, progress: Any = None,
                    built_suites: Sequence[Any] | None = None) -> Iterator[dict[str, Any]]:
    """`rtdmd-bench eval`: a run's generator (`run`) or a base's teacher (`base`, sampled by `teacher`,
    its samples and results under `out`) with each suite in turn; yields each suite's result once it
    is written ({} on ranks other than 0 of a process group, which only generate their share).
    A suite with a protocol resolution gets the base rebuilt at that size (real bases only). Every
    suite is built and prepared (`build_suites`: prompts and scorer models) before the base is built
    and before any image is generated; `built_suites` are suites `build_suites` already gave (`train
    --eval` checks them before training). `progress`: see `evaluate_suite`. A run's
    folder is held for evaluation (`hold_run`) throughout."""
    from rtdmd_bench.train import load_for_eval

    if (run is None) == (base is None):
        raise UserError("give exactly one of --run RUN or --base BASE")
    _join_process_group()
    run = RunDir.open(run).path if run is not None else None  # not a run folder: the first error
    if built_suites is None:
        built_suites = build_suites(suites, overrides)
    builds: dict[int | None, Any] = {}

    def built_for(suite: Any) -> Any:
        if None not in builds:
            builds[None] = load_for_eval(run) if run is not None else build_teacher(base, base_overrides)
        own = builds[None]
        r = protocol_resolution(suite, own.cfg.run.base, own.cfg.base)
        if r not in builds:
            builds[r] = (load_for_eval(run, resolution=r) if run is not None
                         else build_teacher(base, [*base_overrides, f"base.resolution={r}"]))
        return builds[r]

    spec = teacher or SamplerSpec(role="teacher", num_steps=4, tag=base)
    with hold_run(run) if run is not None else contextlib.nullcontext():
        for suite in built_suites:
            b = built_for(suite)
            if run is not None:
                yield evaluate_run(suite, run, protocol_seed(seed, suite), batch_size=batch_size, built=b, progress=progress)
            else:
                yield evaluate_teacher(suite, b, spec, out / "samples", None, protocol_seed(seed, suite), batch_size,
                                       out_dir=out / "eval", progress=progress)


def _join_process_group() -> None:
    """Under `accelerate launch` or torchrun join the process group (unless training has): ranks
    share the generation (gloo on CPU, nccl on GPUs, as accelerate chooses)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState()
