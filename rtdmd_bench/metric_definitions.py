"""Which metric definition an evaluation result's number is, as an id comparable with the reference
tables' `variant` strings (results/paper/README.md: two columns are comparable only with equal
variants).

A definition is what the number means and its scale: the scorer (HPSv2.0 or HPSv2.1; GenEval's own
mmdet scorer, this project's transformers Mask2Former detector, or RTDMD's partial credit), its
convention (CLIPScore as raw cosine or torchmetrics' max(100 cos, 0)) and scale (x1 or x100). The
prompts, seed, images per prompt and resolution are evaluation settings, checked apart
(rtdmd_bench/compare.py). A suite the table does not know is identified by its name and version,
so two results are comparable only when they come from the same suite version. Any tag in a suite's
name (`[stand-in]`, `[rgb-detector]`, ...) is part of the definition: a stand-in scorer never shares
a column with the real one.
"""

from __future__ import annotations

from typing import Any

CLIP_L14 = "openai/clip-vit-large-patch14"

FAMILIES: dict[str, str] = {
    # RTDMD's protocol suites (suites/rtdmd_protocol.py) score with these suites; the protocol's own
    # lines (64 or all) are a prompt setting, not a definition.
    "rtdmd-64-drawbench": "drawbench", "rtdmd-full-drawbench": "drawbench",
    "rtdmd-64-geneval": "geneval-rtdmd", "rtdmd-full-geneval": "geneval-rtdmd",
    "rtdmd-64-geneval2": "geneval2-rtdmd-form", "rtdmd-full-geneval2": "geneval2-rtdmd-form",
    "rtdmd-64-ocr": "ocr", "rtdmd-full-ocr": "ocr",
    "rtdmd-64-hpsv3": "hpsv3", "rtdmd-full-hpsv3": "hpsv3",
    "geneval2[rtdmd]": "geneval2-rtdmd-form",
}
"""Suite result name (tags removed, except where a tag selects the definition) -> the family whose
definitions it reports."""

DEFINITIONS: dict[tuple[str, str], str] = {
    ("drawbench", "clipscore"): "clipscore-vitl14-raw-cosine",
    ("drawbench", "aesthetic"): "laion-aesthetic-v2-vitl14",
    ("drawbench", "pickscore"): "pickscore-v1-raw",
    ("drawbench", "hpsv21"): "hpsv2.1-cosine",
    ("drawbench", "imagereward"): "imagereward-v1.0",
    ("clipscore", "clipscore"): "clipscore-vitl14-raw-cosine",
    ("aesthetic", "aesthetic"): "laion-aesthetic-v2-vitl14",
    ("pickscore", "pickscore"): "pickscore-v1-raw",
    ("imagereward", "imagereward"): "imagereward-v1.0",
    ("hpsv2", "average"): "hpsv2.1-x100-benchmark-average",
    ("hpsv3", "hpsv3"): "hpsv3-mu",
    ("geneval-rtdmd", "geneval_rtdmd"): "geneval-rtdmd-partial-credit",
    ("geneval-rtdmd", "accuracy"): "geneval-rtdmd-accuracy",
    ("geneval", "overall"): "geneval-transformers-m2f-overall",
    ("geneval[official]", "overall"): "geneval-official-mmdet-overall",
    ("geneval2-rtdmd-form", "geneval2"): "geneval2-rtdmd-fp16-fraction",
    ("geneval2", "geneval2"): "geneval2-official-bf16-x100",
    ("ocr", "ocr"): "ocr-paddleocr2.9.1-edit-fraction",
}
"""(family, result key) -> definition id; the ids of the columns a reference table has are its
`variant` strings (a test checks every reference `computed_by` maps to its column's variant)."""

KEEP_TAGS = {"geneval[official]", "geneval2[rtdmd]"}
"""Suite names whose tag is part of the family name, not an extra tag."""


def split_name(suite: str) -> tuple[str, list[str]]:
    """`name[tag1,tag2]` -> (name, [tag1, tag2]) (names in KEEP_TAGS keep their tag)."""
    if suite in KEEP_TAGS or "[" not in suite:
        return suite, []
    head, _, rest = suite.partition("[")
    return head, [t for t in rest.rstrip("]").split(",") if t]


def family(suite: str) -> str:
    """The family of a suite result name (tags removed)."""
    name, _ = split_name(suite)
    return FAMILIES.get(name, name)


def scorer_of(result: dict[str, Any], slot: str) -> dict[str, Any]:
    """The recorded scorer of a preference slot ({} when the result does not record it)."""
    return ((result.get("metrics") or {}).get("scorers") or {}).get(slot) or {}


def adjust(defn: str, fam: str, metric: str, result: dict[str, Any]) -> str:
    """The definition as the result's recorded scorer and scale make it (CLIPScore convention and
    model, HPSv2 version, a preference suite's scale)."""
    metrics = result.get("metrics") or {}
    if metric == "clipscore":
        cfg = scorer_of(result, "clipscore").get("config") or {}
        if cfg.get("convention") == "torchmetrics":
            defn = "clipscore-vitl14-torchmetrics-x100-clamped"
        model = cfg.get("model_id", CLIP_L14)
        if model != CLIP_L14:
            defn = f"{defn}+model={model}"
    if fam == "hpsv2":
        reward = scorer_of(result, "hpsv2").get("reward", "hpsv21")
        defn = defn.replace("hpsv2.1", "hpsv2.0") if reward == "hpsv2" else defn
    scale = metrics.get("scale", 1.0) if fam != "hpsv2" else metrics.get("scale", 100.0) / 100.0
    if isinstance(scale, (int, float)) and scale != 1.0:
        defn = f"{defn}+x{scale:g}"
    return defn


def definition(result: dict[str, Any], metric: str) -> str:
    """The definition id of `metric` (a result key, `reward.<name>` for nested ones) in an eval result
    (RUN/eval/<suite>.json)."""
    suite = str(result.get("suite", "?"))
    name, tags = split_name(suite)
    fam = FAMILIES.get(name, name)
    known = DEFINITIONS.get((fam, metric))
    if fam == "hpsv2" and metric in ("anime", "concept-art", "paintings", "photo"):
        known = f"hpsv2.1-x100-benchmark-{metric}"
    if known is None:
        defn = f"{name}:{metric}@{result.get('suite_version', 'unversioned')}"
    else:
        defn = adjust(known, fam, metric, result)
    return defn + "".join(f"+{t}" for t in tags)


def resolution(result: dict[str, Any]) -> int | None:
    """The side in pixels of the scored images: the protocol's record (`resolution.used`), else a
    square `image_size`; None for results that are not square images (toy2d points)."""
    rec = result.get("resolution")
    if isinstance(rec, dict) and rec.get("used"):
        return int(rec["used"])
    size = result.get("image_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1] and size[0] > 2:
        return int(size[0])
    return None
