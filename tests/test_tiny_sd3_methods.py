"""Every registered method on the real SD3 code path (tiny random diffusers config), with the
overrides it declares for tiny batches: train a few steps, checkpoint, resume, sample and evaluate
with a stand-in reward (issue 5's integration test)."""

import json

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.config import resolve_config
from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
from rtdmd_bench.runs import RunDir
from rtdmd_bench.train import load_for_eval, train
from test_every_method import smoke_overrides

# Small enough for CPU: 4 samples per step (each method's smoke-test overrides make that work, e.g.
# groups of 2), checkpoints every step, a budget of a few steps of every method.
COMMON = ["run.rewards=tiny-clipscore=1.0", "train.batch_size=4", "train.checkpoint_every=1", "train.threads=1",
          "train.log_every=1", "train.budget=2G"]


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names("methods"))
def test_method_trains_resumes_samples_and_evaluates_on_tiny_sd3(method, tmp_path, shared_data):
    sets = COMMON + smoke_overrides(method)
    cfg = resolve_config(method, "tiny-sd3", sets)
    run_dir = tmp_path / "run"
    assert train(cfg, run_dir, stop_after_steps=2) == {}  # "crash" after two steps
    assert RunDir(run_dir).latest_checkpoint() is not None
    result = train(cfg, run_dir, resume=True)
    assert result["steps"] >= 3 and result["compute"]["used_flops"] >= result["compute"]["budget_flops"]
    roles = result["compute"]["roles"]
    assert roles["student"]["fwd"] > 0 and roles["teacher"]["fwd"] > 0
    b = load_for_eval(run_dir)
    suite = build_suite("clipscore", {"scorer": "tiny-clipscore", "limit": 2,
                                      "prompts": str(shared_data / "drawbench" / "test.txt")})
    spec = SamplerSpec("student", 4, tag=method)
    with b.method.generator():
        res = evaluate_suite(suite, b.base, spec, b.rewards, b.cfg.to_dict(), 42, run_dir / "samples",
                             run_dir / "eval" / "clipscore.json", batch_size=2)
    saved = json.loads((run_dir / "eval" / "clipscore.json").read_text())
    assert "stand-in" in saved["suite"] and saved["num_prompts"] == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in res["metrics"].values() if isinstance(v, float))
