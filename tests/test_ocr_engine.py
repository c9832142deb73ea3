"""The OCR reward and suite across the process boundary: PaddleOCR runs under a user-named python
(here the stand-in environment of tests/ocr_stand_in.py, which runs the shipped runner with a fake
paddleocr that reads text encoded in the pixels); misconfigurations and failures are UserErrors
that say what to fix, and nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from ocr_stand_in import encode, make_environment
from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import ocr as ocr_module
from rtdmd_bench.rewards.ocr import ENV, OCR, EngineConfig, PaddleOCREngine, parse_reads
from suites.ocr import OCRSuite

# A real OCR environment (paddlepaddle 2.6.2 + paddleocr 2.9.1), if the machine has one; read before
# the fixture below clears the variable for every other test.
REAL_PYTHON = os.environ.get(ENV["python"], "")
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("STAND_IN_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # PaddleOCR's default model folder: never the real one


@pytest.fixture()
def stand_in(tmp_path):
    return make_environment(tmp_path / "env")


def engine(env, **fields):
    return PaddleOCREngine(EngineConfig(**{"models": "stand-in", **env, **fields}), environ={})


def test_the_runner_reads_every_image_in_order_with_rtdmds_engine(stand_in):
    e = engine(stand_in)
    images = torch.stack([encode([("Open", 0.9), ("Late", 0.7)]), encode([]), encode([("weak", 0.3), ("ok", 0.5)])])
    reads = e.read(images)
    assert [r.lines for r in reads] == [[("Open", round(0.9 * 255) / 255), ("Late", round(0.7 * 255) / 255)], [],
                                        [("ok", round(0.5 * 255) / 255)]]  # < 0.5 dropped, none found = [None]
    assert all(r.error is None for r in reads)
    assert e.version == "ocr/stand-in-rgb-1" and e.stand_in
    info = e.provenance()
    assert info["engine_kwargs"] == {"use_angle_cls": False, "lang": "en", "use_gpu": False, "show_log": False}
    assert info["settings"]["det_model_dir"].endswith("whl/det/en/en_PP-OCRv3_det_infer")
    assert info["settings"]["det_model_dir"].startswith(stand_in["local_path"])  # BASE_DIR = the model folder
    assert set(info["model_files"]["rec"]) == {"inference.pdmodel", "inference.pdiparams"}
    assert info["channel_order"] == "rgb" and info["python"] == stand_in["python"]


def test_images_are_read_in_chunks_of_processes_and_stay_in_order(stand_in, monkeypatch):
    e = engine(stand_in)
    monkeypatch.setattr(ocr_module, "CHUNK", 2)
    texts = ["one", "two", "three", "four", "five"]
    reads = e.read(torch.stack([encode([(t, 0.9)]) for t in texts]))
    assert [r.lines[0][0] for r in reads] == texts
    assert e.read(torch.zeros(0, 3, 8, 48)) == []


def test_channel_order_rgb_hands_over_the_rgb_array_and_bgr_reverses_it(stand_in):
    image = encode([("RED", 0.9)], channel=0)
    image[2] = encode([("BLUE", 0.9)], channel=2)[2]
    assert engine(stand_in).read(image[None])[0].lines[0][0] == "RED"  # channel 0 of the array = R
    bgr = engine(stand_in, channel_order="bgr")
    assert bgr.read(image[None])[0].lines[0][0] == "BLUE" and bgr.version == "ocr/stand-in-bgr-1"


def test_an_image_paddleocr_fails_on_is_recorded_and_scores_zero(stand_in):
    reward = OCR(OCR.Config(**stand_in, models="stand-in"), environ={})
    images = torch.stack([encode([("\x01bad", 0.9)]), encode([("HELLO", 0.9), ("W0rld", 0.8)])])
    details = reward.details(images, ['A sign "Hello World"', 'A sign "Hello World"'])
    assert details[0][0] == 0.0 and details[0][2] == "ValueError: stand-in: unreadable text"
    # "hellow0rld" against "helloworld": one substitution over 10 characters
    assert details[1] == (pytest.approx(0.9), "HELLOW0rld", None)
    scores = reward(images, ['A sign "Hello World"'] * 2)
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx([0.0, 0.9])
    assert reward.name == "tiny-ocr[stand-in]" and reward.differentiable is False


def test_reward_refuses_prompts_without_a_target_before_running_paddleocr(stand_in, monkeypatch):
    reward = OCR(OCR.Config(**stand_in, models="stand-in"), environ={})
    monkeypatch.setenv("STAND_IN_MODE", "fail")  # would fail if the runner were started
    with pytest.raises(UserError, match="straight double quotes"):
        reward(encode([("x", 0.9)])[None], ["A sign reading “curly”"])


def test_registry_builds_the_stand_in_reward_from_environment_variables(stand_in, monkeypatch):
    monkeypatch.setenv(ENV["python"], stand_in["python"])
    monkeypatch.setenv(ENV["local_path"], stand_in["local_path"])
    reward = registry.resolve("rewards", "tiny-ocr")()
    assert reward.name == "tiny-ocr[stand-in]"
    bgr = registry.resolve("rewards", "tiny-ocr")(registry.resolve("rewards", "tiny-ocr").Config(channel_order="bgr"))
    assert bgr.name == "tiny-ocr[stand-in][bgr-input]"


def test_missing_environment_names_the_field_the_variable_and_the_setup_commands():
    with pytest.raises(UserError) as err:
        PaddleOCREngine(EngineConfig(), environ={})
    assert "RTDMD_BENCH_OCR_PYTHON" in str(err.value) and "pip install paddlepaddle==2.6.2 paddleocr==2.9.1" in str(err.value)


def test_a_python_that_is_not_executable_is_refused(tmp_path):
    (tmp_path / "python").write_text("")
    with pytest.raises(UserError, match="not an executable file"):
        PaddleOCREngine(EngineConfig(python=str(tmp_path / "python")), environ={})


def test_an_incomplete_model_folder_names_what_is_missing_and_where_to_get_it(stand_in):
    os.remove(os.path.join(stand_in["local_path"], "whl/rec/en/en_PP-OCRv4_rec_infer/inference.pdiparams"))
    with pytest.raises(UserError) as err:
        engine(stand_in)
    msg = str(err.value)
    assert "whl/rec/en/en_PP-OCRv4_rec_infer" in msg and "en_PP-OCRv4_rec_infer.tar" in msg
    assert "whl/det/en" not in msg and "RTDMD_BENCH_OCR_PATH" in msg


def test_default_model_folder_without_models_shows_paddleocrs_download_error(stand_in):
    with pytest.raises(UserError) as err:
        engine({"python": stand_in["python"]})  # no local_path: PaddleOCR's ~/.paddleocr/ (empty HOME)
    assert "RuntimeError: Download from https://paddleocr.bj.bcebos.com" in str(err.value)


def test_environment_variables_fill_empty_fields_and_fields_win(stand_in, tmp_path):
    environ = {ENV["python"]: stand_in["python"], ENV["local_path"]: str(tmp_path / "nowhere")}
    with pytest.raises(UserError, match="nowhere"):
        PaddleOCREngine(EngineConfig(models="stand-in"), environ=environ)
    e = PaddleOCREngine(EngineConfig(models="stand-in", local_path=stand_in["local_path"]), environ=environ)
    assert e.python == stand_in["python"] and str(e.local_path) == stand_in["local_path"]


def test_a_failing_runner_shows_its_stderr_tail_and_leaves_nothing(stand_in, tmp_path, monkeypatch):
    e = engine(stand_in)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("STAND_IN_MODE", "fail")
    with pytest.raises(UserError) as err:
        e.read(encode([("x", 0.9)])[None])
    msg = str(err.value)
    assert "exit status 3" in msg and "paddleocr_runner.py" in msg and "--images" in msg
    assert "stderr line 30" in msg and "stderr line 11" in msg and "stderr line 10" not in msg  # last 20 lines
    assert list(scratch.iterdir()) == []  # the PNGs and any result are gone


@pytest.mark.parametrize("mode,message", [("segfault", "(?s)signal SIGSEGV.*printed nothing.*import-order"), ("silent", "wrote no engine.json")])
def test_a_crash_or_a_silent_exit_is_an_error(stand_in, monkeypatch, mode, message):
    monkeypatch.setenv("STAND_IN_MODE", mode)
    with pytest.raises(UserError, match=message):
        engine(stand_in)


def test_stand_in_and_real_environments_never_mix(stand_in, tmp_path):
    with pytest.raises(UserError, match="test stand-in of paddleocr"):
        engine(stand_in, models="official")
    real = make_environment(tmp_path / "real", version="2.9.1", stand_in=False)  # claims to be paddleocr 2.9.1
    with pytest.raises(UserError, match="drop models=stand-in"):
        engine(real)
    official = engine(real, models="official")
    assert official.version == "ocr/paddleocr-2.9.1-rgb-1" and not official.stand_in
    newer = make_environment(tmp_path / "newer", version="3.0.0", stand_in=False)
    with pytest.raises(UserError, match="paddleocr 3.0.0; RTDMD's OCR metric is paddleocr 2.9.1"):
        engine(newer, models="official")


def test_parse_reads_needs_every_image_once():
    good = {"images": {"000000.png": {"lines": [["a", 0.9]], "error": None}, "000001.png": {"lines": [], "error": "E"}}}
    reads = parse_reads(good, ["000000.png", "000001.png"])
    assert reads[0].lines == [("a", 0.9)] and reads[1].error == "E"
    with pytest.raises(UserError, match="read 2 images for 3 written.*000002.png"):
        parse_reads(good, ["000000.png", "000001.png", "000002.png"])
    with pytest.raises(UserError, match="malformed"):
        parse_reads({"images": {"000000.png": {"lines": "abc"}}}, ["000000.png"])


# ---------------------------------------------------------------------------------------------
# The suite

PROMPTS = ['A door sign reading "Open Late"', 'A mug with "Best Dad" printed', 'A banner "SALE 50"']
READS = [[("OPEN", 0.9), ("LATE", 0.8)], [("Best", 0.9)], [("\x01", 0.9)]]  # 1, 1 - 3/7, error -> 0


def test_suite_mean_and_result_fields(stand_in, tmp_path):
    prompts = tmp_path / "ocr.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    suite = OCRSuite(OCRSuite.Config(**stand_in, models="stand-in", prompts=str(prompts)))
    assert suite.prompts() == PROMPTS and suite.name == "ocr[stand-in]"
    images = torch.stack([encode(r) for r in READS])
    r = suite.score(images, suite.prompts(), None)
    assert r["ocr"] == pytest.approx((1.0 + (1 - 3 / 7) + 0.0) / 3)  # "bestdad" vs "best": 3 deletions
    assert r["suite"] == "ocr[stand-in]" and r["version"] == "ocr/stand-in-rgb-1" and "STAND-IN" in r["note"]
    assert r["partial"] and r["n_images"] == 3 and r["images_per_prompt"] == 1 and r["protocol_seed"] == 42
    assert r["n_errors"] == 1 and r["errors"][0]["index"] == 2
    assert [x["read"] for x in r["reads"]] == ["openlate", "best", ""] and r["reads"][0]["target"] == "openlate"
    assert r["engine"]["engine_kwargs"]["lang"] == "en" and r["engine"]["channel_order"] == "rgb"
    json.dumps(r)  # the result is JSON as it stands


def test_suite_names_the_prompt_rtdmd_cannot_score(stand_in, tmp_path):
    prompts = tmp_path / "ocr.txt"
    prompts.write_text('A sign "fine"\nA sign with nothing quoted\n')
    suite = OCRSuite(OCRSuite.Config(**stand_in, models="stand-in", prompts=str(prompts)))
    with pytest.raises(UserError, match=r"ocr.txt, prompt 2: .*straight double quotes"):
        suite.prompts()
    assert OCRSuite(OCRSuite.Config(**stand_in, models="stand-in", prompts=str(prompts), limit=1)).prompts() == ['A sign "fine"']


def test_suite_fails_when_built_if_the_environment_is_missing():
    with pytest.raises(UserError, match="RTDMD_BENCH_OCR_PYTHON"):
        OCRSuite()


@pytest.mark.slow
def test_cli_eval_on_tiny_sd3_with_the_stand_in_environment(stand_in, tmp_path, shared_data):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", RTDMD_BENCH_OCR_PYTHON=stand_in["python"],
               RTDMD_BENCH_OCR_PATH=stand_in["local_path"])
    args = [sys.executable, "-m", "rtdmd_bench", "eval", "--base", "tiny-sd3", "--suite", "ocr", "--out",
            str(tmp_path / "out"), "--batch-size", "2", "--set", "suite.models=stand-in", "--set", "suite.limit=3",
            "--set", f"suite.prompts={shared_data / 'ocr' / 'test.txt'}"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    files = list((tmp_path / "out" / "eval").glob("*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    m = res["metrics"]
    assert res["suite"] == m["suite"] == "ocr[stand-in]" and res["suite_version"] == "ocr/stand-in-rgb-1"
    assert m["reads"][0]["target"] == "springcollection2024" and m["n_images"] == 3 and m["partial"]
    assert m["ocr"] == pytest.approx(sum(x["score"] for x in m["reads"]) / 3)
    assert set(res["higher_is_better"]) <= set(m)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_PYTHON, reason="no OCR environment: set RTDMD_BENCH_OCR_PYTHON to run the real paddleocr")
def test_real_paddleocr_runs_the_shipped_runner_on_tiny_models(tmp_path):
    """The real paddleocr 2.9.1 engine (DB detector, crops, SVTR recogniser, CTC decoding, drop
    score) through the runner, offline, on tiny exported models whose reads mean nothing."""
    from PIL import Image, ImageDraw

    models = tmp_path / "models"
    subprocess.run([REAL_PYTHON, os.path.join(TESTS, "ocr_tiny_paddle_models.py"), str(models)], check=True,
                   capture_output=True)
    prompts = tmp_path / "ocr.txt"
    prompts.write_text('A sign "HELLO WORLD"\nA blank sign "nothing"\n')
    suite = OCRSuite(OCRSuite.Config(python=REAL_PYTHON, local_path=str(models), prompts=str(prompts)))
    assert suite.name == "ocr" and suite.version == "ocr/paddleocr-2.9.1-rgb-1"
    pictures = [Image.new("RGB", (256, 128), "white") for _ in range(2)]
    ImageDraw.Draw(pictures[0]).text((20, 50), "HELLO WORLD", fill="black", font_size=28)
    images = torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) / 255 for p in pictures])
    r = suite.score(images, suite.prompts(), None)
    engine_info = r["engine"]
    assert engine_info["paddleocr"] == "2.9.1" and not engine_info["stand_in"] and engine_info["paddle"]
    settings = engine_info["settings"]
    assert settings["drop_score"] == 0.5 and settings["ocr_version"] == "PP-OCRv4"
    assert settings["rec_char_dict_path"].endswith("en_dict.txt") and settings["det_model_dir"].startswith(str(models))
    assert r["reads"][1]["read"] == "" and r["n_errors"] == 0  # a blank image: PaddleOCR's [None]
    assert 0.0 <= r["ocr"] <= 1.0
