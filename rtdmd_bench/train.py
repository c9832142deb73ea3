"""The one training loop: build everything from the config, then step until the FLOP budget is
spent. Checkpoints are atomic; a killed run resumes to the same result (every batch's prompts
and noise derive from (seed, step), and the checkpoint holds all trainable and optimiser state;
a run killed before its first checkpoint starts over from its saved config). The run folder is
claimed for the whole run (rtdmd_bench/run_lock.py): a second process training or evaluating
into it is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from rtdmd_bench import distributed, registry, run_lock
from rtdmd_bench.compute import ComputeMeter, MeteredBase, MeteredReward, format_flops, parse_budget
from rtdmd_bench.config import ResolvedConfig
from rtdmd_bench.core.optim import check_finite
from rtdmd_bench.core.parallel import Shard
from rtdmd_bench.core.rl import stable_seed
from rtdmd_bench.distributed import Parallel
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, PromptPools, RewardSet, draw_prompts
from rtdmd_bench.runs import RunDir, git_commit, versions
from rtdmd_bench.tracking import TrainingLog, check_tracker, open_tracker, sample_grid


@dataclass
class Built:
    """Everything the loop needs, built from a ResolvedConfig before it starts."""

    cfg: ResolvedConfig
    base: Any  # the raw base
    meter: ComputeMeter
    rewards: RewardSet
    method: Any
    par: Parallel
    pools: PromptPools


def build(cfg: ResolvedConfig, par: Parallel | None = None) -> Built:
    """Base, meter, budget, rewards and method from the config; with several processes the base's
    trainable modules are wrapped for data parallelism (DDP/FSDP) before the method is built."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.run.seed)  # network construction (e.g. fresh LoRA init) is seeded
    base = registry.resolve("bases", cfg.run.base)(cfg.base)
    meter = ComputeMeter()
    base.prepare(meter)
    if par is not None and par.accelerator is not None:
        base.parallelize(par.wrap)
    budget = parse_budget(cfg.train.budget)
    if budget.unit == "teacher_forwards" and not meter.teacher_forward_flops:
        raise UserError(f"base {cfg.run.base!r} defines no teacher-forward unit; give the budget in FLOPs")
    meter.budget_flops = budget.flops(meter.teacher_forward_flops)
    rewards = RewardSet(
        {n: MeteredReward(registry.resolve("rewards", n)(c), meter) for n, c in cfg.rewards.items()},
        dict(cfg.reward_weights), cfg.run.beta)
    method = registry.resolve("methods", cfg.run.method)(cfg.method, MeteredBase(base, meter), rewards, meter)
    if cfg.train.micro_batches > 1 and not getattr(method, "micro_batching", False):
        raise UserError(f"method {cfg.run.method!r} does not split its steps into micro-batches yet: drop "
                        "train.micro_batches (use more processes or a smaller train.batch_size)")
    pools = PromptPools({"distill": base.train_prompts, "reward": base.reward_prompts})
    pools.get("distill")  # a missing prompt file fails here, before anything is written
    if rewards:
        pools.get("reward")  # reward-optimising steps draw from it (`Batch.draw`): fail early too
    return Built(cfg, base, meter, rewards, method, par or Parallel(), pools)


def batch_for(step: int, seed: int, pools: PromptPools, batch_size: int, shard: Shard = Shard(),
              micro_batches: int = 1) -> Batch:
    """The global batch: `batch_size` prompts of the "distill" set drawn uniformly with replacement
    from a generator seeded by (seed, step), identical on every rank (each method keeps its rank's
    rows); other sets are drawn with the same seed through `Batch.draw`."""
    draw_seed = stable_seed("prompts", seed, step)
    return Batch(prompts=draw_prompts(pools.get("distill"), batch_size, draw_seed),
                 seed=stable_seed("batch", seed, step), shard=shard, pools=pools, draw_seed=draw_seed,
                 micro_batches=micro_batches)


def suite_curve(suite_name: str, images_per_prompt: int) -> Callable[[Built, int], dict[str, Any]]:
    """A curve callback: the suite's numeric metrics on the current EMA generator (unmetered)."""
    def curve(built: Built, step: int) -> dict[str, Any]:
        from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
        from rtdmd_bench.report import numeric_metrics

        suite = build_suite(suite_name, {"images_per_prompt": images_per_prompt})
        spec = SamplerSpec.student(built.cfg.method)
        with built.method.generator():
            res = evaluate_suite(suite, built.base, spec, built.rewards, built.cfg.to_dict(), 1, None, None)
        return numeric_metrics(res["metrics"])
    return curve


def _checkpoint_state(b: Built, step: int, wall: float, log: TrainingLog) -> dict[str, Any]:
    """`log_means`: the logged terms' sums since the last metrics line, so a resumed run writes the
    same lines."""
    return {"method": b.method.state_dict(), "meter": b.meter.state_dict(), "step": step, "wall_time": wall,
            "log_means": log.means.state_dict()}


def _save(run: RunDir, par: Parallel, state: dict[str, Any], step: int) -> None:
    """Every rank gathers FSDP shards (a collective), rank 0 writes."""
    state = par.full(state)
    if par.main:
        run.save_checkpoint(step, state)


def train(cfg: ResolvedConfig, run_dir: Path, resume: bool = False,
          on_progress: Callable[[int, float, float], None] | None = None,
          curve: Callable[[Built, int], dict[str, Any]] | None = None,
          stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train until the budget is spent; returns the result summary (also written to result.json).

    `curve(built, step)` (optional) is called each time the FLOPs used cross another 1/N of the
    budget (N = `train.curve_points`) and its metrics are logged with the FLOPs used so far. `stop_after_steps` stops early without a final result
    (used by tests to simulate a crash between checkpoints).

    `resume` continues from the latest checkpoint, or starts over if the run has none yet. The
    folder is claimed (by rank 0 of a process group) before anything is written and until the run
    returns; a folder another process holds, or (without `resume`) one that already holds a run,
    is a UserError with nothing written."""
    if cfg.train.curve_points and not cfg.train.curve_suite:
        raise UserError("train.curve_points needs train.curve_suite (e.g. --set train.curve_suite=toy-tilt)")
    if curve is None and cfg.train.curve_points:
        curve = suite_curve(cfg.train.curve_suite, cfg.train.curve_images_per_prompt)
    run = RunDir(run_dir)
    par = distributed.setup_for(cfg)
    if par.mode == "fsdp" and par.shard.world > 1 and curve is not None:
        raise UserError("train.curve_points does not work with train.parallel=fsdp (evaluation shards "
                        "prompts and needs whole models): evaluate the checkpoints with `rtdmd-bench eval`")
    if cfg.train.micro_batches < 1:
        raise UserError(f"train.micro_batches={cfg.train.micro_batches} must be >= 1")
    if cfg.train.sample_every and cfg.train.log_with == "none":
        raise UserError("train.sample_every sends sample grids to a tracker: set train.log_with (e.g. tensorboard)")
    if cfg.train.sample_every < 0:
        raise UserError(f"train.sample_every={cfg.train.sample_every} must be >= 0 (0 = no sample grids)")
    check_tracker(cfg.train.log_with)  # a missing package is named before anything is written
    par.shard.rows(cfg.train.batch_size)  # a batch the processes cannot share is an error before anything
    b = build(cfg, par)  # before touching the folder: bad configs or missing weights write nothing
    if par.main:
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise run.failed_write(run.path, e) from None
    with run_lock.hold(run.path, "train", claimant=par.main, agree=distributed.agree):
        # Checked under the claim: two new runs started together both saw no config.yaml before.
        taken = not resume and par.main and (run.path / "config.yaml").exists()
        if distributed.agree(taken):
            raise UserError(f"{run.path} already holds a run; pass --resume {run.path} or another --run-id")
        return _loop(cfg, run, par, b, resume, on_progress, curve, stop_after_steps)


def _loop(cfg: ResolvedConfig, run: RunDir, par: Parallel, b: Built, resume: bool,
          on_progress: Callable[[int, float, float], None] | None,
          curve: Callable[[Built, int], dict[str, Any]] | None, stop_after_steps: int | None) -> dict[str, Any]:
    step, wall_before = 0, 0.0
    if resume and run.latest_checkpoint() is None:  # killed before its first checkpoint: start over
        resume = False
        if par.main:
            run.truncate_metrics(0)
    log = TrainingLog(run if par.main else None, None)
    if resume:
        step, state = run.load_checkpoint()
        with checkpoint_fits(run):
            b.method.load_state_dict(par.localize(state["method"], b.method.state_dict()))  # FSDP: re-shard
            b.meter.load_state_dict(state["meter"])
            log.means.load_state_dict(state.get("log_means"))
            wall_before = float(state["wall_time"])
        if par.main:
            run.truncate_metrics(step)
    elif par.main:
        run.write_config(cfg.to_dict())
    if par.main:
        log.tracker = open_tracker(cfg.train, run.path, cfg.to_dict(), step)
    t0 = time.perf_counter()
    steps_run = 0
    while not b.meter.exhausted:
        batch = batch_for(step, cfg.run.seed, b.pools, cfg.train.batch_size, par.shard, cfg.train.micro_batches)
        used_before, meter_before = b.meter.used, b.meter.state_dict()
        logs = par.shard.mean(b.method.train_step(batch, step))  # global means
        b.meter.sync(meter_before, par.shard)  # FLOPs of every rank
        check_finite(step, **logs)
        log.add(logs)
        step += 1
        steps_run += 1
        wall = wall_before + time.perf_counter() - t0
        if step % cfg.train.log_every == 0 or b.meter.exhausted:
            log.line(step, b.meter.used, wall)  # the means since the previous line
        if curve is not None and cfg.train.curve_points:
            # Point k is taken at the first step whose FLOPs reach k/N of the budget (derived from
            # the meter alone, so a resumed run takes the same points).
            n, total = cfg.train.curve_points, b.meter.budget_flops
            before = int(used_before * n // total)
            if int(min(b.meter.used, total) * n // total) > before:
                point = curve(b, step)  # every rank takes part (sharded generation); rank 0 scores
                if par.main:
                    log.curve(step, b.meter.used, point)
        if cfg.train.sample_every and step % cfg.train.sample_every == 0:
            log.image(step, sample_grid(b))  # every rank generates (collective forwards); rank 0 logs
        if step % cfg.train.checkpoint_every == 0 and not b.meter.exhausted:
            _save(run, par, _checkpoint_state(b, step, wall, log), step)
        if on_progress is not None and par.main:
            on_progress(step, b.meter.used, b.meter.budget_flops)
        if stop_after_steps is not None and steps_run >= stop_after_steps:
            log.close()
            return {}
    wall = wall_before + time.perf_counter() - t0
    _save(run, par, _checkpoint_state(b, step, wall, log), step)
    log.close()
    result = {
        "method": cfg.run.method, "base": cfg.run.base, "seed": cfg.run.seed,
        "method_source": getattr(b.method, "source", ""), "stages": list(getattr(b.method, "stages", ())),
        "steps": step, "wall_time_s": wall, "budget": cfg.train.budget,
        "compute": b.meter.breakdown(), "config": cfg.to_dict(),
        "versions": versions(), "git_commit": git_commit(),
        "processes": par.shard.world,
    }
    note = getattr(b.base, "weights_note", lambda: None)()  # base.init=random: never mistaken for a real run
    if note:
        result.update(base=b.base.label, note=note)
    if par.main:
        run.write_result(result)
    par.barrier()  # the run folder is complete before any rank moves on (e.g. to --eval)
    _last_built[str(run.path)] = b
    return result


# The last built objects per run folder, so `evaluate` right after `train` in the same process
# reuses the trained networks instead of rebuilding and reloading them.
_last_built: dict[str, Built] = {}


def load_for_eval(run_dir: Path, resolution: int | None = None) -> Built:
    """Rebuild a run's objects and load its latest checkpoint (for evaluation); with `resolution`,
    the base renders at that size (an evaluation protocol's; the weights do not depend on it)."""
    from rtdmd_bench.config import from_dict

    run = RunDir.open(run_dir)
    cached = _last_built.get(str(run.path))
    if resolution is None and cached is not None and not (cached.par.mode == "fsdp" and cached.par.shard.world > 1):
        return cached  # (FSDP shards cannot generate different prompts per rank: rebuild whole)
    cfg = from_dict(run.read_config(), str(run.path / "config.yaml"))
    if resolution is not None:
        cfg = dataclasses.replace(cfg, base=dataclasses.replace(cfg.base, resolution=resolution))
    b = build(cfg)
    _, state = run.load_checkpoint()
    with checkpoint_fits(run):
        b.method.load_state_dict(state["method"])
        b.meter.load_state_dict(state["meter"])
    return b


@contextlib.contextmanager
def checkpoint_fits(run: RunDir) -> Iterator[None]:
    """Loading the latest checkpoint into the objects built from the run's config: a state that does
    not fit them (config.yaml edited after training, a checkpoint of another run or version: torch's
    size-mismatch RuntimeError, a missing entry) becomes a UserError naming the checkpoint."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, torch.OutOfMemoryError):  # not the checkpoint's fault
            raise
        detail = " ".join(str(e).split())
        raise UserError(f"checkpoint {run.latest_checkpoint()} does not fit the run's config.yaml "
                        f"({type(e).__name__}: {detail[:300]}); restore the config.yaml it was trained with, "
                        "or start the run again") from None


def describe_budget(b: Built) -> str:
    tf = b.meter.teacher_forward_flops
    extra = f" = {b.meter.budget_flops / tf:.3g} teacher forwards" if tf else ""
    return f"{format_flops(b.meter.budget_flops)} FLOPs{extra}"


def replace_cfg(cfg: ResolvedConfig, **changes: Any) -> ResolvedConfig:
    return dataclasses.replace(cfg, **changes)
