"""Config values are checked against the ranges their types declare (rtdmd_bench/ranges.py) before
anything is built; saved configs that are not run configs are user errors (issue 13)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import torch

from rtdmd_bench import config, registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import AdamBeta, NonNegative, Positive, PositiveInt, Range, Unit, check_ranges


@pytest.mark.parametrize("r,inside,outside,text", [
    (Range(lo=0, lo_open=True), [1e-12, 3.0], [0.0, -1.0, float("nan"), float("inf")], "> 0"),
    (Range(lo=0), [0.0, 2.0], [-1e-9], ">= 0"),
    (Range(lo=0, hi=1, hi_open=True), [0.0, 0.999], [1.0, -0.1], "in [0, 1)"),
    (Range(lo=0, hi=1), [0.0, 1.0], [1.5], "in [0, 1]"),
    (Range(lo=1), [1, 7], [0, -3], ">= 1"),
    (Range(hi=2.5), [-4.0, 2.5], [3.0], "<= 2.5"),
])
def test_range_membership_and_wording_by_hand(r, inside, outside, text):
    assert all(r.contains(v) for v in inside) and not any(r.contains(v) for v in outside)
    assert r.describe() == text


@dataclass
class Inner:
    steps: PositiveInt = 4
    """a count"""


@dataclass
class Outer:
    lr: NonNegative = 1e-3
    """a learning rate"""
    betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    """Adam betas"""
    weights: tuple[Positive, ...] = (1.0,)
    """positive weights"""
    scale: Unit | None = None
    """an optional fraction"""
    inner: Inner = field(default_factory=Inner)
    """a nested group"""


@dataclass
class Derived(Outer):
    lr: float = 0.5  # redeclared without a range: the parent's still holds
    """another default"""


@pytest.mark.parametrize("change,message", [
    ({"lr": -1.0}, "x.lr = -1.0 is out of range: it must be >= 0"),
    ({"betas": (0.9, 1.0)}, "x.betas[1] = 1.0 is out of range: it must be in [0, 1)"),
    ({"weights": (1.0, 2.0, 0.0)}, "x.weights[2] = 0.0 is out of range: it must be > 0"),
    ({"scale": 1.5}, "x.scale = 1.5 is out of range: it must be in [0, 1]"),
    ({"inner": Inner(steps=0)}, "x.inner.steps = 0 is out of range: it must be >= 1"),
])
def test_check_ranges_names_the_field_the_value_and_the_range(change, message):
    check_ranges(Outer(), "x")  # the defaults are fine, and so is an unset optional
    with pytest.raises(UserError) as failed:
        check_ranges(dataclasses.replace(Outer(), **change), "x")
    assert str(failed.value) == message


def test_a_subclass_that_only_changes_a_default_keeps_the_parents_range():
    check_ranges(Derived(), "x")
    with pytest.raises(UserError, match="x.lr = -2.0"):
        check_ranges(Derived(lr=-2.0), "x")


@pytest.mark.parametrize("kind,name", [(k, n) for k in registry.KINDS for n in registry.names(k)])
def test_every_registered_default_config_is_in_range(kind, name):
    check_ranges(registry.resolve(kind, name).Config(), name)


@pytest.mark.parametrize("method", registry.names("methods"))
@pytest.mark.parametrize("base", ["toy2d", "digits", "sd3", "flux2-4b", "tiny-sd3"])
def test_every_recipe_is_in_range(method, base):
    config.resolve_config(method, base)  # raises if a recipe value were out of range


@pytest.mark.parametrize("values", [{"lr": -1e-3}, {"lr": 0.0}, {"betas": (1.0, 0.999)}, {"betas": (0.0, 0.999)},
                                    {"betas": (0.9, -0.1)}, {"weight_decay": -0.01}, {"weight_decay": 0.0}])
def test_the_optimiser_ranges_refuse_exactly_what_torchs_adamw_refuses(values):
    """torch.optim.AdamW is the independent judge of lr, betas and weight decay."""
    settings = {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, **values}
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], **settings)
        torch_accepts = True
    except ValueError:
        torch_accepts = False
    overrides = [f"method.lr_generator={settings['lr']}", f"method.weight_decay={settings['weight_decay']}",
                 "method.betas={},{}".format(*settings["betas"])]
    try:
        config.resolve_config("dmd2", "toy2d", overrides)
        we_accept = True
    except UserError:
        we_accept = False
    assert we_accept == torch_accepts


def test_annotated_fields_still_parse_as_their_plain_types():
    cfg = config.resolve_config("rtdmd", "toy2d", ["method.stage1.lr_fake=2e-4", "method.group_size=4",
                                                   "method.betas=0.5,0.9", "train.batch_size=3e2"])
    assert cfg.method.stage1.lr_fake == 2e-4 and cfg.method.group_size == 4 and cfg.method.betas == (0.5, 0.9)
    assert cfg.train.batch_size == 300 and isinstance(cfg.train.batch_size, int)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(UserError, match="finite"):
        config.resolve_config("dmd2", "toy2d", [f"method.lr_fake={text}"])
    with pytest.raises(UserError, match="finite"):
        config.resolve_config("dmd2", "toy2d", [f"run.rewards=toy-quadratic={text}"])


@pytest.mark.parametrize("data,needle", [
    ("just text", "not a mapping"),
    (None, "not a mapping"),
    ({"run": {"method": "dmd2", "base": "toy2d"}}, "'train' section is missing"),
    ({"run": {"method": "dmd2", "base": "toy2d"}, "train": [1], "method": {}, "base": {}}, "'train' section is not a mapping"),
    ({"run": {"method": "dmd9"}, "train": {}, "method": {}, "base": {}}, "unknown method 'dmd9'"),
    ({"run": {}, "train": {"batch_size": 0}, "method": {}, "base": {}}, "train.batch_size = 0"),
    ({"run": {}, "train": {}, "method": {"nope": 1}, "base": {}}, "method.nope"),
    ({"run": {}, "train": {}, "method": {}, "base": {}, "reward": {"toy-quadratic": 3}}, "reward.toy-quadratic"),
])
def test_a_saved_config_that_is_not_a_run_config_is_a_user_error_naming_the_file(data, needle):
    with pytest.raises(UserError) as failed:
        config.from_dict(data, "runs/x/config.yaml")
    assert str(failed.value).startswith("runs/x/config.yaml is not a valid run config") and needle in str(failed.value)


def test_suite_configs_are_range_checked_when_built():
    from rtdmd_bench.evaluate import build_suite

    with pytest.raises(UserError, match="toy-tilt.knn_k = 0 is out of range"):
        build_suite("toy-tilt", {"knn_k": "0"})
    with pytest.raises(UserError, match="rtdmd-hpsv3.scoring.hpsv3.batch_size = 0"):
        build_suite("rtdmd-hpsv3", {"scoring.hpsv3.batch_size": "0"})

