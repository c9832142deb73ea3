"""RTDMD's evaluation protocol (issue 12): bf16 uint8 rounding, the protocol's lines, sampler,
resolution and names around the scoring suites, and all five columns end to end on tiny-sd3 with
stand-in scorers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdmd_bench.errors import UserError
from rtdmd_bench.evaluate import SamplerSpec, expand_suites, protocol_resolution, suite_overrides
from rtdmd_bench.rewards.pixels import to_uint8, to_uint8_bf16
from suites.rtdmd_protocol import RTDMDDrawBench, RTDMDGenEval2, RTDMDHPSv3, batch_for_memory

TESTS = Path(__file__).resolve().parent


def pixel(v: float) -> torch.Tensor:
    return torch.full((1, 3, 1, 1), v)


def test_bf16_rounding_by_hand():
    # 0.9: fp32 0.9 * 255 = 229.5 -> half to even -> 230. bf16(0.9) = 230/256 = 0.8984375 (8 significant
    # bits); 0.8984375 * 255 = 229.1015625, which bf16 (spacing 1 in [128, 256)) holds as 229 -> 229.
    assert int(to_uint8(pixel(0.9))[0, 0]) == 230 and int(to_uint8_bf16(pixel(0.9))[0, 0]) == 229
    # 0.1: bf16(0.1) = 205/2048 = 0.10009765625; x 255 = 25.52490234375 -> bf16 (spacing 1/8 in [16, 32))
    # 25.5 -> half to even -> 26; fp32 25.5 -> 26 as well.
    assert int(to_uint8(pixel(0.1))[0, 0]) == int(to_uint8_bf16(pixel(0.1))[0, 0]) == 26


def test_bf16_rounding_equals_rtdmds_bf16_arithmetic_on_every_bf16_decode_value():
    """RTDMD: the VAE output v is bf16; (v / 2 + 0.5).clamp(0, 1) in bf16, * 255 in bf16, round, clamp.
    The suite caches the fp32 value v / 2 + 0.5 and rounds from it: the same uint8 for every v."""
    v = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    v = v[torch.isfinite(v) & (v.float().abs() <= 1)]
    rtdmd = ((v / 2 + 0.5).clamp(0, 1) * 255).round().clamp(0, 255).to(torch.uint8)
    suite = to_uint8_bf16((v.float() / 2 + 0.5).clamp(0, 1).view(1, 1, 1, -1)).flatten()
    assert v.numel() > 30000 and torch.equal(rtdmd, suite)
    assert (to_uint8((v.float() / 2 + 0.5).clamp(0, 1).view(1, 1, 1, -1)).flatten() != rtdmd).any()


def test_batch_for_memory_by_hand():
    assert batch_for_memory(60, 16.6, 0.25) == 64  # (60 - 16.6) / 0.25 = 173.6, capped at 64
    assert batch_for_memory(20, 16.6, 0.25) == 13  # 3.4 / 0.25 = 13.6
    assert batch_for_memory(10, 16.6, 0.25) == 1  # the weights alone exceed the budget
    assert batch_for_memory(60, 10, 0.5, cap=500) == 100  # 50 / 0.5


def test_the_protocol_sets_the_lines_seed_and_rtdmds_scorer_settings():
    suite = RTDMDDrawBench(RTDMDDrawBench.Config(models="stand-in"))
    inner = suite.inner_suite.cfg
    assert (inner.limit, inner.seed, inner.scorer_inputs, inner.precision) == (64, 42, "rtdmd", "float32")
    assert inner.scorers == ("tiny-clipscore", "tiny-aesthetic", "tiny-pickscore", "tiny-hpsv21", "tiny-imagereward")
    assert inner.batch_size == 64  # memory_gb 60: (60 - 13.2) / 0.1 > 64, capped
    assert suite.name == "rtdmd-64-drawbench[stand-in]" and suite.seed == 42 and suite.resolution == 1024
    assert suite.version.startswith("rtdmd-protocol-1/64/bf16-uint8/drawbench/")
    full = RTDMDDrawBench(RTDMDDrawBench.Config(variant="full", quantise="fp32", memory_gb=0))
    assert full.inner_suite.cfg.limit == 0 and full.inner_suite.cfg.batch_size == 8  # the suite's own
    assert full.name == "rtdmd-full-drawbench[fp32-uint8]"
    own_batch = RTDMDHPSv3.Config(models="stand-in")
    own_batch.scoring.batch_size = 3
    hps = RTDMDHPSv3(own_batch).inner_suite.cfg
    assert hps.batch_size == 3 and hps.hpsv3.batch_size == 64 and hps.models == "stand-in"
    g2 = RTDMDGenEval2(RTDMDGenEval2.Config(models="stand-in"))
    assert g2.inner_suite.cfg.form == "rtdmd" and g2.inner_suite.cfg.batch_size == 1  # one atom per call
    assert g2.name == "rtdmd-64-geneval2[stand-in]"  # the form tag is the protocol's own


@pytest.mark.parametrize("field,value", [("limit", 10), ("seed", 0), ("scorer_inputs", "official"), ("precision", "float16")])
def test_a_field_the_protocol_sets_cannot_be_changed(field, value):
    cfg = RTDMDDrawBench.Config()
    setattr(cfg.scoring, field, value)
    with pytest.raises(UserError, match=f"sets scoring.{field}"):
        RTDMDDrawBench(cfg)
    with pytest.raises(UserError, match="variant"):
        RTDMDDrawBench(RTDMDDrawBench.Config(variant="32"))


def test_the_prompt_file_is_checked_against_rtdmds(tmp_path, shared_data):
    def suite(prompts):
        cfg = RTDMDDrawBench.Config(models="stand-in")
        cfg.scoring.prompts = str(prompts)
        return RTDMDDrawBench(cfg)

    official = suite(shared_data / "drawbench" / "test.txt")  # the same bytes as RTDMD's file
    assert len(official.prompts()) == 64 and official.name == "rtdmd-64-drawbench[stand-in]"
    assert official.describe()["prompt_file"]["official"]
    own = tmp_path / "mine.txt"
    own.write_text("a cat\na dog\n")
    mine = suite(own)
    assert mine.prompts() == ["a cat", "a dog"] and mine.name == "rtdmd-64-drawbench[stand-in,own prompts]"


def test_the_sampler_is_rtdmds_for_a_student_and_unguided_for_a_teacher_by_default():
    suite = RTDMDHPSv3(RTDMDHPSv3.Config(models="stand-in"))
    student = suite.sampler(SamplerSpec(role="student", num_steps=2, kind="euler-few-step", eta=0.5, tag="r"))
    assert (student.kind, student.num_steps, student.eta, student.tag) == ("cps", 4, 0.9, "r")
    teacher = suite.sampler(SamplerSpec(role="teacher", num_steps=28, kind="euler"))
    assert (teacher.kind, teacher.num_steps, teacher.cfg) == ("euler", 28, 1.0)
    assert suite.sampler(SamplerSpec(role="teacher", num_steps=28, kind="euler", cfg=7.0)).cfg == 7.0


def test_scorers_see_rtdmds_uint8_levels_and_the_result_names_the_protocol(monkeypatch):
    suite = RTDMDHPSv3(RTDMDHPSv3.Config(models="stand-in"))
    seen = []
    monkeypatch.setattr(suite.inner_suite, "score", lambda images, prompts, ctx=None: seen.append(images) or
                        {"hpsv3": 1.5, "suite": "hpsv3[stand-in]", "version": "v"})
    out = suite.score(torch.tensor([0.9, 0.1, 0.5]).view(1, 3, 1, 1), ["p"])
    assert torch.equal(seen[0].flatten() * 255, torch.tensor([229.0, 26.0, 128.0]))  # by hand, as above; 127.5 -> 128
    assert out["suite"] == "rtdmd-64-hpsv3[stand-in]" and out["hpsv3"] == 1.5
    assert out["scoring_suite"] == {"suite": "hpsv3[stand-in]", "version": "v"}
    assert out["rtdmd_protocol"]["variant"] == "rtdmd-64" and "noise" in out["rtdmd_protocol"]


def test_groups_per_suite_overrides_and_the_protocol_resolution():
    assert expand_suites(["rtdmd", "fid"]) == ["rtdmd-drawbench", "rtdmd-geneval", "rtdmd-geneval2", "rtdmd-ocr",
                                              "rtdmd-hpsv3", "fid"]
    sets = {"models": "stand-in", "rtdmd-ocr.scoring.python": "/x/python"}
    names = expand_suites(["rtdmd"])
    assert suite_overrides("rtdmd-ocr", sets, names) == {"models": "stand-in", "scoring.python": "/x/python"}
    assert suite_overrides("rtdmd-hpsv3", sets, names) == {"models": "stand-in"}
    with pytest.raises(UserError, match="not among the suites"):
        suite_overrides("fid", sets, ["fid"])

    class Cfg:
        resolution = 512

    suite = RTDMDHPSv3(RTDMDHPSv3.Config(models="stand-in"))
    assert protocol_resolution(suite, "sd35m", Cfg()) == 1024  # a real base is rebuilt at 1024
    assert protocol_resolution(suite, "tiny-sd3", Cfg()) is None  # stand-in bases keep their size
    assert protocol_resolution(suite, "toy2d", object()) is None  # no resolution at all
    Cfg.resolution = 1024
    assert protocol_resolution(suite, "sd3", Cfg()) is None  # already there


GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}],
     "prompt": "a photo of two cups"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]


@pytest.mark.slow
def test_every_column_end_to_end_on_tiny_sd3_with_stand_ins(tmp_path, shared_data):
    """`rtdmd-bench eval --suite rtdmd --base tiny-sd3`: the five protocol suites in RTDMD's order, each
    labelled stand-in, on the first lines of RTDMD's files (a GenEval metadata stand-in: RTDMD's shuffled
    file is not in ../shared/data)."""
    sys.path.insert(0, str(TESTS))
    from ocr_stand_in import make_environment

    ocr = make_environment(tmp_path / "ocr-env")
    files = {}
    for suite, source in [("drawbench", "drawbench/test.txt"), ("geneval2", "geneval2/test.jsonl"),
                          ("ocr", "ocr/test.txt"), ("hpsv3", "hpsv3/test.txt")]:
        files[suite] = tmp_path / Path(source).name.replace("test", suite)
        files[suite].write_text("\n".join((shared_data / source).read_text().splitlines()[:2]) + "\n")
    files["geneval"] = tmp_path / "geneval.jsonl"
    files["geneval"].write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_ROWS))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", RTDMD_BENCH_OCR_PYTHON=ocr["python"],
               RTDMD_BENCH_OCR_PATH=ocr["local_path"])
    args = [sys.executable, "-m", "rtdmd_bench", "eval", "--base", "tiny-sd3", "--suite", "rtdmd", "--out",
            str(tmp_path / "out"), "--batch-size", "4", "--set", "suite.models=stand-in"]
    for suite, path in files.items():
        args += ["--set", f"rtdmd-{suite}.scoring.prompts={path}"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {p.name: json.loads(p.read_text()) for p in (tmp_path / "out" / "eval").glob("*.json")}
    want = {f"rtdmd-64-{c}[stand-in,own prompts].json": n for c, n in
            [("drawbench", 2), ("geneval", 3), ("geneval2", 2), ("ocr", 2), ("hpsv3", 2)]}
    assert {k: r["num_prompts"] for k, r in results.items()} == want
    headline = {"drawbench": "pickscore", "geneval": "geneval_rtdmd", "geneval2": "geneval2", "ocr": "ocr",
                "hpsv3": "hpsv3"}
    for name, res in results.items():
        column = name.split("-", 2)[2].split("[")[0]
        assert res["suite"] == res["metrics"]["suite"] == name[:-5]
        assert res["seed"] == 42 and res["sampler"]["cfg"] == 1.0 and res["sampler"]["kind"] == "cps"
        assert res["resolution"]["requested"] == 1024 and res["resolution"]["used"] == 32  # a tiny base keeps its size
        assert res["metrics"]["rtdmd_protocol"]["variant"] == "rtdmd-64"
        assert not res["metrics"]["rtdmd_protocol"]["prompt_file"]["official"]
        assert "stand-in" in res["metrics"]["scoring_suite"]["suite"]
        assert torch.isfinite(torch.tensor(float(res["metrics"][headline[column]])))
        assert set(res["higher_is_better"]) <= set(res["metrics"])


@pytest.mark.slow
def test_a_runs_student_is_sampled_as_rtdmd_and_a_real_base_would_be_rebuilt_larger(tmp_path, shared_data):
    """`eval --run` under the protocol: the student's sampler becomes 4 CPS steps at eta 0.9 whatever it
    trained with, and `load_for_eval(resolution=)` renders the same weights at another size (what the
    protocol asks of real bases; tiny-sd3 keeps its own size under the protocol itself)."""
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import evaluate_suites
    from rtdmd_bench.train import load_for_eval, train

    cfg = resolve_config("dmd2", "tiny-sd3", ["run.rewards=tiny-clipscore=1.0", "train.batch_size=4", "train.threads=1",
                                              "train.budget=1G", "method.num_steps=2", "method.eta=0.5"])
    train(cfg, tmp_path / "run")
    prompts = tmp_path / "db.txt"
    prompts.write_text("a cat\na dog\n")
    (res,) = evaluate_suites(["rtdmd-drawbench"], run=tmp_path / "run",
                             overrides={"models": "stand-in", "scoring.prompts": str(prompts)})
    assert (res["sampler"]["kind"], res["sampler"]["num_steps"], res["sampler"]["eta"]) == ("cps", 4, 0.9)
    assert res["image_size"] == [32, 32] and (tmp_path / "run" / "eval" / f"{res['suite']}.json").is_file()
    own, larger = load_for_eval(tmp_path / "run"), load_for_eval(tmp_path / "run", resolution=64)
    assert larger.cfg.base.resolution == 64 and larger.base.latent_shape[-1] == 2 * own.base.latent_shape[-1]
    mine, theirs = own.base.state_dict("student"), larger.base.state_dict("student")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)  # the same weights
