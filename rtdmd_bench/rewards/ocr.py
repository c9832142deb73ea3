"""OCR reward: PaddleOCR 2.9.1 as RTDMD runs it, in an environment the user names (non-differentiable).

PaddleOCR cannot live in the project's environment: paddleocr 2.9.1 (the version RTDMD pins)
requires numpy<2 (the project runs numpy 2), `import paddle` before `import pyclipper` segfaults
with paddlepaddle 2.6.2, and its model files come from Baidu's server, not the HF hub. So, like
GenEval's official scorer (suites/geneval_official.py), PaddleOCR runs as a process under the
python of a separate environment: the images go to a temporary folder as lossless 8-bit PNGs,
`paddleocr_runner.py` (shipped beside this file) reads them with RTDMD's engine settings and
writes the detected (text, confidence) pairs as JSON, and the score is computed here
(rtdmd_bench/rewards/ocr_text.py). One process per call: starting paddle and loading the three
models costs a few seconds, which an evaluation pays once and a training step would pay each time.

Two locations, each from a config field or, when that is empty, an environment variable:
  python      RTDMD_BENCH_OCR_PYTHON  the environment's python (paddlepaddle 2.6.2, paddleocr 2.9.1)
  local_path  RTDMD_BENCH_OCR_PATH    PaddleOCR's model folder in its own layout (RTDMD's
                                      RTDMD_PADDLEOCR_HOME); empty: PaddleOCR's ~/.paddleocr/,
                                      filled from Baidu's server on first use
The engine is checked when the reward is built (one run of the runner without images), so a
missing environment fails before any image is generated. `models="stand-in"` expects the test
stand-in environment (tests/ocr_stand_in.py: a fake `paddleocr` that reads text encoded in the
pixels) and names the reward "tiny-ocr[stand-in]"; the two never mix.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.progress import progress_bar
from rtdmd_bench.rewards.ocr_text import ocr_score, recognised_text, target_text
from rtdmd_bench.rewards.pixels import to_uint8

PADDLEOCR_VERSION = "2.9.1"  # RTDMD's requirements.txt
ENV = {"python": "RTDMD_BENCH_OCR_PYTHON", "local_path": "RTDMD_BENCH_OCR_PATH"}
RUNNER = Path(__file__).with_name("paddleocr_runner.py")
# PaddleOCR 2.9.1 with lang="en": model folder under its BASE_DIR and the tar it downloads there.
DOWNLOADS = "https://paddleocr.bj.bcebos.com"  # Baidu's object store, where PaddleOCR fetches its models
MODEL_DIRS = {  # the angle classifier is never used (use_angle_cls=False) but PaddleOCR requires its files
    "det": ("whl/det/en/en_PP-OCRv3_det_infer", f"{DOWNLOADS}/PP-OCRv3/english/en_PP-OCRv3_det_infer.tar"),
    "rec": ("whl/rec/en/en_PP-OCRv4_rec_infer", f"{DOWNLOADS}/PP-OCRv4/english/en_PP-OCRv4_rec_infer.tar"),
    "cls": ("whl/cls/ch_ppocr_mobile_v2.0_cls_infer", f"{DOWNLOADS}/dygraph_v2.0/ch/ch_ppocr_mobile_v2.0_cls_infer.tar"),
}
MODEL_FILES = ("inference.pdmodel", "inference.pdiparams")
TAIL_LINES = 20
CHUNK = 256  # images per runner process: ~0.5 GB of temporary PNGs at 1024 px; one engine start (~3 s) each
SETUP = ("python3.11 -m venv ~/.venvs/paddleocr && ~/.venvs/paddleocr/bin/pip install paddlepaddle==2.6.2 "
         "paddleocr==2.9.1")

ChannelOrder = Literal["rgb", "bgr"]


@dataclass
class EngineConfig:
    """Where PaddleOCR runs and how it is fed (shared by the `ocr` reward and suite)."""

    python: str = ""
    """Python of the OCR environment (paddlepaddle 2.6.2 + paddleocr 2.9.1; it cannot share the project's
    numpy 2); empty = $RTDMD_BENCH_OCR_PYTHON. Set one up with: python3.11 -m venv ~/.venvs/paddleocr &&
    ~/.venvs/paddleocr/bin/pip install paddlepaddle==2.6.2 paddleocr==2.9.1."""
    local_path: str = ""
    """PaddleOCR model folder in its own layout (whl/det/en/en_PP-OCRv3_det_infer, whl/rec/en/en_PP-OCRv4_rec_infer,
    whl/cls/ch_ppocr_mobile_v2.0_cls_infer, each with inference.pdmodel + inference.pdiparams; RTDMD's
    RTDMD_PADDLEOCR_HOME); empty = $RTDMD_BENCH_OCR_PATH, else PaddleOCR's ~/.paddleocr/, downloaded on first use."""
    channel_order: ChannelOrder = "rgb"
    """Channel order of the array handed to PaddleOCR, which expects OpenCV's BGR. "rgb" (default, official):
    RTDMD passes the RGB array as is (apparently accidental; the models see swapped channels). "bgr": the
    order PaddleOCR gets when it reads the image file itself. Recorded in the version."""
    models: Literal["official", "stand-in"] = "official"
    """"official": the environment must run paddleocr 2.9.1; "stand-in": the test stand-in environment
    (tests/ocr_stand_in.py), reported as a stand-in, never under the name ocr."""


@dataclass
class ImageRead:
    lines: list[tuple[str, float]]
    """(text, confidence) of each detection PaddleOCR kept, in its reading order."""
    error: str | None
    """What PaddleOCR raised on this image (RTDMD scores it 0), else None."""


class PaddleOCREngine:
    """PaddleOCR behind the process boundary: checks the environment when built, then `read(images)`."""

    def __init__(self, cfg: EngineConfig, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.cfg = cfg
        self.python = _executable(cfg.python or environ.get(ENV["python"], ""))
        self.local_path = _model_folder(cfg.local_path or environ.get(ENV["local_path"], ""))
        with tempfile.TemporaryDirectory(prefix="rtdmd-ocr-probe-") as tmp:
            self.info = self._run(Path(tmp) / "engine.json", images=None)["engine"]
        self.stand_in = bool(self.info.get("stand_in"))
        found = str(self.info.get("paddleocr"))
        if cfg.models == "official" and self.stand_in:
            raise UserError(f"{self.python} runs the test stand-in of paddleocr: name a real OCR environment "
                            f"(suite/reward field python or {ENV['python']}), or set models=stand-in")
        if cfg.models == "stand-in" and not self.stand_in:
            raise UserError(f"models=stand-in expects the test stand-in environment (tests/ocr_stand_in.py), but "
                            f"{self.python} runs paddleocr {found}: drop models=stand-in")
        if not self.stand_in and found != PADDLEOCR_VERSION:
            raise UserError(f"{self.python} has paddleocr {found}; RTDMD's OCR metric is paddleocr {PADDLEOCR_VERSION} "
                            f"(the 3.x API and models differ): pip install paddleocr=={PADDLEOCR_VERSION} "
                            f"paddlepaddle==2.6.2 in that environment")
        engine = "stand-in" if self.stand_in else f"paddleocr-{PADDLEOCR_VERSION}"
        self.version = f"ocr/{engine}-{cfg.channel_order}-1"

    def command(self, out: Path, images: Path | None) -> list[str]:
        cmd = [self.python, str(RUNNER), "--out", str(out), "--channel-order", self.cfg.channel_order]
        cmd += ["--model-home", str(self.local_path)] if self.local_path else []
        return cmd + (["--images", str(images)] if images is not None else [])

    def read(self, images: Tensor) -> list[ImageRead]:
        """What PaddleOCR reads on each image (N, 3, H, W) in [0, 1], one runner process per
        CHUNK images (bounded temporary disk; a progress bar when there are several). The images
        are rounded to uint8 as RTDMD's scorer adapter rounds them."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"OCR takes images (N, 3, H, W) in [0, 1]; got {tuple(images.shape)}")
        starts = range(0, images.shape[0], CHUNK)
        reads: list[ImageRead] = []
        with progress_bar(counts=True, disable=len(starts) < 2) as bar:
            task = bar.add_task("OCR (PaddleOCR, CPU)", total=images.shape[0], info="")
            for start in starts:
                reads += self._read_chunk(images[start:start + CHUNK])
                bar.update(task, completed=len(reads))
        return reads

    def _read_chunk(self, images: Tensor) -> list[ImageRead]:
        """One runner process; the PNGs and its result live in a temporary folder removed on
        return or error."""
        pixels = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) RGB
        names = [f"{i:06d}.png" for i in range(len(pixels))]
        with tempfile.TemporaryDirectory(prefix="rtdmd-ocr-") as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for name, arr in zip(names, pixels):
                Image.fromarray(np.ascontiguousarray(arr)).save(folder / name, compress_level=1)  # lossless
            result = self._run(Path(tmp) / "result.json", folder)
        return parse_reads(result, names)

    def _run(self, out: Path, images: Path | None) -> dict[str, Any]:
        cmd = self.command(out, images)
        run_runner(cmd)
        if not out.is_file():
            raise UserError(f"the OCR runner exited normally but wrote no {out.name}:\n  $ {shlex.join(cmd)}")
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"the OCR runner wrote an unreadable {out.name} ({err})") from None
        if not isinstance(result, dict) or not isinstance(result.get("engine"), dict):
            raise UserError(f"the OCR runner's {out.name} has no engine record: is {RUNNER.name} the shipped runner?")
        return result

    def provenance(self) -> dict[str, Any]:
        """Where the reads come from (recorded in every result)."""
        return {**self.info, "python": self.python, "interpreter": self.info.get("python"),
                "local_path": str(self.local_path) if self.local_path else None,
                "channel_order": self.cfg.channel_order, "runner": str(RUNNER)}


def run_runner(cmd: list[str]) -> None:
    """Run the OCR runner; a UserError with the command and the tail of stderr when it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"could not start the OCR environment's python ({err}):\n  $ {shlex.join(cmd)}\n"
                        f"field python / {ENV['python']} must be an executable python") from err
    if proc.returncode == 0:
        return
    stream, lines = "stderr", proc.stderr.splitlines()
    if not lines:
        stream, lines = "stdout (stderr was empty)", proc.stdout.splitlines()
    tail = "\n".join("  | " + line for line in lines[-TAIL_LINES:])
    shown = f"last {min(len(lines), TAIL_LINES)} lines of its {stream}:\n{tail}" if lines else "it printed nothing."
    status = f"exit status {proc.returncode}"
    hint = ("The environment must hold paddlepaddle 2.6.2 and paddleocr 2.9.1 and the three model folders "
            f"(or network access to {DOWNLOADS}).")
    if proc.returncode < 0:
        status = f"signal {signal.Signals(-proc.returncode).name}"
        hint += " A SIGSEGV at start is the paddle/pyclipper import-order crash the runner avoids: is it the shipped runner?"
    raise UserError(f"the OCR runner failed with {status}; nothing was written.\n  $ {shlex.join(cmd)}\n{shown}\n{hint}")


def parse_reads(result: Mapping[str, Any], names: Sequence[str]) -> list[ImageRead]:
    """The runner's per-image records, in image order; every image must be there once."""
    images = result.get("images")
    if not isinstance(images, dict):
        raise UserError("the OCR runner's result has no per-image records")
    missing = [n for n in names if n not in images]
    if missing or len(images) != len(names):
        raise UserError(f"the OCR runner read {len(images)} images for {len(names)} written"
                        + (f" (first missing: {missing[0]})" if missing else ""))
    out = []
    for name in names:
        rec = images[name]
        try:
            lines = [(str(text), float(conf)) for text, conf in rec["lines"]]
            error = rec["error"]
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"the OCR runner's record of {name} is malformed ({err}): {str(rec)[:200]}") from None
        out.append(ImageRead(lines, None if error is None else str(error)))
    return out


def _executable(value: str) -> str:
    if not value:
        raise UserError(f"the OCR scorer runs PaddleOCR {PADDLEOCR_VERSION} in its own environment: set the field "
                        f"python (--set suite.python=PATH or --set reward.ocr.python=PATH) or {ENV['python']} to its "
                        f"python. Create it with: {SETUP}")
    path = shutil.which(value) if os.sep not in value else value
    if not path or not Path(path).is_file() or not os.access(path, os.X_OK):
        raise UserError(f"OCR python {value!r} (field python / {ENV['python']}) is not an executable file. "
                        f"Create the environment with: {SETUP}")
    return str(Path(path).absolute())


def _model_folder(value: str) -> Path | None:
    """The given model folder, checked to hold the three models; None = PaddleOCR's default."""
    if not value:
        return None
    root = Path(value).expanduser()
    missing = [(part, sub, url) for part, (sub, url) in MODEL_DIRS.items()
               if not all((root / sub / f).is_file() for f in MODEL_FILES)]
    if missing:
        steps = "; ".join(f"mkdir -p {root / Path(sub).parent} && curl -L {url} | tar -x -C {root / Path(sub).parent}"
                          for _, sub, url in missing)
        raise UserError(f"OCR model folder {root} (field local_path / {ENV['local_path']}) lacks "
                        + ", ".join(f"{sub}/{{{','.join(MODEL_FILES)}}}" for _, sub, _ in missing)
                        + f". Either let PaddleOCR download them there (network to {DOWNLOADS} needed): OCR_PYTHON {RUNNER} "
                        f"--out /tmp/ocr-engine.json --model-home {root}; or unpack its tars into that layout: {steps}")
    return root.resolve()


class OCR:
    """OCR reward (RTDMD's `ocr`): 1 - min(Levenshtein, len)/len between the prompt's first quoted
    span and the text PaddleOCR reads, in [0, 1]; non-differentiable."""

    @dataclass
    class Config(EngineConfig):
        pass

    name = "ocr"
    differentiable = False

    def __init__(self, cfg: "OCR.Config | None" = None, environ: Mapping[str, str] | None = None):
        self.cfg = cfg or self.Config()
        self.engine = PaddleOCREngine(self.cfg, environ)  # checks the environment now
        self.name = "tiny-ocr[stand-in]" if self.engine.stand_in else "ocr"
        if self.cfg.channel_order == "bgr":
            self.name = f"{self.name}[bgr-input]"

    def details(self, images: Tensor, prompts: Sequence[str]) -> list[tuple[float, str, str | None]]:
        """(score, recognised text, error) per image."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        targets = [target_text(p) for p in prompts]  # refuse bad prompts before running PaddleOCR
        out = []
        for read, target in zip(self.engine.read(images), targets):
            seen = recognised_text(read.lines)
            out.append((0.0 if read.error is not None else ocr_score(seen, target), seen, read.error))
        return out

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        scores = [s for s, _, _ in self.details(images, prompts)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)
