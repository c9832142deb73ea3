"""Prompt sets for the suites: from a user path (`--set suite.prompts=PATH`: the suite's `prompts`
config field) or a checksum-verified cached download of the official file.

The project never ships prompt files (../shared/data/README.md). Official files are fetched
once into `rtdmd_bench.paths.cache_dir("prompts")`, verified by SHA-256 and written
atomically; offline, the error names the URL and the path option.

Formats: `.txt` one prompt per line (blank lines dropped); `.json` a list of strings (HPDv2
benchmark style files); GenEval `.jsonl` metadata, one object per line with "tag",
"include", optional "exclude" and "prompt"; GenEval2 `.jsonl`, one object per line with "prompt" and
"vqa_list" (read and validated by rtdmd_bench.rewards.geneval2.load_vqa_rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import CLASSES, COLORS, RELATIONS, TAGS
from rtdmd_bench.paths import cache_dir
from rtdmd_bench.prompt_files import (  # noqa: F401 (re-exported)
    RTDMD_RAW, OfficialFile, download_verified, read_json_list, read_text, sha256_of,
)


# SHA-256 values of the public files as copied into ../shared/data (same bytes as upstream; RTDMD's
# files pinned to the commit its published models come from, rtdmd_bench.prompt_files.RTDMD_COMMIT).
OFFICIAL: dict[str, OfficialFile] = {
    "geneval": OfficialFile(
        "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl",
        "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13", "geneval_evaluation_metadata.jsonl", 553),
    "drawbench": OfficialFile(
        RTDMD_RAW + "drawbench/test.txt",
        "9006b98feabb94b28a2bc0c88de42fd4f31a9ec3c2a19e308a02c5385b7172f0", "rtdmd_drawbench_test.txt", 1000),
    "pickscore": OfficialFile(
        RTDMD_RAW + "pickscore/test.txt",
        "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262", "rtdmd_pickscore_test.txt", 2048),
    # Byte-identical to facebookresearch/GenEval2's geneval2_data.jsonl (same git blob 823f4841...).
    "geneval2": OfficialFile(
        RTDMD_RAW + "geneval2/test.jsonl",
        "09233adbc9f877fba205f1a20efa4a8640e7e62a91dfd55893562bed8a928e43", "rtdmd_geneval2_test.jsonl", 800),
    "ocr": OfficialFile(
        RTDMD_RAW + "ocr/test.txt",
        "4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc", "rtdmd_ocr_test.txt", 1018),
    # RTDMD's GenEval test set: the 553 rows of GenEval's evaluation_metadata.jsonl, each 4 times, shuffled.
    "geneval-rtdmd": OfficialFile(
        RTDMD_RAW + "geneval/test_metadata.jsonl",
        "cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28", "rtdmd_geneval_test_metadata.jsonl", 2212),
    "hpsv3": OfficialFile(
        RTDMD_RAW + "hpsv3/test.txt",
        "31592ea9af348610c0c840147bc5bc5eeac34d4dfd831c62a298c04e7ec4b65d", "rtdmd_hpsv3_test.txt", 1024),
}


def resolve(official: str, path: str) -> Path:
    """The prompt file to use: `path` if given (must exist), else the cached official file."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"prompt file {p} {'is a folder' if p.is_dir() else 'does not exist'}; fix "
                            "--prompts PATH (or --set suite.prompts=PATH)")
        return p
    if official not in OFFICIAL:
        raise UserError(f"the {official!r} prompt set has no verified download; pass its file with --set suite.prompts=PATH")
    spec = OFFICIAL[official]
    return download_verified(spec.url, spec.sha256, cache_dir("prompts") / spec.filename)


def load_prompts(path: Path) -> list[str]:
    """A .txt (one prompt per line) or .json (a list of strings) prompt file."""
    if path.suffix == ".json":
        prompts = read_json_list(path)
    else:
        prompts = [line.strip() for line in read_text(path).splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(f"{path} contains no prompts")
    return prompts


def load_geneval(path: Path) -> list[dict[str, Any]]:
    """GenEval evaluation metadata, validated line by line (a malformed file fails loudly
    rather than silently scoring a few per cent)."""
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: not JSON ({err}); expected GenEval evaluation_metadata.jsonl") from err
        _check_geneval_row(row, f"{path}:{n}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} contains no GenEval prompts")
    return rows


def _check_geneval_row(row: Any, where: str) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or row.get("tag") not in TAGS:
        raise UserError(f"{where}: needs a 'prompt' string and a 'tag' among {', '.join(TAGS)}")
    clauses = row.get("include")
    if not isinstance(clauses, list) or not clauses:
        raise UserError(f"{where}: needs a non-empty 'include' list")
    for i, c in enumerate(clauses + list(row.get("exclude", []))):
        if not isinstance(c, dict) or c.get("class") not in CLASSES or not isinstance(c.get("count"), int):
            raise UserError(f"{where}: clause {c!r} needs a GenEval 'class' and an integer 'count'")
        if "color" in c and c["color"] not in COLORS:
            raise UserError(f"{where}: colour {c['color']!r} not among {', '.join(COLORS)}")
        if "position" in c:
            rel, target = c["position"]
            if rel not in RELATIONS or not (isinstance(target, int) and 0 <= target < i):
                raise UserError(f"{where}: position {c['position']!r} needs a relation among "
                                f"{', '.join(RELATIONS)} and the index of an earlier include clause")
