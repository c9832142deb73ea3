"""fid / fid-t through clean-fid with stand-in features (suites/fid.py)."""

from __future__ import annotations

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from suites.fid import FID, FIDT, projected, save_pngs, stand_in_features


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 0.6 + shift).clamp(0, 1)


def ctx_with(teacher):
    return EvalContext(base=None, rewards=RewardSet(), run_config={}, teacher_samples=teacher, seed=42)


def test_fid_t_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    suite = FIDT(FIDT.Config(features="stand-in"))
    x = images(24, 0)
    same = suite.score(x, ["p"] * 24, ctx_with(lambda: x.clone()))
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["suite"] == "fid-t[stand-in]" and "STAND-IN" in same["note"] and same["full_rank"]
    assert "no primary definition" in same["definition"] and same["feature_dim"] == 16
    assert same["sampling_seed"] == same["protocol_seed"] == 42 and "seed" not in same["note"]
    shifted = suite.score(x, ["p"] * 24, ctx_with(lambda: images(24, 0, shift=0.4)))
    assert shifted["fid"] > 0.01
    assert set(suite.higher_is_better) == {"fid"} and suite.higher_is_better["fid"] is False


def test_fid_t_needs_matching_teacher_samples():
    suite = FIDT(FIDT.Config(features="stand-in"))
    with pytest.raises(UserError, match="teacher"):
        suite.score(images(4, 0), ["p"] * 4, ctx_with(None))
    with pytest.raises(UserError, match="same prompts and seeds"):
        suite.score(images(4, 0), ["p"] * 4, ctx_with(lambda: images(5, 0)))


@pytest.mark.slow
def test_fid_against_a_reference_folder(tmp_path):
    x = images(30, 3)
    save_pngs(x, tmp_path / "ref")
    suite = FID(FID.Config(features="stand-in", reference=str(tmp_path / "ref"), feature_dim=8))
    result = suite.score(x, ["p"] * 30, None)
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)
    assert result["n_reference"] == 30 and result["feature_dim"] == 8 and result["suite"] == "fid[stand-in]"
    small = suite.score(images(6, 4), ["p"] * 6, None)
    assert not small["full_rank"] and "rank-deficient" in small["note"]
    with pytest.raises(UserError, match="reference"):
        FID(FID.Config(features="stand-in")).score(x, ["p"] * 30, None)


def test_missing_inception_weights_and_prompts_are_user_errors(tmp_path):
    suite = FID(FID.Config(inception_path=str(tmp_path)))
    assert suite.name == "fid" and "inception-d2048" in suite.version
    with pytest.raises(UserError, match="inception-2015-12-05.pt"):
        suite.features()
    with pytest.raises(UserError, match="suite.prompts="):
        suite.prompts()
    with pytest.raises(UserError):
        FID(FID.Config(feature_dim=-1))


def test_low_dimensional_projection_is_orthonormal_and_labelled():
    identity = lambda x: x  # noqa: E731
    fn = projected(identity, 10, 4, seed=0)
    basis = fn(torch.eye(10))  # (10, 4): the basis itself
    assert torch.allclose(basis.T @ basis, torch.eye(4), atol=1e-5)
    assert "d64" in FID(FID.Config(feature_dim=64)).version


def test_stand_in_features_are_deterministic():
    x = torch.rand(2, 3, 299, 299) * 255
    assert torch.equal(stand_in_features(16, 0)(x), stand_in_features(16, 0)(x))
    assert stand_in_features(16, 0)(x).shape == (2, 16)


def test_registered():
    assert registry.resolve("suites", "fid") is FID and registry.resolve("suites", "fid-t") is FIDT
