"""Evaluation engine: on-disk sample cache, resume, batch-size independence, unmetered rewards (toy2d, fast)."""

import json

import pytest
import torch

from rtdmd_bench.config import resolve_config
from rtdmd_bench.evaluate import (
    GenStats, SamplerSpec, build_suite, cached_samples, evaluate_suite, generate, generate_prompt,
)
from rtdmd_bench.train import build

SMALL = ["base.fit_steps=200", "train.threads=1"]


@pytest.fixture(scope="module")
def built():
    return build(resolve_config("dmd2", "toy2d", SMALL))


def test_samples_do_not_depend_on_batch_size(built):
    spec = SamplerSpec("student", 4)
    prompts = built.base.train_prompts()[:2]
    a = generate(built.base, spec, prompts, 50, seed=3, cache_dir=None, batch_size=7)
    b = generate(built.base, spec, prompts, 50, seed=3, cache_dir=None, batch_size=50)
    assert torch.allclose(a, b, atol=1e-6)
    c = generate(built.base, spec, prompts, 50, seed=4, cache_dir=None, batch_size=50)
    assert not torch.allclose(a, c)


def test_second_suite_on_same_prompts_generates_nothing_and_interrupted_eval_resumes(built, tmp_path):
    spec = SamplerSpec("student", 4, tag="t")
    prompts = built.base.train_prompts()
    stats = GenStats()

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed after two prompts
        generate(built.base, spec, prompts, 100, 0, tmp_path, stats=stats, progress=interrupt)
    assert stats.generated == 200 and stats.cached == 0
    first = generate(built.base, spec, prompts[:2], 100, 0, None)
    stats = GenStats()
    full = generate(built.base, spec, prompts, 100, 0, tmp_path, stats=stats)  # resumes: only the rest is new
    assert stats.cached == 200 and stats.generated == 100 * (len(prompts) - 2)
    assert torch.equal(full[:200], first)
    stats = GenStats()
    suite = build_suite("toy-tilt", {"images_per_prompt": 100})
    res = evaluate_suite(suite, built.base, spec, built.rewards, built.cfg.to_dict(), 0, tmp_path,
                         tmp_path / "eval" / "toy-tilt.json", stats=stats)
    assert stats.generated == 0 and stats.cached == 100 * len(prompts)  # everything came from the cache
    assert (tmp_path / "eval" / "toy-tilt.json").exists() and res["metrics"]["kl_teacher"] > 0


def test_cached_samples_are_the_ones_generate_cached_for_exactly_those_arguments(built, tmp_path):
    spec = SamplerSpec("student", 4, tag="c")
    prompts = built.base.train_prompts()[:3]
    generate(built.base, spec, prompts, 20, 5, tmp_path)
    folders = sorted(p for p in tmp_path.rglob("*") if p.is_dir())
    got = cached_samples(tmp_path, built.base, spec, prompts, 20, 5, 1)
    assert torch.equal(got, generate_prompt(built.base, spec, prompts[1], 1, 20, 5, batch_size=20))
    assert cached_samples(tmp_path, built.base, spec, prompts, 20, 6, 1) is None  # another seed
    assert cached_samples(tmp_path, built.base, spec, prompts, 10, 5, 1) is None  # another count
    assert cached_samples(tmp_path, built.base, spec, prompts[:2], 20, 5, 1) is None  # another prompt set
    assert cached_samples(tmp_path, built.base, SamplerSpec("student", 4, tag="d"), prompts, 20, 5, 1) is None
    assert cached_samples(tmp_path, built.base, spec, prompts, 20, 5, 3) is None  # no such prompt
    assert sorted(p for p in tmp_path.rglob("*") if p.is_dir()) == folders  # asking creates no folder


def test_evaluation_spends_nothing_of_the_training_budget(built):
    from rtdmd_bench.compute import MeteredReward, unmetered
    from rtdmd_bench.rewards.toy import QuadraticReward

    class RewardMean:  # a suite that scores with the rewards it is given, as they are
        name, version, images_per_prompt, higher_is_better = "reward-mean", "1", 10, {"reward": True}

        def prompts(self):
            return built.base.train_prompts()[:2]

        def score(self, images, prompts, ctx):
            return {"reward": float(ctx.rewards.total(images, prompts).mean())}

    assert all(isinstance(r, MeteredReward) for r in built.rewards.rewards.values())
    used = built.meter.used
    res = evaluate_suite(RewardMean(), built.base, SamplerSpec("student", 4), built.rewards, built.cfg.to_dict(), 0,
                         None, None)
    assert built.meter.used == used and res["metrics"]["reward"] < 0
    built.rewards.total(torch.zeros(2, 2), ["a", "b"])  # the same rewards, metered, do charge the meter
    assert built.meter.used > used
    plain = unmetered(built.rewards)
    assert type(plain.rewards["toy-quadratic"]) is QuadraticReward
    assert (plain.weights, plain.beta) == (built.rewards.weights, built.rewards.beta)


def test_per_image_scores_are_stored_per_prompt_and_image_outside_the_metrics(built, tmp_path):
    class Indexed:
        name, version, images_per_prompt, higher_is_better = "indexed", "1", 3, {"x": True}

        def prompts(self):
            return built.base.train_prompts()[:2]

        def score(self, images, prompts, ctx):
            return {"x": 2.5, "per_image": {"x": torch.arange(6.0)}}  # prompt-major: prompt 0 = images 0-2

    res = evaluate_suite(Indexed(), built.base, SamplerSpec("student", 4), built.rewards, built.cfg.to_dict(), 0,
                         None, tmp_path / "indexed.json")
    assert res["per_image"] == {"x": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]} and "per_image" not in res["metrics"]
    assert json.loads((tmp_path / "indexed.json").read_text())["per_image"] == res["per_image"]


def _shard_worker(rank, world, port, cache, out):
    import os

    import torch.distributed as dist

    from rtdmd_bench.evaluate import GenStats, SamplerSpec, generate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = build(resolve_config("dmd2", "toy2d", SMALL))
        stats = GenStats()
        images = generate(b.base, SamplerSpec("student", 4, tag="shard"), b.base.train_prompts(), 40, 0, cache,
                          stats=stats)
        torch.save({"images": images, "generated": stats.generated}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_generation_shards_across_two_gloo_processes_and_matches_one_process(built, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free loopback port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_shard_worker, args=(2, port, str(tmp_path / "cache"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    prompts = built.base.train_prompts()
    assert r0["generated"] + r1["generated"] == 40 * len(prompts)  # each prompt generated once
    assert r0["generated"] == 40 * len(range(0, len(prompts), 2))
    single = generate(built.base, SamplerSpec("student", 4), prompts, 40, 0, None)
    assert torch.allclose(r0["images"], single, atol=1e-6) and torch.equal(r0["images"], r1["images"])


def test_student_sampler_follows_the_method_config_including_rtdmds_stage1():
    from rtdmd_bench.evaluate import SamplerSpec

    rtdmd = resolve_config("rtdmd", "toy2d", ["method.stage1.num_steps=2", "method.stage1.eta=0.5"])
    assert (SamplerSpec.student(rtdmd.method).num_steps, SamplerSpec.student(rtdmd.method).eta) == (2, 0.5)
    dmd2 = resolve_config("dmd2", "toy2d", ["method.num_steps=3"])
    assert SamplerSpec.student(dmd2.method, tag="t") == SamplerSpec("student", 3, eta=0.9, tag="t")
