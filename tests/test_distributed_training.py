"""Data-parallel training (issue: real bases, "Distributed"): two CPU processes over gloo compute
exactly the one-process run on the same global batch, for every method with DDP and for FSDP2
(including a resume from a gathered checkpoint), on toy2d and on the real diffusers path
(tiny-sd3); the randomness that must agree across ranks does; the CLI runs under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rtdmd_bench import registry
from rtdmd_bench.config import resolve_config
from rtdmd_bench.core.parallel import BatchRandom, Shard
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch
from rtdmd_bench.runs import RunDir
from rtdmd_bench.train import train
from test_every_method import TOY_BUDGET, smoke_overrides

FAST = ["base.fit_steps=200", "train.batch_size=16", "train.threads=1", "train.log_every=1"]
# Every registered method with the overrides it declares for tiny batches and a budget of a few steps
# (rtdmd crosses from stage 1 into stage 2), and variants whose cross-rank statistics differ.
CASES = {m: (m, [TOY_BUDGET, *smoke_overrides(m)]) for m in registry.names("methods")}
CASES["dmd-rl-grpo"] = ("dmd-rl", [TOY_BUDGET, *smoke_overrides("dmd-rl"), "method.rl_form=grpo"])


# The real diffusers path: student and fake score are LoRA adapters of ONE frozen transformer
# (DDP with unused parameters on every backward), text encoders, VAE and a CLIP stand-in reward.
SD3 = ["run.rewards=tiny-clipscore=1.0", "train.batch_size=4", "train.threads=1", "train.log_every=1"]
SD3_CASES = {
    "dmd2": ("dmd2", ["train.budget=8G", "method.lr_generator=1e-4", "method.num_fake_per_gen=2"]),
    "rtdmd": ("rtdmd", ["train.budget=15G", "method.group_size=2", "method.stage1_fraction=0.4",
                        "method.stage1.num_fake_per_gen=2"]),
}
# FSDP2 (train.parallel=fsdp): weights, EMA and optimiser state are shards; checkpoints gather
# them and a resumed run cuts them again ("-resume": killed after 4 steps, then resumed).
FSDP = ["train.parallel=fsdp", "train.checkpoint_every=2"]
# rtdmd twice: its stage switch after a stage-1 generator step, and (the default budget, switch at
# step 3) after a fake-only step, when FSDP2 leaves the root modules unsharded: the stage-2
# optimiser must still train the shards (it once got the temporary unsharded tensors, no gradient).
FSDP_CASES = {"dmd2": CASES["dmd2"], "dmd2-resume": CASES["dmd2"],
              "rtdmd": ("rtdmd", CASES["rtdmd"][1] + ["train.budget=3e8"]), "rtdmd-after-fake-step": CASES["rtdmd"]}
SD3_FSDP_CASES = {"rtdmd": ("rtdmd", ["train.budget=10G", "method.group_size=2", "method.stage1_fraction=0.4",
                                      "method.stage1.num_fake_per_gen=2"])}
BASES = {"toy2d": ("toy2d", FAST, CASES), "tiny-sd3": ("tiny-sd3", SD3, SD3_CASES),
         "toy2d-fsdp": ("toy2d", FAST + FSDP, FSDP_CASES), "tiny-sd3-fsdp": ("tiny-sd3", SD3 + FSDP, SD3_FSDP_CASES)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, setup: str) -> None:
    # What `accelerate launch` / torchrun set; distributed.setup() reads them.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    from rtdmd_bench.train import _last_built

    base, common, cases = BASES[setup]
    for name, (method, sets) in cases.items():
        run, cfg = Path(out) / name, resolve_config(method, base, common + sets)
        if name.endswith("-resume"):
            assert train(cfg, run, stop_after_steps=4) == {}
            train(cfg, run, resume=True)
        else:
            train(cfg, run)
        b = _last_built[str(run.resolve())]
        # Each rank's own weights, to check the ranks never drift apart.
        weights = {role: b.par.full(b.base.state_dict(role)) for role in ("student", "fake")}  # FSDP: gathered
        torch.save(weights, f"{out}/{name}.rank{rank}.pt")
        if base == "tiny-sd3":  # what this rank really holds of the transformer (shards under FSDP)
            held = {"frozen": 0, "lora": 0}
            for key, p in b.base.nets.transformer.named_parameters():
                local = p.to_local() if hasattr(p, "to_local") else p
                held["lora" if "lora_" in key else "frozen"] += local.numel() * local.element_size()
            (Path(out) / f"{name}.rank{rank}.bytes.json").write_text(json.dumps(held))
    if setup == "toy2d-fsdp":  # killed after 4 steps; resumed by ONE process in the test below
        cfg = resolve_config("dmd2", base, common + CASES["dmd2"][1])
        assert train(cfg, Path(out) / "killed", stop_after_steps=4) == {}
    # Leave the group cleanly: a process exiting with gloo's threads still running can abort
    # ("terminate called without an active exception"), seen once in about a dozen runs.
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    # ... and still, about once in thirty runs, a gloo thread outlives the interpreter's teardown and
    # the process aborts at exit after all its work is written. End without running C++ destructors:
    # a failure during the work above still raises (spawn reports it) before this line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_spawned: dict[str, Path] = {}


def _two_process_runs(setup: str, tmp_path_factory) -> Path:
    """Every case of `setup` trained once by two spawned gloo processes (shared by the tests)."""
    import torch.multiprocessing as mp

    if setup not in _spawned:
        out = tmp_path_factory.mktemp(setup)
        mp.spawn(_worker, args=(2, _free_port(), str(out), setup), nprocs=2, join=True)
        _spawned[setup] = out
    return _spawned[setup]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).latest_checkpoint() / "tensors.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("setup,name", [(k, n) for k, (_, _, cases) in BASES.items() for n in cases])
def test_two_gloo_processes_train_exactly_the_one_process_run(setup, name, tmp_path_factory, tmp_path):
    two_process_runs = _two_process_runs(setup, tmp_path_factory)
    base, common, cases = BASES[setup]
    method, sets = cases[name]
    single = train(resolve_config(method, base, common + sets), tmp_path / "single")
    double = json.loads((two_process_runs / name / "result.json").read_text())
    # The meter is global: same steps and FLOPs as one process doing the whole batch.
    assert double["processes"] == 2 and single["processes"] == 1
    assert double["steps"] == single["steps"] >= 3
    assert double["compute"]["used_flops"] == pytest.approx(single["compute"]["used_flops"], rel=1e-9)
    if method == "rtdmd":
        assert double["stages"] == ["acdmd", "reward-tilted"]
        assert any(r.get("stage") == 2.0 for r in RunDir(two_process_runs / name).metrics())
    # Same weights, EMA and optimiser state as the one-process run, up to float summation order.
    # That order flips Adam's step on a handful of near-zero gradients (a change of about lr per
    # step), so the check is: every entry within 1e-3, and fewer than 0.1% beyond 1e-5. A rank that used only
    # its own gradient, or drew the other rank's noise, moves most entries by ~lr per step.
    a, b = _tensors(tmp_path / "single"), _tensors(two_process_runs / name)
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a])
    assert float(diff.max()) < 1e-3 and float((diff > 1e-5).double().mean()) < 1e-3
    # Logged losses are global means, equal to the one-process ones.
    la = [r for r in RunDir(tmp_path / "single").metrics() if "curve" not in r]
    lb = [r for r in RunDir(two_process_runs / name).metrics() if "curve" not in r]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        for key in ra:
            if key.startswith("loss") and key in rb:
                assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), (key, ra["step"])
    # Both ranks hold identical weights (averaged gradients, identical optimiser steps).
    r0, r1 = (torch.load(two_process_runs / f"{name}.rank{r}.pt", weights_only=True) for r in (0, 1))
    for role in r0:
        assert all(torch.equal(r0[role][k], r1[role][k]) for k in r0[role]), role


@pytest.mark.slow
def test_a_two_process_fsdp_run_resumes_in_one_process_to_the_one_process_result(tmp_path_factory, tmp_path):
    # Checkpoints hold whole tensors and every draw is independent of the world size, so the number
    # of processes may change between a kill and the resume.
    killed = _two_process_runs("toy2d-fsdp", tmp_path_factory) / "killed"
    cfg = resolve_config("dmd2", "toy2d", FAST + FSDP + CASES["dmd2"][1])
    resumed = train(cfg, killed, resume=True)
    single = train(cfg, tmp_path / "single")
    assert resumed["steps"] == single["steps"] and resumed["processes"] == 1
    assert resumed["compute"]["used_flops"] == pytest.approx(single["compute"]["used_flops"], rel=1e-9)
    a, b = _tensors(tmp_path / "single"), _tensors(killed)
    diff = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a])
    assert float(diff.max()) < 1e-3 and float((diff > 1e-5).double().mean()) < 1e-3


@pytest.mark.slow
def test_plan_predicts_what_each_fsdp_rank_holds(tmp_path_factory):
    from rtdmd_bench.plan import compute_plan

    out = _two_process_runs("tiny-sd3-fsdp", tmp_path_factory)
    plan = compute_plan("rtdmd", "tiny-sd3", precision="fp32", parallelism="fsdp", num_gpus=2)
    whole = compute_plan("rtdmd", "tiny-sd3", precision="fp32", parallelism="ddp", num_gpus=2)
    for rank in (0, 1):
        held = json.loads((out / f"rtdmd.rank{rank}.bytes.json").read_text())
        predicted = plan.memory_per_gpu["frozen transformer weights"]
        assert abs(held["frozen"] - predicted) <= 0.10 * predicted, (rank, held, predicted)
        # student + fake LoRA, and their stage-2 restart adapters (created before sharding), fp32
        lora_bytes = 2 * plan.lora_per_adapter * 4 / 2 + plan.memory_per_gpu["restart adapters (RTDMD stage 2)"]
        assert abs(held["lora"] - lora_bytes) <= 0.10 * plan.lora_per_adapter * 4
        assert held["frozen"] < 0.6 * whole.memory_per_gpu["frozen transformer weights"]  # really sharded


# ---------------------------------------------------------------- the randomness contract
def test_ranks_draw_their_rows_of_the_one_process_draws_and_share_the_rest():
    whole = BatchRandom(7)
    parts = [BatchRandom(7, Shard(r, 2)) for r in range(2)]
    assert [p.integer(1, 5) for p in parts] == [whole.integer(1, 5)] * 2  # e.g. the stop index k
    full = whole.randn((8, 3))
    assert torch.equal(torch.cat([p.randn((4, 3)) for p in parts]), full)
    full = whole.rand((2, 8), dim=1)  # rows in dim 1 (GDMD's targets, GNDM's group draws)
    assert torch.equal(torch.cat([p.rand((2, 4), dim=1) for p in parts], dim=1), full)
    full = whole.randint(0, 100, (6,))
    assert torch.equal(torch.cat([p.randint(0, 100, (3,)) for p in parts]), full)


def test_batch_keeps_whole_groups_per_rank_and_names_the_fix_otherwise():
    prompts = [p for p in "abcd" for _ in range(4)]  # 4 groups of 4
    batch = Batch(prompts, seed=1, shard=Shard(1, 2))
    assert batch.local(prompts, group_size=4) == [p for p in "cd" for _ in range(4)]
    with pytest.raises(UserError, match="train.batch_size"):
        Batch(prompts, seed=1, shard=Shard(0, 3)).local(prompts)
    with pytest.raises(UserError, match="group_size"):
        Batch(prompts[:8], seed=1, shard=Shard(0, 2)).local(prompts[:8], group_size=8)


# ---------------------------------------------------------------- the command line
@pytest.mark.slow
def test_torchrun_trains_with_two_processes_through_the_cli(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this python")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["-m", "rtdmd_bench", "train", "--method", "dmd2", "--base", "toy2d", "--budget", "1.2e8",
            "--out", str(tmp_path), "--set", "base.fit_steps=200", "--set", "train.batch_size=16",
            "--set", "train.threads=1"]
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), *args,
                           "--run-id", "ddp"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1 and "processes 2" in proc.stdout  # rank 0 alone reports
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] >= 3
    one = subprocess.run([sys.executable, *args, "--run-id", "one"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "result.json").read_text())
    assert result["steps"] == single["steps"]
    assert result["compute"]["used_flops"] == single["compute"]["used_flops"]
