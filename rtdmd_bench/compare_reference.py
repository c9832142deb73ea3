"""`compare --reference TABLE`: which published column a measured metric is, refused when its
definition, resolution or protocol differs (the sections are `compare.Section`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtdmd_bench import metric_definitions as defs
from rtdmd_bench.errors import UserError

if TYPE_CHECKING:
    from rtdmd_bench.compare import Section


def claimed_reference(ref: dict[str, Any], suite: str, metric: str) -> list[str]:
    """Reference column keys a measured metric claims: same key, a `computed_by` metric of the column,
    or a suite family named like the column (`hpsv2` suite -> HPSv2 column)."""
    fam = defs.family(suite).partition("[")[0]  # geneval[official] claims the GenEval column too
    out = []
    for key, m in ref["metrics"].items():
        names = {key} | {c["metric"] for c in m.get("computed_by") or []}
        if metric in names or fam == key:
            out.append(key)
    return out


def match_reference(section: Section, ref: dict[str, Any]) -> None:
    """Map the section's columns to the reference's columns of the same definition; refuse a claimed
    column of another definition, or reference rows at another resolution."""
    claims: dict[str, list[str]] = {}
    for metric in section.columns:
        for key in claimed_reference(ref, section.suite, metric):
            claims.setdefault(key, []).append(metric)
    for key, metrics in claims.items():
        col = ref["metrics"][key]
        same = [m for m in metrics if col["variant"] is not None and section.definitions[m] == col["variant"]]
        if not same:
            theirs = col["variant"] or f"unknown ({col.get('unknown', {}).get('variant', 'not stated')})"
            ours = "; ".join(f"{section.suite}:{m} is {section.definitions[m]}" for m in metrics)
            raise UserError(f"refusing to put different metric definitions in one column: {ref['id']}'s "
                            f"{col['column']!r} is {theirs} ({col['definition']}, scale: {col['scale']}), but "
                            f"{ours}. Evaluate with a suite that computes it: "
                            + (", ".join(sorted({c['suite'] for c in col.get('computed_by') or []})) or "none known"))
        section.reference_columns[same[0]] = key
    if not section.reference_columns:
        return
    keys = set(section.reference_columns.values())
    section.reference_rows = [r for r in ref["rows"] if keys & set(r["values"])]
    ours = {label: s["resolution"] for label, s in section.settings.items()}
    for row in section.reference_rows:
        for label, res in ours.items():
            if row["resolution"] is not None and res != row["resolution"]:
                raise UserError(f"refusing to put different resolutions in one column: {ref['id']}'s row "
                                f"{row['label']!r} is at {row['resolution']} px, {label} at {res} px "
                                f"({section.suite}); evaluate at {row['resolution']} px (suite.resolution)")
    for metric, key in section.reference_columns.items():
        col = ref["metrics"][key]
        prompts = col.get("prompts") or {}
        allowed = [prompts["lines_used"]] if prompts.get("lines_used") else prompts.get("lines_used_candidates", [])
        for label, s in section.settings.items():
            wrong = [f"prompts {s['prompts']} (reference: {' or '.join(map(str, allowed))})"
                     if allowed and s["prompts"] not in allowed else "",
                     f"images per prompt {s['images per prompt']} (reference: {col['images_per_prompt']})"
                     if col.get("images_per_prompt") and s["images per prompt"] != col["images_per_prompt"] else "",
                     f"noise seed {s['noise seed']} (reference: {col['seed']})"
                     if col.get("seed") is not None and s["noise seed"] != col["seed"] else ""]
            if any(wrong):
                section.problems.append(f"{label} vs {ref['id']} {col['column']!r}: "
                                        + ", ".join(w for w in wrong if w))
    for g in section.groups:
        for row in section.reference_rows:
            same_method = row["method_key"] == g.method or (g.method == "teacher" and row["role"] == "teacher")
            if same_method and row["base_key"] == g.base:
                section.published_match[g.label] = row["label"]
                break
