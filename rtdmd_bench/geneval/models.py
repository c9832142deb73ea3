"""GenEval's models: an instance detector and a CLIP colour classifier.

Official GenEval runs mmdet's Mask2Former Swin-S (COCO instance) and OpenAI CLIP ViT-L/14
(PROTOCOLS.md). mmdet 2.x needs CUDA-only builds, so the detector here is transformers'
`Mask2FormerForUniversalSegmentation` (hub `facebook/mask2former-swin-small-coco-instance`)
with our own post-processing that follows mmdet's Mask2Former instance head rather than
transformers' non-overlapping panoptic-style one: top-100 (query, class) pairs by class
probability, score = class prob x mean mask probability inside the binary mask, box = the
mask's bounding box. Everything is tensors in [0, 1]; nothing is written to disk.

The colour CLIP is OpenAI's ViT-L/14, which OpenAI trained with QuickGELU. The two references
build it differently: GenEval's scorer (open_clip 2.20, `pretrained="openai"`) gets QuickGELU;
RTDMD's (open_clip 3.3.0, `("ViT-L-14", "openai")`) gets plain GELU, so its published GenEval
figures and its training reward used GELU. `open_clip_vit_l14` therefore takes the activation
as an argument and builds it whatever the weights' source (hub tag or local file).
Both references run the colour CLIP under fp16 autocast on CUDA (clip_benchmark's default);
`resolve_clip_precision` makes that the default on CUDA and keeps fp32 on the CPU.

Models follow the images' device (moved on first use there), as the reward models do.

Stand-ins (`tiny_mask2former`, `tiny_clip`) are the same classes with tiny random configs,
seeded, built by the same functions, so the real code path runs on CPU; a suite using them
must be labelled stand-in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import CLASSES, COLORS, Detection, clip_preprocess, masked_crop

DETECTOR_HUB_ID = "facebook/mask2former-swin-small-coco-instance"
CLIP_HUB_NOTE = "open_clip ViT-L-14 'openai' (hub timm/vit_large_patch14_clip_224.openai)"
# mmdet/detectron2 Mask2Former test pipeline: shorter side 800, longer <= 1333, ImageNet
# mean/std on 0-255 pixels, padding to a multiple of 32.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# COCO spellings found in detector configs -> GenEval spellings (object_names.txt).
ALIASES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv",
    "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier",
}
COLOUR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")

ClipActivation = Literal["quick_gelu", "gelu"]
"""MLP activation of the colour CLIP: "quick_gelu" (x * sigmoid(1.702 x), as OpenAI trained the
weights; GenEval's scorer) or "gelu" (erf GELU; RTDMD's scorer under open_clip 3.3.0)."""
ClipPrecision = Literal["auto", "fp32", "fp16-autocast"]
"""Colour CLIP compute: "auto" = fp16 autocast on CUDA (official), fp32 elsewhere."""
TINY_CLIP_ARCH = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                      text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@dataclass(frozen=True)
class DetectorSettings:
    """Pre- and post-processing of the Mask2Former detector."""

    short_side: int = 800
    """Resize so the shorter image side is this many pixels (mmdet test pipeline)."""
    max_side: int = 1333
    """... unless the longer side would exceed this."""
    size_divisor: int = 32
    """Pad the resized image to a multiple of this."""
    max_per_image: int = 100
    """(query, class) pairs kept per image before thresholds (mmdet max_per_image)."""


def geneval_labels(id2label: dict[int, str]) -> tuple[str, ...]:
    """The detector's 80 labels in GenEval spelling, checked against COCO order."""
    names = [str(id2label[i]).replace("_", " ").replace("-", " ").strip().lower() for i in sorted(id2label)]
    names = [ALIASES.get(n, n) for n in names]
    if len(names) != len(CLASSES) or any(a != b for a, b in zip(names, CLASSES)):
        wrong = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(names, CLASSES)) if a != b]
        raise UserError(
            f"the detector's labels are not the 80 COCO classes in order (got {len(names)} labels; "
            f"mismatches: {', '.join(wrong[:5]) or 'count'}); use a COCO instance checkpoint such as "
            f"{DETECTOR_HUB_ID}")
    return tuple(names)


def resize_for_detector(images: Tensor, s: DetectorSettings) -> tuple[Tensor, tuple[int, int]]:
    """(B, 3, H, W) in [0, 1] -> normalised, padded pixel_values (B, 3, Hp, Wp) and the resized
    (unpadded) size (h, w)."""
    H, W = images.shape[-2:]
    scale = min(s.short_side / min(H, W), s.max_side / max(H, W))
    h, w = int(H * scale + 0.5), int(W * scale + 0.5)  # mmcv rescale_size rounding
    # mmcv resizes with cv2 INTER_LINEAR: half-pixel bilinear without antialiasing.
    x = F.interpolate(images.float() * 255, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    hp, wp = -(-h // s.size_divisor) * s.size_divisor, -(-w // s.size_divisor) * s.size_divisor
    return F.pad(x, (0, wp - w, 0, hp - h)), (h, w)  # zero padding after normalisation


def mask_boxes(masks: Tensor) -> Tensor:
    """mmdet mask2bbox: (N, H, W) bool -> (N, 4) float boxes (x0, y0, x1 + 1, y1 + 1);
    all-zero boxes for empty masks."""
    boxes = torch.zeros(masks.shape[0], 4)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m.any(dim=1)).flatten(), torch.nonzero(m.any(dim=0)).flatten()
        if len(xs):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def detections_from_outputs(class_logits: Tensor, mask_logits: Tensor, labels: Sequence[str],
                            padded: tuple[int, int], resized: tuple[int, int], out_size: tuple[int, int],
                            max_per_image: int = 100) -> list[Detection]:
    """mmdet-style Mask2Former instance post-processing for one image.

    class_logits: (Q, C + 1) (last = no object); mask_logits: (Q, h/4, w/4) at the padded
    input; padded/resized: sizes of the network input with and without padding; out_size:
    the original image (H, W). Returns detections sorted by score, masks at (H, W)."""
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)[:, :num_classes]  # (Q, C)
    k = min(max_per_image, probs.numel())
    cls_scores, flat = probs.flatten().topk(k)  # (k,)
    query, label = flat // num_classes, flat % num_classes
    m = F.interpolate(mask_logits[query][None], size=padded, mode="bilinear", align_corners=False)
    m = m[..., : resized[0], : resized[1]]
    m = F.interpolate(m, size=out_size, mode="bilinear", align_corners=False)[0]  # (k, H, W)
    binary = m > 0
    prob = m.sigmoid()
    mask_scores = (prob * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = cls_scores * mask_scores  # (k,)
    boxes = mask_boxes(binary)
    order = scores.argsort(descending=True)
    return [Detection(labels[int(label[i])], float(scores[i]), tuple(boxes[i].tolist()), binary[i])
            for i in order.tolist()]


class Mask2FormerDetector:
    """`detect(images (B, 3, H, W) in [0, 1]) -> per image a list of Detection`."""

    def __init__(self, model: nn.Module, settings: DetectorSettings = DetectorSettings(), batch_size: int = 4):
        self.model = model.eval()
        self.settings = settings
        self.batch_size = batch_size
        self.labels = geneval_labels(model.config.id2label)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[list[Detection]]:
        """Runs on the images' device (fp32, as mmdet's inference); detections on the CPU."""
        follow_device(self.model, images.device)
        out: list[list[Detection]] = []
        for chunk in images.split(self.batch_size):
            pixels, resized = resize_for_detector(chunk, self.settings)
            pred = self.model(pixel_values=pixels)
            for c, m in zip(pred.class_queries_logits.float().cpu(), pred.masks_queries_logits.float().cpu()):
                out.append(detections_from_outputs(c, m, self.labels, tuple(pixels.shape[-2:]),
                                                   resized, tuple(chunk.shape[-2:]), self.settings.max_per_image))
        return out


def follow_device(model: nn.Module, device: torch.device) -> None:
    """Move `model` to `device` if it is elsewhere (cached models follow their inputs)."""
    if next(model.parameters()).device != device:
        model.to(device)


def resolve_clip_precision(setting: ClipPrecision, device_type: str) -> Literal["fp32", "fp16-autocast"]:
    """The colour CLIP's compute precision on a device type ("cuda", "cpu", ...).

    "auto": fp16 autocast on CUDA, as both references run it (clip_benchmark's
    `run_classification` / `zero_shot_classifier` with amp=True; the model itself is fp32),
    fp32 elsewhere (the official scorer needs CUDA; on the CPU fp32 is the faithful choice).
    "fp16-autocast" off CUDA is refused rather than silently run in another precision."""
    if setting == "auto":
        return "fp16-autocast" if device_type == "cuda" else "fp32"
    if setting == "fp16-autocast" and device_type != "cuda":
        raise UserError(f"clip_precision='fp16-autocast' needs CUDA, but the colour CLIP runs on {device_type!r}; "
                        f"use clip_precision=auto or fp32")
    if setting not in ("fp32", "fp16-autocast"):
        raise UserError(f"unknown clip_precision {setting!r}; valid: auto, fp32, fp16-autocast")
    return setting


def load_mask2former(source: str, local_only: bool) -> nn.Module:
    """The COCO instance Mask2Former from a hub id or a local folder (transformers loads
    safetensors, or .bin with weights_only=True)."""
    from transformers import Mask2FormerForUniversalSegmentation

    try:
        return Mask2FormerForUniversalSegmentation.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise UserError(
            f"GenEval detector weights not found at {source!r} ({type(err).__name__}). Download them with "
            f"`huggingface-cli download {DETECTOR_HUB_ID} --local-dir DIR` and pass "
            f"`--set suite.detector_path=DIR`, or allow hub downloads (unset HF_HUB_OFFLINE). "
            f"For a CI run without weights use `--set suite.models=stand-in`.") from err


def tiny_mask2former(seed: int = 0, image_size: int = 64) -> nn.Module:
    """A randomly initialised Mask2Former (Swin backbone) with GenEval's 80 labels: a stand-in."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(image_size=image_size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                            num_attention_heads=2, num_queries=8, use_pretrained_backbone=False,
                            num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)),
                            label2id={c: i for i, c in enumerate(CLASSES)})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Mask2FormerForUniversalSegmentation(cfg).eval()


class ClipColourClassifier:
    """Zero-shot colour of each detection (evaluate_images.py `color_classification`):
    per class, a text classifier over the 10 colours from the 3 templates (each embedding
    L2-normalised, averaged, renormalised); the image is the masked crop on #999; logits
    100 * image_features @ classifier, argmax. Precision per `resolve_clip_precision`."""

    def __init__(self, model: nn.Module, tokenizer: Any, image_size: int = 224,
                 mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                 std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711), precision: ClipPrecision = "auto"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.precision = precision
        self._text: dict[tuple[str, str, str], Tensor] = {}

    def compute(self, device: torch.device) -> tuple[str, contextlib.AbstractContextManager]:
        """(resolved precision, the context to run the CLIP in) on `device`."""
        precision = resolve_clip_precision(self.precision, device.type)
        if precision == "fp16-autocast":
            return precision, torch.autocast("cuda", dtype=torch.float16)
        return precision, contextlib.nullcontext()

    @torch.no_grad()
    def text_classifier(self, cls: str) -> Tensor:
        """(D, 10) unit columns, cached per (class, device, precision)."""
        device = next(self.model.parameters()).device
        precision, context = self.compute(device)
        key = (cls, str(device), precision)
        if key not in self._text:
            columns = []
            with context:
                for colour in COLORS:
                    texts = [t.format(c=colour, cls=cls) for t in COLOUR_TEMPLATES]
                    emb = self.model.encode_text(self.tokenizer(texts).to(device)).float()
                    emb = F.normalize(emb, dim=-1)  # (3, D)
                    columns.append(F.normalize(emb.mean(0), dim=-1))
            self._text[key] = torch.stack(columns, dim=1)
        return self._text[key]

    @torch.no_grad()
    def __call__(self, image: Tensor, detections: Sequence[Detection], cls: str) -> list[str]:
        if not detections:
            return []
        follow_device(self.model, image.device)
        crops = torch.stack([clip_preprocess(masked_crop(image, d), self.image_size, self.mean, self.std)
                             for d in detections]).to(image.device)  # (N, 3, S, S)
        text = self.text_classifier(cls)  # (D, 10)
        _, context = self.compute(image.device)
        with context:
            feats = F.normalize(self.model.encode_image(crops).float(), dim=-1)  # (N, D)
            logits = 100.0 * feats @ text  # (N, 10); fp16 under autocast, as officially
        return [COLORS[i] for i in logits.float().argmax(1).tolist()]


def open_clip_vit_l14(pretrained: str, activation: ClipActivation, **arch: Any) -> nn.Module:
    """open_clip's "ViT-L-14" with the given MLP activation whatever `pretrained` is: the
    "openai" hub tag, a local checkpoint file, or "" for a random initialisation. open_clip 3.x
    alone would give GELU for the tag and whatever the model name says for a file.
    `arch` overrides the architecture (tiny stand-ins and tests build through this same call)."""
    import open_clip

    return open_clip.create_model("ViT-L-14", pretrained=pretrained or None, require_pretrained=bool(pretrained),
                                  force_quick_gelu=activation == "quick_gelu", **arch)


def load_clip(pretrained: str, activation: ClipActivation, precision: ClipPrecision = "auto") -> ClipColourClassifier:
    """OpenAI CLIP ViT-L/14 colour classifier: `pretrained` is the tag "openai" (hub) or a local
    checkpoint file (loaded by open_clip with weights_only=True)."""
    import open_clip

    try:
        model = open_clip_vit_l14(pretrained, activation)
    except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors offline
        raise UserError(
            f"CLIP ViT-L/14 weights for GenEval's colour classifier could not be loaded from {pretrained!r} "
            f"({type(err).__name__}: {err}). Provide {CLIP_HUB_NOTE} as a local file with "
            f"`--set suite.clip_path=FILE`, or allow hub downloads.") from err
    return ClipColourClassifier(model, open_clip.get_tokenizer("ViT-L-14"), precision=precision)


def tiny_clip(seed: int, activation: ClipActivation, precision: ClipPrecision = "auto") -> ClipColourClassifier:
    """A randomly initialised tiny open_clip CLIP (real tokenizer) built like the real one: a stand-in."""
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip_vit_l14("", activation, **TINY_CLIP_ARCH)
    return ClipColourClassifier(model, open_clip.get_tokenizer("ViT-L-14"), image_size=32, precision=precision)


ModelSource = Literal["official", "stand-in"]
"""Which models score: "official" (Mask2Former Swin-S COCO + OpenAI CLIP ViT-L/14, from a local
path or the hub) or "stand-in" (the tiny random ones above; results must say so)."""


def build_detector(models: ModelSource, detector_path: str, allow_download: bool, batch_size: int,
                   stand_in_seed: int) -> Mask2FormerDetector:
    """GenEval's detector as the suite and the reward configure it: `detector_path` (a local
    folder, never downloaded) or the hub id (only when `allow_download`); the stand-in runs at a
    64-pixel short side, which its 64-pixel Swin was built for."""
    if models == "stand-in":
        settings = DetectorSettings(short_side=64, max_side=107)
        return Mask2FormerDetector(tiny_mask2former(stand_in_seed), settings, batch_size)
    source = detector_path or DETECTOR_HUB_ID
    local_only = bool(detector_path) or not allow_download
    return Mask2FormerDetector(load_mask2former(source, local_only), batch_size=batch_size)


def build_colour_classifier(models: ModelSource, clip_path: str, allow_download: bool, stand_in_seed: int,
                            activation: ClipActivation, precision: ClipPrecision = "auto") -> ClipColourClassifier:
    """GenEval's colour classifier with the given MLP activation (the suite: QuickGELU; the
    reward: RTDMD's GELU unless switched): `clip_path` (a local checkpoint file) or open_clip's
    "openai" weights from the hub (only when `allow_download`)."""
    if models == "stand-in":
        return tiny_clip(stand_in_seed, activation, precision)
    if not clip_path and not allow_download:
        raise UserError("GenEval's colour classifier needs OpenAI CLIP ViT-L/14: set "
                        "--set suite.clip_path=FILE or allow downloads (suite.allow_download=true)")
    return load_clip(clip_path or "openai", activation, precision)
