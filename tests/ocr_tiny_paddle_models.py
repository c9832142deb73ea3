"""Export tiny PaddleOCR-compatible inference models into a model folder in PaddleOCR's layout
(whl/det/en/en_PP-OCRv3_det_infer, whl/rec/en/en_PP-OCRv4_rec_infer, whl/cls/...), so the shipped
runner can run the REAL paddleocr 2.9.1 pipeline offline (detector -> crops -> recogniser -> CTC
decoding -> drop score) without Baidu's model files. Run it with the OCR environment's python:

    OCR_PYTHON tests/ocr_tiny_paddle_models.py MODEL_FOLDER

The detector marks dark pixels (smeared over 9x9 so letters join into words) as text; the
recogniser is a seeded random projection to PaddleOCR's 97 English classes (blank, en_dict.txt's
95 characters, space) with sharp logits, so it reads confident nonsense. The numbers mean nothing:
the point is the real engine's call path and result format. The angle classifier is never
loaded (use_angle_cls=False); PaddleOCR only checks that its files exist, so it gets the
recogniser's files.
"""

from __future__ import annotations

import os
import shutil
import sys

import paddle
from paddle import nn
from paddle.static import InputSpec

CLASSES = 97  # CTC blank + 95 printable ASCII + space (use_space_char)
MODELS = {"det": "whl/det/en/en_PP-OCRv3_det_infer", "rec": "whl/rec/en/en_PP-OCRv4_rec_infer",
          "cls": "whl/cls/ch_ppocr_mobile_v2.0_cls_infer"}


class Detector(nn.Layer):
    """(N, 3, H, W) normalised (ImageNet mean/std) -> (N, 1, H, W) text probability."""

    def __init__(self):
        super().__init__()
        self.smear = nn.AvgPool2D(9, stride=1, padding=4)
        # a parameter, so the export writes the inference.pdiparams PaddleOCR requires
        self.sharpness = self.create_parameter([1], default_initializer=nn.initializer.Constant(30.0))

    def forward(self, x):
        dark = paddle.nn.functional.sigmoid(-4.0 * (x.mean(axis=1, keepdim=True) + 0.5))  # ~1 on dark strokes
        return paddle.nn.functional.sigmoid(self.sharpness * (self.smear(dark) - 0.15))


class Recogniser(nn.Layer):
    """(N, 3, 48, W) -> (N, W / 8, 97) class probabilities."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2D((48, 8), stride=(48, 8))
        self.proj = nn.Linear(3, CLASSES)

    def forward(self, x):
        cols = self.pool(x).squeeze(2).transpose([0, 2, 1])  # (N, W/8, 3)
        return paddle.nn.functional.softmax(40.0 * self.proj(cols), axis=-1)


def export(layer: nn.Layer, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    layer.eval()
    prefix = os.path.join(folder, "inference")
    paddle.jit.save(layer, prefix, input_spec=[InputSpec([None, 3, None, None], "float32", "x")])


def main(root: str) -> None:
    paddle.seed(0)
    export(Detector(), os.path.join(root, MODELS["det"]))
    export(Recogniser(), os.path.join(root, MODELS["rec"]))
    os.makedirs(os.path.join(root, MODELS["cls"]), exist_ok=True)
    for name in ("inference.pdmodel", "inference.pdiparams"):
        shutil.copy(os.path.join(root, MODELS["rec"], name), os.path.join(root, MODELS["cls"], name))


if __name__ == "__main__":
    main(sys.argv[1])
