"""digits base: prompt parser, split, caching (a second prepare does not retrain), networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtdmd_bench.digits import cache as digits_cache
from rtdmd_bench.bases.digits import Digits, DigitsConfig, prepare_digits
from rtdmd_bench.compute import ComputeMeter
from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.digits.data import load_split, parse_prompt, parse_prompts
from rtdmd_bench.digits.nets import ClassifierConfig, TeacherConfig
from rtdmd_bench.digits.training import train_classifier, train_teacher
from rtdmd_bench.errors import UserError

TINY_TEACHER = TeacherConfig(hidden=32, blocks=1, train_steps=20, batch_size=32)
TINY_CLASSIFIER = ClassifierConfig(channels=8, feature_dim=16, epochs=1)


def tiny_cfg() -> DigitsConfig:
    return DigitsConfig(teacher=TINY_TEACHER, classifier=TINY_CLASSIFIER, check_samples_per_class=2,
                        check_steps=3, require_teacher_check=False, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks on a shared 2-core machine: one intra-op thread is much faster."""
    with single_thread():
        yield


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny_base(tmp_cache: Path) -> Digits:
    base = Digits(tiny_cfg())
    base.prepare(ComputeMeter())
    return base


# ----------------------------------------------------------------------------- prompts

@pytest.mark.parametrize("prompt, label", [
    ("a handwritten digit seven", 7), ("a handwritten 7", 7), ("digit 7", 7), ("7", 7),
    ("A Handwritten Digit ZERO.", 0), ("an handwritten  nine", 9), ("number three", 3),
    ("a handwritten digit 4", 4), ("  eight ", 8),
])
def test_parse_prompt_words_and_numerals(prompt: str, label: int) -> None:
    assert parse_prompt(prompt) == label


@pytest.mark.parametrize("prompt", ["a cat", "digit 12", "digit seven eight", "", "a handwritten",
                                    "handwritten digit -1", "the digit 7", "seventy"])
def test_parse_prompt_malformed_names_accepted_forms(prompt: str) -> None:
    with pytest.raises(UserError, match="a handwritten digit seven"):
        parse_prompt(prompt)


def test_parse_prompts_rejects_a_bare_string() -> None:
    with pytest.raises(UserError, match="list of prompts"):
        parse_prompts("digit 7")


def test_train_prompts_cover_every_class_in_both_styles() -> None:
    prompts = Digits(tiny_cfg()).train_prompts()
    labels = parse_prompts(prompts)
    assert labels.dtype == torch.long and labels.shape == (len(prompts),)
    assert sorted(set(labels.tolist())) == list(range(10))
    words = [p for p in prompts if p.split()[-1].isalpha()]
    numerals = [p for p in prompts if p.split()[-1].isdigit()]
    assert set(parse_prompts(words).tolist()) == set(parse_prompts(numerals).tolist()) == set(range(10))


# ----------------------------------------------------------------------------- data

def test_split_is_fixed_stratified_and_scaled() -> None:
    tx, ty = load_split("train")
    hx, hy = load_split("held_out")
    assert tx.shape == (1437, 1, 8, 8) and hx.shape == (360, 1, 8, 8)
    assert tx.min() == -1 and tx.max() == 1
    assert torch.bincount(hy, minlength=10).min() >= 35  # stratified: ~36 per class
    tx2, _ = load_split("train")
    assert torch.equal(tx, tx2)
    # no image is in both halves (the raw data has no exact duplicates across the split)
    train_set = {tuple(x.flatten().tolist()) for x in tx}
    assert not any(tuple(x.flatten().tolist()) in train_set for x in hx)


# ----------------------------------------------------------------------------- caching

def test_second_prepare_does_not_retrain(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"teacher": 0, "classifier": 0}
    real_teacher, real_clf = train_teacher, train_classifier

    def spy_teacher(cfg, progress):
        calls["teacher"] += 1
        return real_teacher(cfg, progress)

    def spy_clf(cfg, progress):
        calls["classifier"] += 1
        return real_clf(cfg, progress)

    monkeypatch.setattr(digits_cache, "train_teacher", spy_teacher)
    monkeypatch.setattr(digits_cache, "train_classifier", spy_clf)
    first = prepare_digits(tiny_cfg())
    assert calls == {"teacher": 1, "classifier": 1}
    mtime = Path(first["teacher"]).stat().st_mtime_ns
    second = prepare_digits(tiny_cfg())
    assert calls == {"teacher": 1, "classifier": 1}
    assert Path(first["teacher"]).stat().st_mtime_ns == mtime
    assert second["teacher_check"] == first["teacher_check"]
    # the check is recorded in the teacher's metadata JSON; no temp files are left behind
    meta = json.loads(Path(first["teacher_meta"]).read_text())
    assert [c["accuracy"] for c in meta["checks"].values()] == [first["teacher_check"]["accuracy"]]
    assert not list((tmp_cache / "digits").glob(".*tmp*"))
    # another config is another cache entry; force rebuilds
    prepare_digits(DigitsConfig(**{**tiny_cfg().__dict__, "teacher": TeacherConfig(
        hidden=32, blocks=1, train_steps=21, batch_size=32)}))
    assert calls == {"teacher": 2, "classifier": 1}
    prepare_digits(tiny_cfg(), force=True)
    assert calls == {"teacher": 3, "classifier": 2}


def test_teacher_training_is_deterministic(tmp_cache: Path) -> None:
    a, _ = train_teacher(TINY_TEACHER, progress=False)
    b, _ = train_teacher(TINY_TEACHER, progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_training_leaves_the_callers_random_stream_untouched(tmp_cache: Path) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_teacher(TINY_TEACHER, progress=False)
    train_classifier(TINY_CLASSIFIER, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_failed_teacher_check_raises_when_required(tmp_cache: Path) -> None:
    cfg = tiny_cfg()
    cfg.require_teacher_check = True
    with pytest.raises(UserError, match="90%"):
        Digits(cfg).prepare(ComputeMeter())  # a 20-step teacher draws noise, not digits


def test_corrupt_cache_file_gives_user_error(tmp_cache: Path) -> None:
    paths = prepare_digits(tiny_cfg())
    Path(paths["teacher"]).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="prepare digits"):
        digits_cache.load_teacher(TINY_TEACHER, progress=False)


# ----------------------------------------------------------------------------- base

def test_prepare_sets_teacher_forward_flops_and_charges_no_init(tiny_base: Digits) -> None:
    meter = ComputeMeter()
    tiny_base.prepare(meter)
    assert meter.teacher_forward_flops > 0
    assert meter.used == 0 and "init" not in meter.flops


def test_student_and_fake_start_equal_to_teacher_with_or_without_step(tiny_base: Digits) -> None:
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn((4, 1, 8, 8), generator=g), torch.rand(4, generator=g)
    cond = tiny_base.encode(["digit 1", "digit 2", "a handwritten 3", "a handwritten digit nine"])
    v_t = tiny_base.velocity("teacher", x, sigma, cond)
    for role in ("student", "fake"):
        assert torch.allclose(tiny_base.velocity(role, x, sigma, cond), v_t)
        assert torch.allclose(tiny_base.velocity(role, x, sigma, cond, step=torch.tensor([0, 1, 2, 3])), v_t)
    with pytest.raises(UserError, match="step_slots"):
        tiny_base.velocity("fake", x, sigma, cond, step=torch.full((4,), 99))


def test_step_embedding_is_trainable_and_changes_the_output(tiny_base: Digits) -> None:
    x, sigma, cond = torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5), torch.tensor([3, 3])
    step = torch.tensor([0, 1])
    out = tiny_base.velocity("fake", x, sigma, cond, step=step)
    out.sum().backward()
    net = tiny_base.nets["fake"]
    assert net.step.weight.grad is not None and net.step.weight.grad[:2].abs().sum() > 0
    with torch.no_grad():
        net.step.weight[1] += 1.0
    v = tiny_base.velocity("fake", x, sigma, cond, step=step)
    assert torch.allclose(v[0], out[0]) and not torch.allclose(v[1], out[1])


def test_cfg_combines_conditional_and_null_class(tiny_base: Digits) -> None:
    g = torch.Generator().manual_seed(1)
    x, sigma, cond = torch.randn((3, 1, 8, 8), generator=g), torch.rand(3, generator=g), torch.tensor([0, 5, 9])
    v_cond = tiny_base.velocity("teacher", x, sigma, cond)
    v_null = tiny_base.nets["teacher"](x, sigma, torch.full((3,), 10))
    assert torch.allclose(tiny_base.velocity("teacher", x, sigma, cond, cfg=1.0), v_cond, atol=1e-6)
    assert torch.allclose(tiny_base.velocity("teacher", x, sigma, cond, cfg=3.0),
                          v_null + 3.0 * (v_cond - v_null), atol=1e-5)


def test_decode_sigmas_and_state_dict_roundtrip(tiny_base: Digits) -> None:
    img = tiny_base.decode(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).repeat(13)[:64].view(1, 1, 8, 8))
    assert img.shape == (1, 3, 8, 8) and img.min() == 0 and img.max() == 1
    assert torch.equal(img[:, 0], img[:, 2]) and img[0, 0, 0, 2] == 0.5
    assert torch.allclose(tiny_base.sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    sd = tiny_base.state_dict("student")
    with torch.no_grad():
        for p in tiny_base.trainable("student"):
            p.add_(1.0)
    assert not torch.equal(tiny_base.state_dict("student")["inp.weight"], sd["inp.weight"])
    tiny_base.load_state_dict("student", sd)
    assert torch.equal(tiny_base.state_dict("student")["inp.weight"], sd["inp.weight"])
    assert all(p.requires_grad for p in tiny_base.trainable("fake"))
    with pytest.raises(ValueError, match="frozen"):
        tiny_base.trainable("teacher")
    assert not any(p.requires_grad for p in tiny_base.nets["teacher"].parameters())


def test_velocity_before_prepare_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        Digits(tiny_cfg()).velocity("teacher", torch.zeros(1, 1, 8, 8), torch.ones(1), torch.zeros(1, dtype=torch.long))


# ----------------------------------------------------------------------------- the real teacher

@pytest.mark.slow
def test_default_teacher_passes_the_90_percent_check() -> None:
    """Builds (or reuses) the real cache: 50-step Euler CFG samples, classifier labels >= 90%."""
    result = prepare_digits(DigitsConfig())
    assert result["classifier_held_out_accuracy"] >= 0.97
    assert result["teacher_check"]["steps"] == 50 and result["teacher_check"]["samples_per_class"] == 50
    assert result["teacher_check"]["accuracy"] >= 0.9 and result["teacher_check"]["passed"]


def test_registry_resolves_digits_components() -> None:
    from rtdmd_bench import registry

    assert registry.resolve("bases", "digits") is Digits
    for kind, name in (("rewards", "digit-correct"), ("rewards", "digit-ink"), ("suites", "digits")):
        assert registry.resolve(kind, name).__name__ in ("DigitCorrect", "DigitInk", "DigitsSuite")


def test_metered_student_call_charges_forward_and_backward(tiny_base: Digits) -> None:
    from rtdmd_bench.compute import MeteredBase

    meter = ComputeMeter()
    metered = MeteredBase(tiny_base, meter)
    x, sigma, cond = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5), torch.tensor([1, 2, 3])
    metered.velocity("student", x, sigma, cond).sum().backward()
    with torch.no_grad():
        metered.velocity("teacher", x, sigma, cond, cfg=2.0)
    flops = meter.breakdown()["roles"]
    assert flops["student"]["fwd"] > 0 and flops["student"]["bwd"] > flops["student"]["fwd"]
    # CFG runs the conditional and null passes: twice the per-sample cost of the student
    assert flops["teacher"]["fwd"] == pytest.approx(2 * flops["student"]["fwd"], rel=0.05)
    assert flops["teacher"]["bwd"] == 0
