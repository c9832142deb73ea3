"""`rtdmd-bench compare`: runs grouped by base and suite, checked for matched compute and settings,
beside a published reference table, with paired differences to a baseline row.

What a reader can trust, and how it is enforced:
- one column, one definition (rtdmd_bench/metric_definitions.py): measured rows whose results define
  a metric differently, or a measured metric that claims a reference column of another definition or
  resolution, stop with a UserError naming both;
- matched compute and settings: within a section (one base, one suite) trained rows whose FLOP budgets
  differ by more than `BUDGET_TOLERANCE`, or rows evaluated on other prompts, images per prompt, noise
  seed, resolution or sampler steps, stop unless `allow_unmatched` (then they are flagged);
- uncertainty says its kind: a measured cell is mean ± the Student-t 95% CI over training seeds
  (`report.mean_ci`); a difference to the baseline row is the paired bootstrap over prompts
  (rtdmd_bench/paired.py) with its resamples and seed; published values and differences to them
  carry none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rtdmd_bench import metric_definitions as defs
from rtdmd_bench import paired
from rtdmd_bench.compare_reference import match_reference
from rtdmd_bench.errors import UserError
from rtdmd_bench.report import suite_cells
from rtdmd_bench.runs import RunDir

BUDGET_TOLERANCE = 0.02
"""Largest relative difference of FLOP budgets (max / min - 1) that still counts as matched compute."""
SETTINGS = ("prompts", "images per prompt", "noise seed", "resolution", "sampler steps")
"""Evaluation settings that must agree within a section (a teacher row keeps its own sampler steps)."""


@dataclass
class RunRecord:
    """One run folder (or a teacher evaluation folder) as compare reads it."""

    path: Path
    """The folder."""
    method: str
    """The run's method, or `teacher` for a teacher evaluation (no config.yaml, sampler role teacher)."""
    base: str
    """The base it trained / sampled on."""
    seed: int | None
    """Training seed (None for a teacher)."""
    signature: str
    """The resolved config without seed, run id and overrides: seeds of one configuration share it."""
    budget: float | None
    """FLOP budget (result.json compute.budget_flops; None before the run finished or for a teacher)."""
    used: float | None
    """FLOPs used (result.json)."""
    evals: dict[str, dict[str, Any]]
    """Suite result name -> RUN/eval/<suite>.json."""


@dataclass
class Group:
    """The seeds of one configuration: one row."""

    label: str
    """`method / base [seeds ...]`."""
    method: str
    """Method name (`teacher` for a teacher row)."""
    base: str
    """Base name."""
    runs: list[RunRecord] = field(default_factory=list)
    """Its runs (one per seed)."""


def read_evals(folder: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in sorted((folder / "eval").glob("*.json")) if (folder / "eval").is_dir() else []:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{p}: not a readable evaluation result ({e}); evaluate the run again") from None
        out[str(data.get("suite", p.stem))] = data
    return out


def read_run(folder: Path) -> RunRecord:
    """A run folder (config.yaml), or a teacher evaluation folder (`rtdmd-bench eval --base`: only eval/)."""
    folder = Path(folder)
    evals = read_evals(folder)
    if not (folder / "config.yaml").is_file() and evals:
        first = next(iter(evals.values()))
        if (first.get("sampler") or {}).get("role") == "teacher":
            base = str((first.get("run") or {}).get("base", "?"))
            sig = json.dumps(["teacher", base, first.get("sampler")], sort_keys=True, default=str)
            return RunRecord(folder, "teacher", base, None, sig, None, None, evals)
    run = RunDir.open(folder)  # not a run folder: its UserError
    cfg = run.read_config()
    key = {k: v for k, v in cfg.items() if k not in ("run", "overrides")}
    key["run"] = {k: v for k, v in cfg.get("run", {}).items() if k not in ("seed", "run_id")}
    budget = used = None
    if (folder / "result.json").is_file():
        compute = json.loads((folder / "result.json").read_text(encoding="utf-8")).get("compute", {})
        budget, used = compute.get("budget_flops"), compute.get("used_flops")
    return RunRecord(folder, cfg["run"]["method"], cfg["run"]["base"], cfg["run"].get("seed"),
                     json.dumps(key, sort_keys=True, default=str), budget, used, evals)


def group_runs(records: Sequence[RunRecord]) -> list[Group]:
    """Runs of one configuration (everything but the seed) in one group, in first-seen order."""
    groups: dict[str, Group] = {}
    for r in records:
        groups.setdefault(r.signature, Group("", r.method, r.base)).runs.append(r)
    seen: dict[str, int] = {}
    for g in groups.values():
        name = f"{g.method} / {g.base}"
        seen[name] = seen.get(name, 0) + 1
        name += f" (config {seen[name]})" if seen[name] > 1 else ""
        seeds = sorted(r.seed for r in g.runs if r.seed is not None)
        g.label = name + (f" [seeds {','.join(map(str, seeds))}]" if seeds else "")
    return list(groups.values())


def eval_settings(result: dict[str, Any]) -> dict[str, Any]:
    """The settings of SETTINGS an evaluation result records (None where it does not)."""
    return {"prompts": result.get("num_prompts"), "images per prompt": result.get("images_per_prompt"),
            "noise seed": result.get("seed"), "resolution": defs.resolution(result),
            "sampler steps": (result.get("sampler") or {}).get("num_steps")}


def settings_problems(rows: Sequence[tuple[str, bool, dict[str, Any]]]) -> list[str]:
    """(label, is_teacher, settings) per row -> one message per setting that differs between rows."""
    problems = []
    for key in SETTINGS:
        seen = {label: s[key] for label, teacher, s in rows if not (teacher and key == "sampler steps")}
        if len(set(map(str, seen.values()))) > 1:
            problems.append(f"{key} differ: " + "; ".join(f"{label}: {v}" for label, v in seen.items()))
    return problems


def budget_problems(budgets: Sequence[tuple[str, float | None]], tolerance: float = BUDGET_TOLERANCE) -> list[str]:
    """(label, budget) per trained row -> a message when max / min - 1 > tolerance (rows without a
    budget, unfinished runs, are named too)."""
    known = [(label, b) for label, b in budgets if b]
    problems = [f"{label}: no FLOP budget recorded (the run has not finished: no result.json)"
                for label, b in budgets if not b]
    if known:
        low, high = min(b for _, b in known), max(b for _, b in known)
        if high / low - 1 > tolerance:
            problems.append(f"FLOP budgets differ by {100 * (high / low - 1):.1f}% (> {100 * tolerance:g}%): "
                            + "; ".join(f"{label}: {b:.3g}" for label, b in known))
    return problems


def check_column_definitions(column: str, found: dict[str, str]) -> str:
    """The one definition of a measured column, from {row label: definition}; refuses two."""
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        by = "; ".join(f"{d} ({', '.join(label for label, x in found.items() if x == d)})" for d in kinds)
        raise UserError(f"column {column!r} would hold different metric definitions: {by}. Evaluate every "
                        "run with the same suite and scorer settings, or compare them in separate tables")
    return kinds[0]


def group_values(group: Group, suite: str) -> tuple[dict[str, list[float]], dict[str, bool]]:
    """Metric -> one value per seed with that suite's result; which metrics are higher-is-better."""
    values: dict[str, list[float]] = {}
    hib: dict[str, bool] = {}
    for r in group.runs:
        if suite in r.evals:
            cells, h = suite_cells(r.evals[suite])
            hib |= h
            # a suite that says which keys are metrics (higher_is_better) also records numbers that are
            # not (scale, n_prompts, seeds): only its metrics are columns
            declared = r.evals[suite].get("higher_is_better") or {}
            for k, v in cells.items():
                if declared and k.split(".")[0] not in declared:
                    continue
                values.setdefault(k, []).append(v)
    return values, hib


def per_prompt(result: dict[str, Any], metric: str) -> list[float] | None:
    """Prompt i's score on `metric` (mean over its images), from the result's `per_image` record
    ([prompt index][image index]) or toy-tilt's per-prompt metrics; None when not recorded."""
    rec = (result.get("per_image") or {}).get(metric)
    out: list[float] | None = None
    if rec is not None:
        out = paired.prompt_means(rec)
    table = (result.get("metrics") or {}).get("per_prompt")
    if out is None and isinstance(table, dict) and table:
        out = []
        for entry in table.values():
            for part in metric.split("."):
                entry = entry.get(part) if isinstance(entry, dict) else None
            if not isinstance(entry, (int, float)):
                return None
            out.append(float(entry))
    # The pairs estimate the metric only if it is the mean over prompts of these scores (not a tag-
    # weighted or filtered mean): otherwise the paired difference would not be the table's difference.
    value = result.get("metrics") or {}
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if out and isinstance(value, (int, float)) and abs(sum(out) / len(out) - value) > 1e-5 * max(1.0, abs(value)):
        return None
    return out


def group_per_prompt(group: Group, suite: str, metric: str) -> list[float] | None:
    """Per-prompt scores averaged over the group's seeds (None unless every seed recorded them)."""
    lists = [per_prompt(r.evals[suite], metric) for r in group.runs if suite in r.evals]
    if not lists or any(x is None for x in lists) or len({len(x) for x in lists}) != 1:
        return None
    return [sum(v) / len(v) for v in zip(*lists)]


# ------------------------------------------------------------------ sections and the reference table
@dataclass
class Section:
    """One base and one suite: its rows, columns and their definitions, reference rows, paired
    differences to the baseline row, and what does not match."""

    base: str
    """Base of every row."""
    suite: str
    """Suite result name of every row."""
    groups: list[Group]
    """Measured rows."""
    columns: list[str]
    """Metric keys of the suite (nested ones as `reward.<name>`)."""
    values: dict[str, dict[str, list[float]]]
    """Row label -> metric -> one value per seed."""
    higher_is_better: dict[str, bool]
    """Metric -> higher is better, as the suite says."""
    definitions: dict[str, str]
    """Metric -> its definition id (metric_definitions.definition)."""
    settings: dict[str, dict[str, Any]]
    """Row label -> evaluation settings (SETTINGS)."""
    problems: list[str] = field(default_factory=list)
    """Unmatched budgets or settings (shown with --allow-unmatched, refused without)."""
    reference_columns: dict[str, str] = field(default_factory=dict)
    """Metric -> the reference table's column key with the same definition."""
    reference_rows: list[dict[str, Any]] = field(default_factory=list)
    """The reference table's rows with a value in one of reference_columns."""
    published_match: dict[str, str] = field(default_factory=dict)
    """Measured row label -> the label of the reference row of its method and base."""
    baseline: str | None = None
    """Label of the row the paired differences are taken against."""
    paired: dict[str, dict[str, paired.PairedDiff]] = field(default_factory=dict)
    """Row label -> metric -> paired bootstrap of (row - baseline) over prompts."""
    notes: list[str] = field(default_factory=list)
    """What could not be paired, and why."""


def pick_baseline(groups: Sequence[Group], wanted: str | None) -> Group:
    """`wanted` (a row label, its `method / base` start, or a method name), else the teacher row, else
    dmd2, else the first row."""
    if wanted:
        hits = [g for g in groups if wanted in (g.label, g.method, g.label.split(" [")[0])]
        if not hits:
            raise UserError(f"--baseline {wanted!r} is none of the rows: " + "; ".join(g.label for g in groups))
        return hits[0]
    for method in ("teacher", "dmd2"):
        for g in groups:
            if g.method == method:
                return g
    return groups[0]


def pair_section(section: Section, wanted: str | None, resamples: int, seed: int) -> None:
    """Paired bootstrap of every other row against the baseline row, per metric with per-prompt scores."""
    if wanted and not any(wanted in (g.label, g.method, g.label.split(" [")[0]) for g in section.groups):
        section.notes.append(f"--baseline {wanted!r} has no row here: the default baseline is used")
        wanted = None
    base = pick_baseline(section.groups, wanted)
    section.baseline = base.label
    unmatched = {k for p in section.problems for k in SETTINGS[:4] if p.startswith(k)}
    for g in section.groups:
        if g is base:
            continue
        if unmatched:
            section.notes.append(f"{g.label}: not paired with {base.label}: {', '.join(sorted(unmatched))} differ")
            continue
        for metric in section.columns:
            a, b = group_per_prompt(g, section.suite, metric), group_per_prompt(base, section.suite, metric)
            if a is None or b is None or len(a) != len(b) or len(a) < 2:
                continue
            section.paired.setdefault(g.label, {})[metric] = paired.paired_bootstrap(a, b, resamples, seed)
    if len(section.groups) > 1 and not section.paired and not section.notes:
        section.notes.append(f"no paired differences: the {section.suite} results hold no per-prompt scores "
                             "(results written before per-image scores were recorded; evaluate again)")


def build_section(base: str, name: str, members: Sequence[Group], reference: dict[str, Any] | None) -> Section:
    """The section of suite `name` on `base`: values, one definition per column, and the budgets and
    evaluation settings (of every run, so seeds evaluated differently are caught too) that differ."""
    values, hib, found, settings, rows = {}, {}, {}, {}, []
    for g in members:
        values[g.label], h = group_values(g, name)
        hib |= h
        for r in g.runs:
            if name in r.evals:
                settings.setdefault(g.label, eval_settings(r.evals[name]))
                rows.append((g.label if len(g.runs) == 1 else f"{g.label} {r.path.name}", g.method == "teacher",
                             eval_settings(r.evals[name])))
                for metric in values[g.label]:
                    found.setdefault(metric, {})[f"{g.label} ({r.path})"] = defs.definition(r.evals[name], metric)
    section = Section(base, name, list(members), list(found), values, hib,
                      {m: check_column_definitions(f"{name}:{m}", found[m]) for m in found}, settings)
    section.problems += settings_problems(rows)
    section.problems += budget_problems([(g.label, g.runs[0].budget) for g in members if g.method != "teacher"])
    if reference is not None:
        match_reference(section, reference)
    return section


def build_sections(run_dirs: Sequence[Path], suite: str | None = None, reference: dict[str, Any] | None = None,
                   baseline: str | None = None, allow_unmatched: bool = False,
                   resamples: int = paired.RESAMPLES, seed: int = paired.SEED) -> list[Section]:
    """Everything `rtdmd-bench compare` shows: one Section per (base, suite), checked and paired."""
    groups = group_runs([read_run(Path(d)) for d in run_dirs])
    if not groups:
        raise UserError("no runs to compare: pass run folders, e.g. `rtdmd-bench compare runs/*`")
    keys = sorted({(g.base, s) for g in groups for r in g.runs for s in r.evals if suite in (None, s)})
    if not keys:
        raise UserError("no evaluation results to compare" + (f" for suite {suite!r}" if suite else "")
                        + ": evaluate the runs first (`rtdmd-bench eval --run RUN --suite SUITE`)")
    sections = [build_section(base, name, [g for g in groups if g.base == base and any(name in r.evals for r in g.runs)],
                              reference) for base, name in keys]
    if reference is not None and not any(s.reference_columns for s in sections):
        suites = sorted({c["suite"] for m in reference["metrics"].values() for c in m.get("computed_by") or []})
        raise UserError(f"no measured metric computes a column of {reference['id']}: its columns are computed by "
                        + (", ".join(suites) or "no suite of this project (abstract-level figures)"))
    problems = [f"[{s.base} / {s.suite}] {p}" for s in sections for p in s.problems]
    if problems and not allow_unmatched:
        raise UserError("the rows do not compare at matched compute and settings:\n  " + "\n  ".join(problems)
                        + "\nrerun them matched, compare them separately, or pass --allow-unmatched to show them "
                        "flagged")
    if baseline:
        pick_baseline(groups, baseline)  # a name of no row at all: its UserError
    for s in sections:
        pair_section(s, baseline, resamples, seed)
    return sections
