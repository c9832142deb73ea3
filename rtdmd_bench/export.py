"""`rtdmd-bench export`: a run's trained student (its EMA generator, latest checkpoint) as diffusers
users load it.

- `lora`: `pytorch_lora_weights.safetensors`, written by the base's stock pipeline class
  (`save_lora_weights`: diffusers' keys `transformer.<module>.lora_A.weight`, the peft `LoraConfig`
  as the file's adapter metadata, so rank and alpha load as trained), for
  `pipe.load_lora_weights(DIR)` on the stock pipeline of the weights the student's LoRA sits on.
  After RTDMD's stage switch the student is two adapters (the frozen stage-1 one and the stage-2
  one); they are concatenated into one LoRA of rank r1 + r2 with the same function
  (`bases/lora_adapters.concat_loras`).
- `pipeline`: that stock pipeline with the LoRA loaded by diffusers, fused into the transformer
  (`fuse_lora`, `unload_lora_weights`) and saved whole (`save_pretrained`), scheduler included.

Both folders hold `export_info.json`: run, checkpoint, base, the student's sigmas and the pipeline
call that walks them. What diffusers reproduces: the deterministic sampler. The suite's CPS step
with eta = 0 is x' = (1 - s') x0_hat + s' eps_hat = x + (s' - s) v (x0_hat = x - s v,
eps_hat = x + (1 - s) v), which is exactly `FlowMatchEulerDiscreteScheduler.step`; with eta > 0
CPS adds fresh noise of std s' sin(eta pi / 2) and keeps cos(eta pi / 2) of eps_hat, which no
diffusers scheduler does (its `stochastic_sampling` is the eta = 1 case only).
The folder is written under a temporary name and renamed once complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.runs import RunDir, atomic_write_json, git_commit, versions

ExportFormat = Literal["lora", "pipeline"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
LORA_FILE = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name (`LORA_WEIGHT_NAME_SAFE`), what `load_lora_weights(DIR)` reads."""
INFO_FILE = "export_info.json"

DETERMINISTIC = ("the suite's CPS sampler with eta = 0: x' = (1 - s') x0_hat + s' eps_hat = x + (s' - s) v, "
                 "i.e. FlowMatchEulerDiscreteScheduler.step on the same sigmas")
NOT_REPRODUCED = ("CPS noise with eta > 0 (the suite's evaluation sampler when eta > 0: x' = (1 - s') x0_hat + "
                  "s' cos(eta pi/2) eps_hat + s' sin(eta pi/2) z); diffusers' Euler step is the eta = 0 case and its "
                  "stochastic_sampling option the eta = 1 case with its own noise draws")


def check_out(out: Path) -> None:
    """`--out` must be a new or empty folder: an export never mixes with other files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to write the export into")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; give a new folder or remove it")


def export_run(run_dir: Path, fmt: str, out: Path) -> dict[str, Any]:
    """Write the run's student to `out` in format `fmt` (module docstring); returns export_info."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    from rtdmd_bench.config import from_dict

    run = RunDir.open(run_dir)
    out = Path(out)
    check_out(out)
    cfg = from_dict(run.read_config())
    if not hasattr(registry.resolve("bases", cfg.run.base), "student_lora"):
        raise UserError(f"export needs a diffusers base (sd3, sd35m, sd35l, flux2-4b, flux2-9b, flux1-dev or a "
                        f"tiny-* one); run {run.path} trained on {cfg.run.base!r}, whose student is a whole "
                        "network of the suite's own, not a diffusers LoRA")
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise UserError(f"run {run.path} has no checkpoint yet; train it (or resume it) first")
    from rtdmd_bench.samples import SamplerSpec
    from rtdmd_bench.train import load_for_eval

    b = load_for_eval(run.path)
    spec = SamplerSpec.student(b.cfg.method)
    with b.method.generator():  # the EMA weights, as `eval` samples them
        layers, lora_config = b.base.student_lora()
    info = export_info(run, checkpoint.name, b, spec, fmt, out, lora_config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if fmt == "lora":
            save_lora(b.base, layers, lora_config, tmp)
        else:
            save_pipeline(b.base, layers, lora_config, tmp)
        atomic_write_json(tmp / INFO_FILE, info)
        _default_modes(tmp)
        if out.is_dir():
            out.rmdir()  # empty (check_out)
        os.replace(tmp, out)
    except OSError as e:  # no space, no permission: one message, nothing left behind
        raise UserError(f"could not write the export to {out} ({type(e).__name__}: {e}); free space or fix "
                        "the folder's permissions, then export again (nothing was written)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _default_modes(folder: Path) -> None:
    """The modes a plain mkdir / open would give (mkdtemp and safetensors create owner-only ones)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_lora(base: Any, layers: dict[str, Any], lora_config: dict[str, Any], folder: Path) -> None:
    """diffusers' own writer: keys prefixed `transformer.`, the LoraConfig as adapter metadata."""
    base.pipeline_class().save_lora_weights(str(folder), transformer_lora_layers=layers,
                                            transformer_lora_adapter_metadata=dict(lora_config),
                                            weight_name=LORA_FILE)


def save_pipeline(base: Any, layers: dict[str, Any], lora_config: dict[str, Any], folder: Path) -> None:
    """The stock pipeline, the LoRA loaded the way users load it, fused, and saved whole."""
    pipe = base.diffusers_pipeline()
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=folder.parent) as lora_dir:
        save_lora(base, layers, lora_config, Path(lora_dir))
        pipe.load_lora_weights(lora_dir)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()  # drops the peft layers; the fused weights stay
    pipe.save_pretrained(str(folder), safe_serialization=True)


def export_info(run: RunDir, checkpoint: str, b: Any, spec: Any, fmt: str, out: Path,
                lora_config: dict[str, Any]) -> dict[str, Any]:
    """What the folder holds and the call that reproduces the suite's deterministic sampler."""
    base = b.base
    call = base.pipeline_call(spec.num_steps)
    cls = base.pipeline_class_name
    load = (f"pipe = {cls}.from_pretrained({base.student_weights()!r}); pipe.load_lora_weights({str(out)!r})"
            if fmt == "lora"
            else f"pipe = DiffusionPipeline.from_pretrained({str(out)!r})")
    return {
        "format": fmt, "run": str(run.path), "run_id": run.path.name, "checkpoint": checkpoint,
        "method": b.cfg.run.method, "base": b.cfg.run.base, "weights": "ema generator",
        "pipeline_class": cls, "lora_applies_to": base.student_weights(),
        "lora": {"rank": int(lora_config["r"]), "alpha": float(lora_config["lora_alpha"]),
                 "target_modules": list(lora_config["target_modules"])},
        "sampler": {"suite": {"kind": spec.kind, "num_steps": spec.num_steps, "eta": spec.eta},
                    "sigmas": [round(float(s), 8) for s in base.sigmas(spec.num_steps)],
                    "reproduced": DETERMINISTIC, "not_reproduced": NOT_REPRODUCED},
        "call": call,
        "usage": [load, "image = pipe(prompt, **call).images[0]  # call: the 'call' entry above"],
        "versions": versions(), "git_commit": git_commit(),
    }
