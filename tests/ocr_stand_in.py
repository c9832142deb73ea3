"""A stand-in OCR environment for tests: a `python` that runs the project's own interpreter with a
fake `paddleocr` (and an empty `pyclipper`) on its path, plus a model folder in PaddleOCR's layout.

The shipped runner (rtdmd_bench/rewards/paddleocr_runner.py) runs unchanged under it. The fake
engine checks that the runner builds it as RTDMD does (kwargs, pyclipper imported first, model
files under BASE_DIR) and "reads" text the tests encode in the pixels: channel 0 of row 0 of the
array it receives holds the bytes of the detections' texts, separated by byte 10 and ended by
byte 0; channel 1 at each text's first pixel holds its confidence x 255. A text starting with
byte 1 makes `ocr()` raise. Detections under the drop score 0.5 are dropped and none found gives
[None], as PaddleOCR 2.9.1 does. STAND_IN_MODE=fail (30 numbered stderr lines, exit 3) | segfault
| silent (exit 0 before anything is written) changes how the engine's construction ends.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

INIT = '''
import sys
assert "pyclipper" in sys.modules, "the runner must import pyclipper before paddle (import-order segfault)"
STAND_IN = {stand_in}
__version__ = {version!r}
from paddleocr.paddleocr import PaddleOCR
'''

ENGINE = r'''
import os, signal, sys, types
import numpy as np

BASE_DIR = os.path.expanduser("~/.paddleocr/")
MODELS = {"det": "whl/det/en/en_PP-OCRv3_det_infer", "rec": "whl/rec/en/en_PP-OCRv4_rec_infer",
          "cls": "whl/cls/ch_ppocr_mobile_v2.0_cls_infer"}
RTDMD = {"use_angle_cls": False, "lang": "en", "use_gpu": False, "show_log": False}


class PaddleOCR:
    def __init__(self, **kwargs):
        mode = os.environ.get("STAND_IN_MODE", "ok")
        if mode == "fail":
            for i in range(1, 31):
                print(f"stderr line {i:02d}", file=sys.stderr)
            sys.exit(3)
        if mode == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if mode == "silent":
            sys.exit(0)
        assert kwargs == RTDMD, f"not RTDMD's engine: {kwargs}"
        dirs = {part: os.path.join(BASE_DIR, sub) for part, sub in MODELS.items()}
        for part, folder in dirs.items():
            if not all(os.path.isfile(os.path.join(folder, f)) for f in ("inference.pdmodel", "inference.pdiparams")):
                raise RuntimeError(f"Download from https://paddleocr.bj.bcebos.com/{part}.tar failed. Retry limit reached")
        self.args = types.SimpleNamespace(ocr_version="PP-OCRv4", drop_score=0.5, lang="en",
                                          **{f"{p}_model_dir": d for p, d in dirs.items()})

    def ocr(self, img, cls=True):
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert cls is False
        row = [int(v) for v in img[0, :, 0]]
        end = row.index(0) if 0 in row else len(row)
        found, start = [], 0
        for stop in [i for i in range(end) if row[i] == 10] + [end]:
            if stop > start:
                if row[start] == 1:
                    raise ValueError("stand-in: unreadable text")
                text = bytes(row[start:stop]).decode("latin-1")
                conf = float(img[0, start, 1]) / 255
                if conf >= self.args.drop_score:
                    found.append([[[start, 0], [stop, 0], [stop, 1], [start, 1]], (text, conf)])
            start = stop + 1
        return [found or None]
'''


def make_environment(root: Path, version: str = "0.0.0+stand-in", stand_in: bool = True) -> dict[str, str]:
    """Write the stand-in environment under root; returns the engine fields python and local_path."""
    site = root / "site"
    (site / "paddleocr").mkdir(parents=True, exist_ok=True)
    (site / "paddleocr" / "__init__.py").write_text(INIT.format(stand_in=stand_in, version=version))
    (site / "paddleocr" / "paddleocr.py").write_text(ENGINE)
    (site / "pyclipper.py").write_text("")
    python = root / "bin" / "python"
    python.parent.mkdir(exist_ok=True)
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    models = root / "models"
    for sub in ("whl/det/en/en_PP-OCRv3_det_infer", "whl/rec/en/en_PP-OCRv4_rec_infer",
                "whl/cls/ch_ppocr_mobile_v2.0_cls_infer"):
        (models / sub).mkdir(parents=True, exist_ok=True)
        for name in ("inference.pdmodel", "inference.pdiparams"):
            (models / sub / name).write_bytes(f"stand-in {sub} {name}".encode())
    return {"python": str(python), "local_path": str(models)}


def encode(lines: Sequence[tuple[str, float]], width: int = 48, height: int = 8,
           channel: int = 0) -> torch.Tensor:
    """An image (3, height, width) in [0, 1] from which the stand-in reads `lines` ((text,
    confidence) pairs, latin-1 texts) in `channel` of row 0 (confidence in channel 1)."""
    image = torch.full((3, height, width), 0.5)
    row = []
    for text, conf in lines:
        image[1, 0, len(row)] = round(conf * 255) / 255
        row += list(text.encode("latin-1")) + [10]
    row = row[:-1] + [0] if row else [0]
    if len(row) > width:
        raise ValueError(f"{len(row)} bytes do not fit a row of {width}")
    image[channel, 0, :len(row)] = torch.tensor(row, dtype=torch.float32) / 255
    return image

