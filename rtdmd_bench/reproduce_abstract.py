"""`reproduce TABLE` for an abstract-level table (results/paper/, `level: abstract`): a plan from the
table's rows AND its claims, on a base and with suites the user names.

An abstract states figures or claims but no base and no protocol, so the plan invents neither:
`--base` (required) is where every job runs, `--suite` (required, repeatable) scores every job with
each suite's own prompts, seeds and images per prompt, and the dry run says that its numbers are not
comparable to the abstract's and which unknowns remain. Who is run comes from the table: its rows'
`method_key`, and every method a claim names (`method`, `relative_to`) that `CLAIM_METHODS` maps to
this project (where the mapping is documented); a teacher a claim names becomes an `eval --base`
job. Names with no implementation here, or that are no method ("existing baselines"), are listed
under "rows not run" with the reason. Budget: the base's RTDMD recipe budget, as for the full
tables (`reproduce_tables.table_budget`), or `--budget`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rtdmd_bench.errors import UserError
from rtdmd_bench.step_costs import RECORD_DIR

TEACHER = "teacher"
"""`CLAIM_METHODS` value of a name that stands for the base's multi-step teacher (an `eval --base` job)."""

CLAIM_METHODS: dict[str, tuple[str | None, str]] = {
    "GDMD": ("gdmd", "registry 'gdmd': GDMD-style gradient rewards, this suite's own definition from the abstract "
                     "(../shared/METHODS.md section 6), not GDMD's code"),
    "GNDM": ("gndm", "registry 'gndm': R_dm + PPO, this suite's own definition from the abstract (METHODS.md section 7), "
                     "not R_dm's code"),
    "GNDMR": ("gndmr", "registry 'gndmr': GNDM + adaptive external rewards, this suite's own definition (METHODS.md "
                       "section 7), not R_dm's code"),
    "vanilla DMD": ("dmd2", "registry 'dmd2': this project's distribution matching baseline is DMD2 (METHODS.md section "
                            "2: fake-score TTUR, backward simulation); DMD1's regression loss is not implemented"),
    "its multi-step teacher": (TEACHER, "the base's teacher with a multi-step sampler (eval --base)"),
    "DMDR": (None, "DMDR has no implementation here: dmd-rl is only DMDR-like (METHODS.md section 5; DMDR's dynamic "
                   "real-score LoRA scale is not implemented, methods/dmd_rl.py)"),
}
"""A method name in an abstract's claims (a trailing '(...)' removed, e.g. 'GDMD (4-step)') -> (this
project's method key, TEACHER, or None: not run), with where the mapping is documented or why not."""


def claim_name(name: str) -> str:
    """'GDMD (4-step)' -> 'GDMD': the name `CLAIM_METHODS` is keyed by."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", name).strip()


def entities(doc: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str], list[tuple[str, str]]]:
    """([(label, method key)], [teacher labels], [(name, why not run)]) of the table's rows with a
    method_key, then each claim's method and relative_to, each method once, in the table's order."""
    from rtdmd_bench import registry

    methods = registry.table("methods")
    runs: dict[str, str] = {}  # method key -> label
    teachers: list[str] = []
    skipped: dict[str, str] = {}
    for row in doc["rows"]:
        key = row.get("method_key")
        if row["role"] == "teacher":
            teachers.append(row["label"])
        elif key in methods:
            runs.setdefault(key, row["label"])
        else:
            skipped[row["label"]] = f"method {key!r} is not a method of this project" if key else "method unknown"
    for claim in doc["claims"]:
        for name in [claim["method"], *claim["relative_to"]]:
            short = claim_name(name)
            key, why = CLAIM_METHODS.get(short, (None, f"not a method this project maps (claim {claim['id']} names "
                                                       "no method: nothing to run)"))
            if key == TEACHER:
                if short not in teachers:
                    teachers.append(short)
            elif key is not None:
                runs.setdefault(key, short)
            elif short not in skipped:
                skipped[short] = why
    return [(label, key) for key, label in runs.items()], teachers, list(skipped.items())


def _words(text: str, sep: str = r"[^a-z0-9]+") -> list[str]:
    return [w for w in re.split(sep, text.lower()) if w]


def result_name(registry_name: str) -> str:
    """The name a suite's default config writes its result under (RUN/eval/<name>.json), read from
    the suite's class: `name`, `base_name` or `suite_name`; RTDMD's protocol suites are
    rtdmd-<variant>-<column>; else the registry name (suites naming themselves in __init__)."""
    from rtdmd_bench import registry

    cls = registry.resolve("suites", registry_name)
    for attr in ("name", "base_name", "suite_name"):
        value = getattr(cls, attr, None)
        if isinstance(value, str) and value:
            return value
    if getattr(cls, "column", ""):
        return f"rtdmd-{cls.Config().variant}-{cls.column}"
    return registry_name


def suites_for_metric(key: str) -> list[str]:
    """Suites of the registry that compute a metric named like `key` (e.g. 'fid_sd', 'hps'): a word of
    `key` is a word of the suite's name, of its module, or of a result key its family reports
    (metric_definitions.DEFINITIONS), alone or with a version suffix ('hps' ~ 'hpsv21'). The CPU
    benchmarks' suites (toy-tilt, digits, shapes-geneval) score only their own base and are left out."""
    from rtdmd_bench import registry
    from rtdmd_bench.metric_definitions import DEFINITIONS, family
    from rtdmd_bench.reproduce import BENCHES

    cpu_only = {spec.suite for spec in BENCHES.values()}
    wanted = _words(key)
    found = []
    for name, entry in registry.table("suites").items():
        if name in cpu_only:
            continue
        fam = family(result_name(name))
        words = (_words(name) + _words(entry.target.split(":")[0].split(".")[-1])
                 + [w for f, metric in DEFINITIONS if f == fam for w in _words(metric)])
        if any(w == k or re.fullmatch(re.escape(k) + r"v\d+", w) for k in wanted for w in words):
            found.append(name)
    return found


def require_choices(doc: dict[str, Any], base: str | None, suites: list[str]) -> None:
    """One-line UserError when --base or --suite is missing or unknown for an abstract table."""
    from rtdmd_bench import registry
    from rtdmd_bench.bases.real_configs import REAL_BASES

    problems = []
    if base is None:
        problems.append(f"the abstract states no base: pass --base BASE (real bases: {', '.join(REAL_BASES)})")
    elif base not in registry.table("bases"):
        problems.append(f"--base {base!r} is not a base of this project (real bases: {', '.join(REAL_BASES)}; "
                        "all: `rtdmd-bench list`)")
    if not suites:
        hints = "; ".join(f"{m['column']}: {', '.join(suites_for_metric(k)) or 'no suite of that name'}"
                          for k, m in doc["metrics"].items())
        problems.append(f"the abstract states no protocol: pass --suite NAME (repeatable), e.g. suites computing a "
                        f"metric of each column's name: {hints}")
    unknown = [s for s in suites if s not in registry.table("suites")]
    if unknown:
        problems.append(f"--suite {', '.join(unknown)}: not a suite of this project (`rtdmd-bench list`)")
    if problems:
        raise UserError(f"{doc['id']} is an abstract-level table: " + "; and ".join(problems))


def teacher_steps_for(base: str, given: int | None) -> tuple[int, str]:
    """(steps, how chosen) of the teacher's sampler: --teacher-steps, else the NFE of `base`'s teacher
    row in the full reference tables (the abstract states none)."""
    from rtdmd_bench.references import load_reference, reference_ids

    if given is not None:
        return given, "--teacher-steps"
    found = {}
    for table in reference_ids():
        doc = load_reference(table)
        if doc["level"] != "table":
            continue
        for row in doc["rows"]:
            if row["role"] == "teacher" and row.get("base_key") == base and row.get("nfe"):
                found.setdefault(int(row["nfe"]), f"{table} row {row['label']!r}")
    if len(found) == 1:
        (steps, where), = found.items()
        return steps, f"the NFE of {base}'s teacher in {where} (the abstract states none; --teacher-steps to change)"
    raise UserError(f"the abstract states no teacher steps and the reference tables give "
                    f"{'several' if found else 'none'} for {base}: pass --teacher-steps N")


def header_lines(doc: dict[str, Any], base: str, suites: list[str], steps: tuple[int, str] | None,
                 mapped: list[tuple[str, str]], student_steps: dict[str, int]) -> list[str]:
    """What the dry run says first: the plan's own choices and the unknowns that remain."""
    lines = [f"abstract-level table: base and protocol are not stated in the source; this plan uses --base {base} "
             f"and --suite {' --suite '.join(suites)} chosen by you; its numbers are not comparable to the "
             "abstract's figures", "unknowns that remain:"]
    for field, why in (doc["protocol"].get("unknown") or {}).items():
        lines.append(f"  protocol {field}: {why}")
    for key, m in doc["metrics"].items():
        missing = [f for f in m.get("unknown") or {} if f != "computed_by"]
        lines.append(f"  {m['column']}: {m['definition']}; not stated: {', '.join(missing) or 'nothing else'}")
    for row in doc["rows"]:
        missing = [f for f in row.get("unknown") or {} if f != "base_key"]
        lines.append(f"  row {row['label']}: not stated: {', '.join(missing)}")
    for c in doc["claims"]:
        value = f"printed {c['printed']}" if c.get("printed") else "no figure"
        lines.append(f"  claim {c['id']} ({value}): {c['statement']}")
    lines.append("how the table's names became this project's methods (CLAIM_METHODS, rtdmd_bench/reproduce_abstract.py):")
    for label, key in mapped:
        basis = CLAIM_METHODS.get(claim_name(label), (key, "the table row's method_key"))[1]
        lines.append(f"  {label} -> {key} (method.num_steps {student_steps[key]}): {basis}")
    if steps is not None:
        lines.append(f"  teacher -> eval --base {base}, {steps[0]} steps: {steps[1]}")
    return lines


def build_abstract_plan(doc: dict[str, Any], base: str | None, suites: list[str], seeds: int, budget: str | None,
                        runs_dir: Path, gpus: int, teacher_steps: int | None = None,
                        recorded_dir: Path = RECORD_DIR) -> Any:
    """The TablePlan of an abstract-level table (module docstring)."""
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.reproduce_needs import prompt_files_needed, weights_needed
    from rtdmd_bench.reproduce_tables import TEACHER_SAMPLER, TablePlan, run_job, table_budget, teacher_job

    from rtdmd_bench.registry import SUITE_GROUPS

    suites = list(dict.fromkeys(x for s in suites for x in SUITE_GROUPS.get(s, (s,))))  # `--suite rtdmd`: its five
    require_choices(doc, base, suites)
    assert base is not None
    groups = [((), [(s, result_name(s)) for s in suites])]
    runs, teachers, skipped = entities(doc)
    if teacher_steps is not None and not teachers:
        raise UserError(f"--teacher-steps: {doc['id']} names no teacher (nothing runs with those steps); drop it")
    steps = teacher_steps_for(base, teacher_steps) if teachers else None
    root = Path(runs_dir) / doc["id"]
    budgets = {base: table_budget(base, budget)}
    jobs = [teacher_job(label, base, steps[0], root, groups) for label in teachers if steps]
    jobs += [run_job(label, key, base, s, budgets[base][0], root, groups, gpus, recorded_dir)
             for label, key in runs for s in range(seeds)]
    student_steps = {key: int(getattr(resolve_config(key, base, []).method, "num_steps", 0)) for _, key in runs}
    protocol = [f"every job: --suite {' --suite '.join(suites)} with each suite's own prompts, seed and images per "
                "prompt (chosen by you: the abstract states no protocol)",
                "students: each method's own few-step sampler (method.num_steps above)"]
    if steps:
        protocol.append(f"teacher: {TEACHER_SAMPLER} sampler, {steps[0]} steps, the base's default guidance "
                        "(this module's choice), same suites")
    return TablePlan(doc["id"], doc["title"], root, seeds, gpus, budgets, jobs, skipped, protocol,
                     prompt_files_needed(jobs, groups), weights_needed(jobs, groups),
                     header_lines(doc, base, suites, steps, runs, student_steps))
