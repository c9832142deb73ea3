"""Allowed ranges of numeric config fields, declared in the field's type.

A field that only makes sense in a range says so in its annotation, e.g.

    lr_generator: NonNegative = 5e-7
    num_steps: PositiveInt = 4
    betas: tuple[AdamBeta, AdamBeta] = (0.0, 0.999)

`NonNegative` is `Annotated[float, Range(lo=0)]`: parsing, `--help` and the type checkers see a
plain float, and `check_ranges` (run by rtdmd_bench.config when a run's config is resolved or read
back, and by the evaluation engine for suite configs) finds the `Range` and refuses a value outside
it with a `UserError` naming the field, the value and the range, before anything is built or written
(a learning rate of -1 would otherwise surface as AdamW's ValueError deep inside the first step, and
a tilt temperature of 0 as a division by zero). A support module (it imports only `errors`): every
layer may declare ranges.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from rtdmd_bench.errors import UserError


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in; a missing bound is unbounded, `*_open` excludes it."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def describe(self) -> str:
        """'> 0', '>= 1', 'in [0, 1)', ... as the error messages print it."""
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


Positive = Annotated[float, Range(lo=0, lo_open=True)]
"""A float > 0 (tilt temperature, PPO clip, reward scales)."""
NonNegative = Annotated[float, Range(lo=0)]
"""A float >= 0 (learning rates, weight decay, loss weights; 0 switches the thing off)."""
Unit = Annotated[float, Range(lo=0, hi=1)]
"""A float in [0, 1] (fractions, EMA decays, CPS eta, noise levels)."""
AdamBeta = Annotated[float, Range(lo=0, hi=1, hi_open=True)]
"""An Adam(W) moment decay, in [0, 1) as torch.optim.AdamW requires."""
PositiveInt = Annotated[int, Range(lo=1)]
"""An int >= 1 (batch sizes, step counts, intervals)."""
NonNegativeInt = Annotated[int, Range(lo=0)]
"""An int >= 0 (counts where 0 means none / off / all)."""
GroupSize = Annotated[int, Range(lo=2)]
"""Samples per prompt of a GRPO group: >= 2 (one sample has no group statistics)."""


@functools.lru_cache(maxsize=None)
def _declared_types(cls: type) -> dict[str, Any]:
    """Field -> its annotation with `Annotated` extras kept, from the nearest class in the MRO that
    declares the field with a `Range`: a subclass that only changes a default (`eta: float = 0.5`)
    keeps its parent's range."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        hints = typing.get_type_hints(klass, include_extras=True)
        for name in klass.__dict__.get("__annotations__", {}):
            if name not in out and _ranges_in(hints.get(name)):
                out[name] = hints[name]
    return out


def _ranges_in(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Annotated and any(isinstance(m, Range) for m in typing.get_args(tp)[1:]):
        return True
    return any(_ranges_in(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _check_value(value: Any, tp: Any, where: str) -> None:
    """Raise a UserError if `value` (or an element of it) lies outside a `Range` of type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        for r in (m for m in args[1:] if isinstance(m, Range)):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not r.contains(value):
                raise UserError(f"{where} = {value!r} is out of range: it must be {r.describe()}")
        _check_value(value, args[0], where)
    elif origin in (typing.Union, types.UnionType):
        if value is not None:
            for arm in (a for a in args if a is not type(None)):
                _check_value(value, arm, where)
    elif origin in (tuple, list) and isinstance(value, (tuple, list)):
        elems = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        for i, (v, t) in enumerate(zip(value, elems)):
            _check_value(v, t, f"{where}[{i}]")


def check_ranges(obj: Any, where: str) -> None:
    """Check every field of dataclass `obj` (nested dataclasses too) against the `Range` in its
    annotation; `where` prefixes the field names in the message ("method" -> "method.lr_fake")."""
    declared = _declared_types(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, key)
        elif f.name in declared:
            _check_value(value, declared[f.name], key)
