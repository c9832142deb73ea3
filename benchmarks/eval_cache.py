"""Evaluation image cache on the real SD3 code path (tiny-sd3): how many images each suite generates
and reads from the cache, and what that saves.

Three evaluations of one teacher on the same DrawBench prompts and seed: `clipscore`, then
`pickscore` (same prompts and seed: every image comes from the cache), then `clipscore` into an
empty cache with generation batch size 1 (generated again; the score must not change).

Run:  python benchmarks/eval_cache.py [--prompts ../shared/data/drawbench/test.txt] [--limit 8]
                                      [--out results/benchmarks/eval_cache.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtdmd_bench.config import resolve_config  # noqa: E402
from rtdmd_bench.evaluate import GenStats, SamplerSpec, build_suite, evaluate_suite  # noqa: E402
from rtdmd_bench.runs import git_commit  # noqa: E402
from rtdmd_bench.train import build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=str(ROOT.parent / "shared" / "data" / "drawbench" / "test.txt"))
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "eval_cache.md"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = resolve_config("dmd2", "tiny-sd3", [])
    b = build(cfg)
    spec = SamplerSpec("teacher", 4, tag="tiny-sd3")
    rows = []
    with tempfile.TemporaryDirectory() as shared, tempfile.TemporaryDirectory() as fresh:
        for suite_name, scorer, batch, cache in (("clipscore", "tiny-clipscore", 4, shared),
                                                 ("pickscore", "tiny-pickscore", 4, shared),
                                                 ("clipscore", "tiny-clipscore", 1, fresh)):
            suite = build_suite(suite_name, {"scorer": scorer, "limit": args.limit, "prompts": args.prompts})
            stats = GenStats()
            t0 = time.perf_counter()
            res = evaluate_suite(suite, b.base, spec, b.rewards, cfg.to_dict(), 42, Path(cache), None,
                                 batch_size=batch, stats=stats)
            score = next(v for k, v in res["metrics"].items() if isinstance(v, float))
            rows.append((res["suite"], batch, stats.generated, stats.cached, time.perf_counter() - t0, score))
    lines = ["# Evaluation image cache (tiny-sd3 teacher, 4 CPS steps, seed 42)", "",
             f"{args.limit} DrawBench prompts, one image each; stand-in scorers. Rerun: "
             "`python benchmarks/eval_cache.py`. git " + git_commit(), "",
             "| suite | generation batch | images generated | images from cache | wall time (s) | score |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {bs} | {g} | {c} | {t:.2f} | {v:.6f} |" for s, bs, g, c, t, v in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
