"""Evaluation engine: on-disk sample cache, resume, batch-size independence (toy2d, fast)."""

import pytest
import torch

from rtdmd_bench.config import resolve_config
from rtdmd_bench.evaluate import GenStats, SamplerSpec, build_suite, evaluate_suite, generate
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
