"""`rtdmd-bench geneval-agreement`: the run-level part of the GenEval agreement study.

Gets the images (a run's GenEval samples through the evaluation cache, or a folder in GenEval's
layout), builds both scorers, runs `suites.geneval_agreement.study` and writes the result. It
lives in the harness because it opens runs and generates samples; the study itself (kappa,
agreement rows, the output format) is in suites/geneval_agreement.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.evaluate import SamplerSpec, build_suite, checkpoint_tag, generate, hold_run, suite_prompts
from rtdmd_bench.runs import RunDir, atomic_write_json, git_commit, versions
from rtdmd_bench.train import load_for_eval
from suites.geneval_agreement import folder_samples, study
from suites.geneval_official import OfficialScorer


def agreement_study(run: Path | None, images: Path | None, suite_sets: dict[str, str], out: Path | None,
                    seed: int | None = None, batch_size: int = 256) -> tuple[dict[str, Any], Path]:
    """The CLI's `geneval-agreement`: build both scorers (their configuration is checked first),
    get the images, run the study, write the JSON atomically. Returns (result, path written)."""
    if (run is None) == (images is None):
        raise UserError("give exactly one of --run RUN or --images DIR (a folder in GenEval's layout)")
    if "scorer" in suite_sets:
        raise UserError("geneval-agreement runs both scorers: drop --set suite.scorer")
    suite = build_suite("geneval", suite_sets)
    official = OfficialScorer(suite.cfg.official)
    if run is not None:
        pixels, rows = run_samples(run, suite, seed, batch_size), suite.metadata()
        source, path = {"run": str(run)}, out or Path(run) / "eval" / "geneval-agreement.json"
    else:
        pixels, rows = folder_samples(Path(images), suite.cfg.limit)
        source, path = {"images": str(images)}, out or Path(images) / "geneval-agreement.json"
    result = {**study(pixels, rows, suite, official), "source": source, "versions": versions(), "git_commit": git_commit()}
    atomic_write_json(path, result)
    return result, path


def run_samples(run_dir: Path, suite: Any, seed: int | None, batch_size: int) -> Tensor:
    """The run's GenEval samples, from the run's cache when `rtdmd-bench eval` made them (same
    sampler tag, seed and prompts), else generated into it."""
    run = RunDir.open(run_dir)
    with hold_run(run.path):
        b = load_for_eval(run.path)
        spec = SamplerSpec.student(b.cfg.method, tag=checkpoint_tag(run))
        seed = int(seed) if seed is not None else int(getattr(suite, "seed", 0) or 0)  # as `eval`'s default
        with b.method.generator():
            return generate(b.base, spec, suite_prompts(suite, b.base), suite.images_per_prompt, seed,
                            run.path / "samples", batch_size=batch_size)
