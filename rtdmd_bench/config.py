"""Typed configs, recipes and strict `--set a.b=value` overrides.

A run's configuration is a tree of dataclasses:
    run     RunConfig     (method, base, seed, rewards, beta)
    train   TrainConfig   (budget, batch size, checkpointing, logging)
    method  <Method>.Config
    base    <Base>.Config
    reward.<name>  <Reward>.Config   (one per reward in run.rewards)
Overrides are `section.field=value` (`--set method.lr_generator=1e-4`, `--set base.num_modes=6`,
`--set reward.toy-quadratic.scale=2`, `--set train.batch_size=256`, `--set run.beta=0.5`).
Values are parsed as the field's annotated type; unknown keys list the valid ones; a value outside
the range its type declares (rtdmd_bench/ranges.py: `lr: NonNegative`, `batch_size: PositiveInt`) is
refused by `check_ranges` when the config is resolved, before anything is built. Recipes
(`rtdmd_bench/recipes/<base>.yaml`) are plain data (yaml.safe_load; nothing is executed), applied
before the user's overrides.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import NonNegativeInt, Positive, PositiveInt, check_ranges


Parallelism = Literal["ddp", "fsdp"]
"""How several processes share a run (TrainConfig.parallel, `rtdmd-bench plan --parallelism`)."""


@dataclass
class RunConfig:
    method: str = "dmd2"
    """Registered method name (`rtdmd-bench list`)."""
    base: str = "toy2d"
    """Registered base name."""
    seed: int = 0
    """Training seed: every batch's prompts and noise derive from (seed, step)."""
    rewards: tuple[str, ...] = ()
    """Rewards as NAME or NAME=WEIGHT; empty uses the base's default reward set from its recipe."""
    beta: Positive = 1.0
    """Tilt temperature of the target p* ∝ p_teacher exp(r/beta) (METHODS.md section 4)."""
    run_id: str = ""
    """Run folder name under runs/; empty makes one from method, base, seed and a time stamp."""


@dataclass
class TrainConfig:
    budget: str = "1e11"
    """Compute budget: FLOPs (2e12, 2T, 500G) or teacher-forward equivalents (20ktf)."""
    batch_size: PositiveInt = 256
    """Samples per training step; group methods draw batch_size // group_size distinct prompts
    and K = group_size samples of each (rtdmd_bench.core.rl.grouped_prompts)."""
    checkpoint_every: PositiveInt = 500
    """Steps between checkpoints (a final one is always written)."""
    log_every: PositiveInt = 50
    """Steps between lines in metrics.jsonl. A line holds each logged term's MEAN over the steps
    since the previous line (`n_steps` of them), not the last step's value; a term logged on only
    some of those steps (e.g. a generator term of a method that updates its generator every 5th
    step) is the mean over those, and `term_steps` gives their number."""
    curve_points: NonNegativeInt = 0
    """Quick evaluations of `curve_suite` during training, evenly spaced in FLOPs (0 = off):
    methods whose steps cost different FLOPs get their curve points at the same compute."""
    curve_suite: str = ""
    """Suite evaluated during training for the metric-vs-FLOPs curve (e.g. toy-tilt)."""
    curve_images_per_prompt: PositiveInt = 1000
    """Samples per prompt in the quick curve evaluation."""
    threads: NonNegativeInt = 0
    """torch intra-op threads (0 = torch's default)."""
    micro_batches: PositiveInt = 1
    """Gradient accumulation: each process splits its share of every step into this many
    micro-batches, one forward/backward at a time, and takes one optimiser step on their summed
    gradients. The update does not depend on it (up to float summation order): raise it when a
    step does not fit in GPU memory, e.g. the official SD3-M recipe on one GPU instead of eight
    (`rtdmd-bench plan` gives the memory per micro-batch). Each process's rows must divide evenly."""
    log_with: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    """Experiment tracker, as diffusers' `--report_to` (accelerate's tracker classes, rank 0 only):
    each metrics.jsonl line (term means, gradient norms, FLOPs used), the evaluation curve
    (`curve/<metric>`) and the sample grids (`train.sample_every`) go to it too, with the resolved
    config as parameters. tensorboard: event files in RUN/tensorboard/<tracker_run_name>/ (pip
    install tensorboard, or the `track` extra); wandb: project `tracker_project` (pip install
    wandb; WANDB_MODE=offline needs no account); mlflow: experiment `tracker_project` in the store
    MLFLOW_TRACKING_URI names (pip install mlflow). A resumed run continues its TensorBoard curves
    (events after the checkpoint are dropped) and starts a new W&B/MLflow run of the same name."""
    tracker_project: str = "rtdmd-bench"
    """W&B project / MLflow experiment of `log_with` (TensorBoard has none: its run is a folder)."""
    tracker_run_name: str = ""
    """Run name in the tracker; empty = the run id (the run folder's name)."""
    sample_every: NonNegativeInt = 0
    """Steps between grids of the EMA student's samples sent to the `log_with` tracker (0 = off):
    4 training prompts evenly spaced in the prompt list, 4 images each with the student's own
    sampler (toy2d: a scatter plot of 256 points per prompt), on the same noise every time. Made
    outside the FLOP meter with the random state restored: the run trains exactly as without."""
    parallel: Parallelism = "ddp"
    """With several processes (accelerate launch / torchrun): ddp = every process holds the whole
    base and gradients are averaged (accelerate's DDP); fsdp = torch FSDP2 shards the weights of
    every transformer block, frozen and LoRA, across processes (bases that do not fit one GPU:
    sd35l, flux2-9b). Ignored in a single process."""


SECTIONS = ("run", "train", "method", "base", "reward")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under each field) of a dataclass, including
    fields inherited from dataclass parents (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(text: Any, tp: Any, where: str) -> Any:
    """Parse `text` (a string from the command line, or a YAML scalar/list) as type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (text is None or str(text).lower() in ("none", "null", "")):
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(f"{where}: cannot parse {text!r} as {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        for a in args:
            if str(a) == str(text):
                return a
        raise UserError(f"{where}: {text!r} is not one of {', '.join(repr(a) for a in args)}")
    if origin in (tuple, list):
        items = text if isinstance(text, (list, tuple)) else \
            [t for t in str(text).strip("[]() ").split(",") if t.strip()]
        elem = args[0] if args else str
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise UserError(f"{where}: expected {len(args)} comma-separated values, got {text!r}")
            return tuple(parse_value(str(i).strip(), a, where) for i, a in zip(items, args))
        values = [parse_value(str(i).strip() if not isinstance(i, (int, float, bool)) else i, elem, where) for i in items]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        s = str(text).lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise UserError(f"{where}: expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            f = float(text)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected an integer, got {text!r}") from None
        if not f.is_integer():
            raise UserError(f"{where}: expected an integer, got {text!r}")
        return int(f)
    if tp is float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {text!r}")
        return value
    if tp is str:
        return str(text)
    raise UserError(f"{where}: fields of type {_type_name(tp)} cannot be set from the command line")


def set_field(obj: Any, path: list[str], value: Any, where: str) -> Any:
    """Return a copy of dataclass `obj` with the (possibly nested) field `path` set from `value`."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    name = path[0]
    if name not in names:
        raise UserError(f"unknown config key {where!r}; valid keys here: {', '.join(names)}")
    current = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise UserError(f"{where}: {name!r} has no sub-fields")
        return dataclasses.replace(obj, **{name: set_field(current, path[1:], value, where)})
    if dataclasses.is_dataclass(current):
        raise UserError(f"{where}: {name!r} is a group of fields; set one of "
                        f"{', '.join(f.name for f in dataclasses.fields(current))}")
    return dataclasses.replace(obj, **{name: parse_value(value, hints[name], where)})


@dataclass
class ResolvedConfig:
    """Everything a run needs, built before the loop starts."""

    run: RunConfig
    train: TrainConfig
    method: Any
    base: Any
    rewards: dict[str, Any] = field(default_factory=dict)  # reward name -> its Config
    reward_weights: dict[str, float] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # recipe + user, in order applied

    def to_dict(self) -> dict[str, Any]:
        return {"run": dataclasses.asdict(self.run), "train": dataclasses.asdict(self.train),
                "method": dataclasses.asdict(self.method), "base": dataclasses.asdict(self.base),
                "reward": {n: dataclasses.asdict(c) for n, c in self.rewards.items()},
                "reward_weights": dict(self.reward_weights), "overrides": list(self.overrides)}


def split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise UserError(f"bad --set {text!r}: write KEY=VALUE, e.g. method.lr_generator=1e-4 "
                        f"(sections: {', '.join(SECTIONS)})")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def recipe(base: str, method: str) -> list[str]:
    """Overrides from rtdmd_bench/recipes/<base>.yaml: `_all` then the method's entry."""
    path = Path(__file__).parent / "recipes" / f"{base}.yaml"
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    out: list[str] = []
    for section in ("_all", method):
        for key, value in (data.get(section) or {}).items():
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            out.append(f"{key}={value}")
    return out


def parse_rewards(specs: tuple[str, ...]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for spec in specs:
        name, _, w = spec.partition("=")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise UserError(f"bad reward {spec!r}: write NAME or NAME=WEIGHT (a finite number)")
        weights[name.strip()] = weight
    return weights


def resolve_config(method: str, base: str, overrides: list[str] | tuple[str, ...] = (),
                   use_recipe: bool = True) -> ResolvedConfig:
    """Build every config of a run: defaults, then the recipe, then `overrides` (strict)."""
    from rtdmd_bench import registry

    applied = (recipe(base, method) if use_recipe else []) + list(overrides)
    pairs = [split_override(o) for o in applied]
    run, train = RunConfig(method=method, base=base), TrainConfig()
    for key, value in pairs:  # run-level first: the reward list decides the reward sections
        section, _, rest = key.partition(".")
        if section == "run":
            run = set_field(run, rest.split("."), value, key)
        elif section == "train":
            train = set_field(train, rest.split("."), value, key)
        elif section not in SECTIONS:
            raise UserError(f"unknown config section in {key!r}; valid sections: {', '.join(SECTIONS)}")
    method_cfg = registry.resolve("methods", run.method).Config()
    base_cfg = registry.resolve("bases", run.base).Config()
    weights = parse_rewards(run.rewards)
    rewards = {n: registry.resolve("rewards", n).Config() for n in weights}
    for key, value in pairs:
        section, _, rest = key.partition(".")
        if section == "method":
            method_cfg = set_field(method_cfg, rest.split("."), value, key)
        elif section == "base":
            base_cfg = set_field(base_cfg, rest.split("."), value, key)
        elif section == "reward":
            name, _, fld = rest.partition(".")
            if name not in rewards:
                raise UserError(f"{key!r}: reward {name!r} is not in this run's rewards "
                                f"({', '.join(rewards) or 'none'}); add it with --set run.rewards=...")
            rewards[name] = set_field(rewards[name], fld.split("."), value, key)
    return check_config(ResolvedConfig(run, train, method_cfg, base_cfg, rewards, weights, applied))


def from_dict(data: Any, source: str = "the saved config") -> ResolvedConfig:
    """Rebuild a ResolvedConfig from `to_dict()` output (config.yaml of a run); anything else (not
    a mapping, a section missing, an unknown method or field, a value out of range) is a UserError
    naming `source`."""
    from rtdmd_bench import registry

    def section(name: str, default: Any = None) -> dict[str, Any]:
        value = data.get(name, default)
        if not isinstance(value, dict):
            raise UserError(f"its {name!r} section is {'missing' if value is None else 'not a mapping'}")
        return value

    def build(cls: type, values: Any, where: str) -> Any:
        if not isinstance(values, dict):
            raise UserError(f"{where} is not a mapping of fields")
        obj = cls()
        for k, v in values.items():
            cur = getattr(obj, k, None)
            if dataclasses.is_dataclass(cur):
                obj = dataclasses.replace(obj, **{k: build(type(cur), v, f"{where}.{k}")})
            else:
                obj = set_field(obj, [k], v if not isinstance(v, list) else tuple(v), f"{where}.{k}")
        return obj

    try:
        if not isinstance(data, dict):
            raise UserError("it is not a mapping with the sections run, train, method, base")
        run = build(RunConfig, section("run"), "run")
        rewards = section("reward", {})
        cfg = ResolvedConfig(
            run=run, train=build(TrainConfig, section("train"), "train"),
            method=build(registry.resolve("methods", run.method).Config, section("method"), "method"),
            base=build(registry.resolve("bases", run.base).Config, section("base"), "base"),
            rewards={n: build(registry.resolve("rewards", n).Config, c, f"reward.{n}") for n, c in rewards.items()},
            reward_weights={str(n): float(w) for n, w in section("reward_weights", {}).items()},
            overrides=[str(o) for o in data.get("overrides") or []])
        return check_config(cfg)
    except (UserError, registry.UnknownName, TypeError, ValueError) as err:
        raise UserError(f"{source} is not a valid run config: {err}; restore it or start a new run") from None


def check_config(cfg: ResolvedConfig) -> ResolvedConfig:
    """`check_ranges` on every section of `cfg`; returns it."""
    for name, section in (("run", cfg.run), ("train", cfg.train), ("method", cfg.method), ("base", cfg.base)):
        check_ranges(section, name)
    for name, reward in cfg.rewards.items():
        check_ranges(reward, f"reward.{name}")
    return cfg
