"""Run PaddleOCR as RTDMD configures it on a folder of PNGs; write what it read as JSON.

This file is a script for the user's OCR environment (its python with paddlepaddle and
paddleocr 2.9.1; see rtdmd_bench/rewards/ocr_engine.py): it imports nothing of rtdmd-bench and
runs under Python 3.8+. The project's `ocr` reward and suite start it as

    PYTHON paddleocr_runner.py --out RESULT.json [--images DIR] [--model-home DIR] [--channel-order rgb|bgr]

Without --images it only builds the engine and reports what it built (the suite's check before
any image is generated). With --images it reads every DIR/NNNNNN.png (8-bit RGB, lossless) and
calls `ocr(array, cls=False)` on each, as RTDMD's `OcrScorer` does. The engine is RTDMD's
(`rtdmd/rewards/ocr_scorer.py::_init_paddleocr`): `PaddleOCR(use_angle_cls=False, lang="en",
use_gpu=False, show_log=False)` with the package's defaults otherwise (PP-OCRv4 English
recogniser, PP-OCRv3 English detector, drop score 0.5), and model files under `paddleocr.paddleocr.BASE_DIR`
set to --model-home, as RTDMD sets it to its cache root (empty: the package's ~/.paddleocr/, which
PaddleOCR fills from its download server on first use).

--channel-order rgb (RTDMD's input, the default) hands PaddleOCR the RGB array as it is, although
PaddleOCR expects OpenCV's BGR order (it reads image files with cv2); bgr reverses the channels
first, which is what PaddleOCR sees when it reads the same image from a file.

The result is written atomically once every image is read: per image the detections' (text,
confidence) in PaddleOCR's order, or the error PaddleOCR raised on it (RTDMD scores such an image 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import traceback

ENGINE = {"use_angle_cls": False, "lang": "en", "use_gpu": False, "show_log": False}
SETTINGS = ("ocr_version", "det_algorithm", "rec_algorithm", "drop_score", "det_limit_side_len", "det_limit_type",
            "det_db_thresh", "det_db_box_thresh", "det_db_unclip_ratio", "rec_image_shape", "rec_batch_num",
            "use_space_char", "rec_char_dict_path", "det_model_dir", "rec_model_dir", "cls_model_dir")
MODEL_FILES = ("inference.pdmodel", "inference.pdiparams")


def build_engine(model_home: str):
    """RTDMD's PaddleOCR engine. pyclipper is imported before paddle: with paddlepaddle 2.6.2 the
    other order segfaults (or fails loading zlib) on some machines."""
    import pyclipper  # noqa: F401
    import paddleocr
    import paddleocr.paddleocr as module

    if model_home:
        module.BASE_DIR = os.path.join(model_home, "")  # where RTDMD's cache root goes
    engine = paddleocr.PaddleOCR(**ENGINE)
    return paddleocr, module, engine


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(paddleocr, module, engine) -> dict:
    """Versions, the settings that shape the result, the model folders and their files' sha256."""
    args = getattr(engine, "args", None)
    settings = {k: getattr(args, k, None) for k in SETTINGS}
    models = {}
    for part in ("det", "rec", "cls"):
        folder = settings[f"{part}_model_dir"]
        models[part] = {name: sha256(os.path.join(folder, name)) for name in MODEL_FILES
                        if folder and os.path.isfile(os.path.join(folder, name))}
    try:
        import paddle
        paddle_version = getattr(paddle, "__version__", "unknown")
    except ImportError:
        paddle_version = None
    import numpy
    return {"paddleocr": str(getattr(paddleocr, "__version__", "unknown")), "paddle": paddle_version,
            "numpy": numpy.__version__, "stand_in": bool(getattr(paddleocr, "STAND_IN", False)),
            "python": sys.executable, "python_version": sys.version.split()[0], "engine_kwargs": dict(ENGINE),
            "base_dir": getattr(module, "BASE_DIR", None), "settings": settings, "model_files": models}


def read_image(path: str, channel_order: str):
    """(H, W, 3) uint8 array in the order handed to PaddleOCR."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1]) if channel_order == "bgr" else rgb


def read_texts(engine, path: str, channel_order: str) -> dict:
    """One image: {"lines": [[text, confidence], ...], "error": None} or the error it raised."""
    try:
        found = engine.ocr(read_image(path, channel_order), cls=False)[0]  # None: nothing kept
        lines = [[str(res[1][0]), float(res[1][1])] for res in found] if found else []
        return {"lines": lines, "error": None}
    except Exception as err:  # RTDMD catches everything here and scores the image 0
        return {"lines": [], "error": f"{type(err).__name__}: {err}"}


def write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--images", default="", help="folder of NNNNNN.png files; empty = only build the engine")
    parser.add_argument("--model-home", default="", help="PaddleOCR BASE_DIR (whl/det/en, whl/rec/en, whl/cls)")
    parser.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb")
    args = parser.parse_args(argv)
    paddleocr, module, engine = build_engine(args.model_home)
    out = {"runner": 1, "engine": describe(paddleocr, module, engine), "channel_order": args.channel_order}
    if args.images:
        names = sorted(n for n in os.listdir(args.images) if n.endswith(".png"))
        out["images"] = {n: read_texts(engine, os.path.join(args.images, n), args.channel_order) for n in names}
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
