"""`rtdmd-bench sample`: pictures from a trained run's EMA generator, with its own sampler and step
count (`SamplerSpec.student`), for prompts given on the command line or in a file.

Image j of prompt i starts from noise seeded by (seed, i, j) (`samples.generate_prompt`, the one
`eval` uses), so the pictures do not depend on --batch-size, and equal `eval`'s samples of the same
prompt list and seed. What is written is chosen by the shape of what the base decodes to, never by
the base's name:
- images (B, C, H, W): `images/p<prompt>-i<image>.png` (8-bit, the base's resolution) and
  `grid.png` (a row per prompt, the prompt written on its left);
- 2-D points (B, 2) (toy2d): `points.csv` and `scatter.png` (coloured by prompt);
and in both cases `manifest.json`: run, checkpoint, sampler (with its sigmas), seed, prompts, and
one entry per sample (its file or point, prompt, prompt index, image index). Every argument is
checked before anything is written; each file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_write_json, atomic_write_text
from rtdmd_bench.pictures import labelled_grid, save_png, save_scatter, to_pixels
from rtdmd_bench.progress import progress_bar
from rtdmd_bench.prompt_files import read_prompts
from rtdmd_bench.runs import RunDir, git_commit, versions
from rtdmd_bench.samples import SamplerSpec, generate_prompt, prompt_set_hash

DEFAULT_PROMPTS = 4
"""Without --prompt or --prompts: this many of the base's training prompts, evenly spread over its list."""
MANIFEST = "manifest.json"


def check_numbers(n: int, seed: int, batch_size: int) -> None:
    if n < 1:
        raise UserError(f"--n {n}: give at least 1 image per prompt")
    if seed < 0:
        raise UserError(f"--seed {seed}: give a seed >= 0")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: give at least 1")


def given_prompts(prompt: Sequence[str], prompts_file: Path | None) -> list[str] | None:
    """The prompts of --prompt (repeatable) or --prompts FILE (.txt one a line, .json a list, .jsonl
    objects with "prompt"); None when neither is given (the base's own prompts are used)."""
    if prompt and prompts_file is not None:
        raise UserError("give prompts with --prompt or with --prompts FILE, not both")
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"--prompts {path}: no such file; pass a text file with one prompt a line")
        try:
            return read_prompts(path)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--prompts {path}: not a readable prompt file ({type(e).__name__}); pass UTF-8 text "
                            "with one prompt a line, a JSON list of strings, or JSONL with \"prompt\" fields") from None
    if any(not p.strip() for p in prompt):
        raise UserError("--prompt '': a prompt must not be empty")
    return [p.strip() for p in prompt] or None


def check_out(out: Path) -> None:
    """`out` must be a folder or creatable as one: not a file, under no file, in a writable place."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder (it is created if missing)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, so the folder cannot be created; pass another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable; pass another --out")


def default_prompts(base: Any) -> list[str]:
    """DEFAULT_PROMPTS of the base's training prompts, evenly spread (digits: several classes, not
    three phrasings of one)."""
    try:
        prompts = list(base.train_prompts())
    except UserError as e:
        raise UserError(f"no --prompt or --prompts given and the base's training prompts are not available ({e}); "
                        "pass --prompt TEXT or --prompts FILE") from None
    stride = max(1, len(prompts) // DEFAULT_PROMPTS)
    return prompts[::stride][:DEFAULT_PROMPTS]


def kind_of(decoded: Tensor) -> str:
    """"points" for (B, 2) decodes (the toy's 2-D samples), "images" for (B, C, H, W)."""
    if decoded.ndim == 2 and decoded.shape[1] == 2:
        return "points"
    if decoded.ndim == 4:
        return "images"
    raise ValueError(f"cannot picture samples of shape {tuple(decoded.shape)}: expected (B, 2) points "
                     "or (B, C, H, W) images")


def image_file(prompt_index: int, image_index: int) -> str:
    return f"images/p{prompt_index:04d}-i{image_index:03d}.png"


def sample_run(run_dir: Path, prompt: Sequence[str] = (), prompts_file: Path | None = None, n: int = 4,
               seed: int = 0, out: Path | None = None, batch_size: int = 64, console: Any = None) -> dict[str, Any]:
    """Write samples of the run's EMA generator (latest checkpoint) to `out` (default
    RUN/sampled/<checkpoint>-seed<S>-n<N>-<prompt-set hash>); returns the manifest (its "out" is the
    folder). `console` (rich) gets the notes and a progress bar over prompts; None: silent."""
    from rtdmd_bench.train import load_for_eval

    check_numbers(n, seed, batch_size)
    prompts = given_prompts(prompt, prompts_file)
    run = RunDir.open(run_dir)
    ckpt = run.latest_checkpoint()
    if ckpt is None or not ckpt.is_dir():
        raise UserError(f"{run.path} has no checkpoint yet: sample once training has written one "
                        f"({run.path / 'checkpoints'})")
    if out is not None:
        check_out(Path(out))
    b = load_for_eval(run.path)
    source = "--prompts " + str(prompts_file) if prompts_file is not None else "--prompt"
    if prompts is None:
        prompts, source = default_prompts(b.base), "the base's training prompts"
        if console is not None:
            console.print(f"no --prompt or --prompts: sampling {len(prompts)} of the base's training prompts",
                          highlight=False, markup=False)
    with torch.no_grad():  # a prompt the base cannot read fails here, before anything is written
        for start in range(0, len(prompts), batch_size):
            b.base.encode(prompts[start:start + batch_size])
    out = Path(out) if out is not None else (
        run.path / "sampled" / f"{ckpt.name}-seed{seed}-n{n}-{prompt_set_hash(prompts)}")
    check_out(out)
    spec = SamplerSpec.student(b.cfg.method, tag=f"{run.path.name}-{ckpt.name}")
    manifest: dict[str, Any] = {
        "out": str(out), "run": str(run.path), "run_id": run.path.name, "method": b.cfg.run.method,
        "base": b.cfg.run.base, "checkpoint": ckpt.name, "sampler": spec.record(b.base), "seed": seed,
        "images_per_prompt": n, "prompts_from": source, "prompts": list(prompts),
        "noise": "image j of prompt i starts from noise seeded by (seed, i, j); the batch size does not matter",
        "versions": versions(), "git_commit": git_commit(),
    }
    with b.method.generator():
        kind, samples = _generate(b.base, spec, prompts, n, seed, batch_size, out, console)
    title = f"{run.path.name} {ckpt.name}: {n} samples a prompt, seed {seed}"
    manifest.update(_write_summary(kind, samples, prompts, n, seed, out, title))
    _remove_stale(out, manifest)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _generate(base: Any, spec: SamplerSpec, prompts: Sequence[str], n: int, seed: int, batch_size: int, out: Path,
              console: Any) -> tuple[str, list[Tensor]]:
    """(kind_of the decodes, per prompt: the decoded points (n, 2), or the 8-bit pixels (n, H, W, 3) of
    images already written as PNGs, so that many large images are not held as floats)."""
    kind, per_prompt = "", []
    with progress_bar(counts=True, disable=console is None, console=console) as bar:
        task = bar.add_task("sample", total=len(prompts), info="")
        for i, p in enumerate(prompts):
            bar.update(task, info=p if len(p) <= 40 else p[:39] + "…")
            decoded = generate_prompt(base, spec, p, i, n, seed, batch_size)
            kind = kind_of(decoded)  # checked before the first file is written
            if kind == "images":
                pixels = to_pixels(decoded)
                for j in range(n):
                    save_png(pixels[j], out / image_file(i, j))
                decoded = torch.from_numpy(pixels)
            per_prompt.append(decoded)
            bar.update(task, advance=1)
    return kind, per_prompt


def _write_summary(kind: str, samples: list[Tensor], prompts: Sequence[str], n: int, seed: int, out: Path,
                   title: str) -> dict[str, Any]:
    """grid.png, or points.csv + scatter.png; the manifest's entries for them and for every sample."""
    entries = [{"prompt_index": i, "image_index": j, "prompt": p, "seed": seed}
               for i, p in enumerate(prompts) for j in range(n)]
    if kind == "images":
        save_png(labelled_grid([s.numpy() for s in samples], prompts), out / "grid.png")
        for e in entries:
            e["file"] = image_file(e["prompt_index"], e["image_index"])
        return {"kind": "images", "grid": "grid.png", "image_size": list(samples[0].shape[1:3]), "samples": entries}
    points = torch.cat(samples)  # (P * n, 2), prompt-major like `entries`
    for e, (x, y) in zip(entries, points.tolist()):
        e["point"] = [x, y]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["prompt_index", "image_index", "prompt", "seed", "x", "y"])
    for e in entries:  # repr: the float32 values exactly
        writer.writerow([e["prompt_index"], e["image_index"], e["prompt"], seed, *map(repr, e["point"])])
    atomic_write_text(out / "points.csv", text.getvalue())
    save_scatter(samples, prompts, out / "scatter.png", title=title)
    return {"kind": "points", "points": "points.csv", "scatter": "scatter.png", "samples": entries}


def _remove_stale(out: Path, manifest: dict[str, Any]) -> None:
    """Delete the files an earlier sample into `out` listed in its manifest that this one did not
    rewrite (e.g. images of a larger --n), so the folder holds exactly what the new manifest lists."""
    try:
        old = json.loads((out / MANIFEST).read_text())
        listed = {e["file"] for e in old.get("samples", []) if "file" in e}
        listed |= {old[k] for k in ("grid", "points", "scatter") if isinstance(old.get(k), str)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return  # no earlier manifest (or not one of ours): nothing is ours to remove
    kept = {e["file"] for e in manifest["samples"] if "file" in e}
    kept |= {manifest[k] for k in ("grid", "points", "scatter") if k in manifest}
    root = out.resolve()
    for name in listed - kept:
        path = (out / name).resolve()
        if path.parent in (root, root / "images") and path.suffix in (".png", ".csv"):
            path.unlink(missing_ok=True)
