"""FID suites through clean-fid (PROTOCOLS.md "FID").

`fid`: samples against a folder of reference images (DMD2: COCO-2014 10k prompts against
real images at 512 px), `clean-fid.compute_fid(dir1, dir2, mode="clean", device="cpu",
custom_feat_extractor=...)`. `fid-t`: samples against the teacher's samples on the same
prompts and seeds (`ctx.teacher_samples()`); no primary definition of FID-SD/FID-T was
found, so this is the suite's own definition and its output says so.

Features: the official clean-fid Inception (TorchScript `inception-2015-12-05.pt`, loaded by
clean-fid itself from a local folder: we cannot download it) or a tiny fixed random stand-in
(labelled). Full-rank FID needs more images than feature dimensions (2048 for Inception):
on small sets set `feature_dim` to project onto a fixed random orthonormal basis; the
version and output say so.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import NonNegativeInt, PositiveInt
from suites import prompt_sets
from suites.preference import seed_record

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FIDT_NOTE = ("FID-T: FID of the samples against the teacher's samples on the same prompts and seeds; "
             "no primary definition was found in the papers, this is the suite's own")

FEATURE_SEED = 0  # fixed, so projected/stand-in features are identical across runs and seeds
FeatureFn = Callable[[Tensor], Tensor]  # (B, 3, 299, 299) in [0, 255] -> (B, D)


def stand_in_features(dim: int = 16, seed: int = 0) -> FeatureFn:
    """Fixed random features (a stand-in for Inception): 8x8 average-pooled pixels (192 values)
    projected by a seeded Gaussian matrix, then tanh. Deterministic; not a perceptual metric."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(3 * 8 * 8, dim, generator=gen) / (3 * 8 * 8) ** 0.5  # (192, D)

    def features(x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(x.float() / 127.5 - 1, 8).flatten(1)  # (B, 192)
        return torch.tanh(pooled @ weight)  # (B, D)

    return features


def inception_features(folder: str) -> FeatureFn:
    """clean-fid's official Inception from a local folder holding inception-2015-12-05.pt."""
    path = Path(folder).expanduser() if folder else None
    if path is None or not (path / INCEPTION_FILE).is_file():
        raise UserError(
            f"clean-fid's Inception weights are not available locally: download {INCEPTION_URL} into a "
            f"folder and pass `--set suite.inception_path=FOLDER` (for a CI run without weights use "
            f"`--set suite.features=stand-in`)")
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(path), download=False).eval()

    def features(x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x)  # (B, 2048)

    return features


def projected(fn: FeatureFn, in_dim: int, out_dim: int, seed: int = 0) -> FeatureFn:
    """Compose with a fixed seeded random orthonormal projection (in_dim -> out_dim)."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(in_dim, out_dim, generator=gen))  # (in, out) orthonormal columns

    def features(x: Tensor) -> Tensor:
        return fn(x).float() @ basis

    return features


def save_pngs(images: Tensor, folder: Path) -> None:
    """(N, 3, H, W) in [0, 1] -> folder/00000.png ... (8-bit, as the sample cache stores them)."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i, a in enumerate(arr):
        Image.fromarray(np.ascontiguousarray(a)).save(folder / f"{i:05d}.png")


def clean_fid(dir1: Path, dir2: Path, fn: FeatureFn, batch_size: int) -> float:
    from cleanfid import fid as cleanfid

    score = cleanfid.compute_fid(str(dir1), str(dir2), mode="clean", device=torch.device("cpu"),
                                 custom_feat_extractor=fn, num_workers=0, batch_size=batch_size,
                                 verbose=False, use_dataparallel=False)
    return float(score)


@dataclass
class FeatureChoice:
    """What features were used, for the output."""

    fn: FeatureFn
    dim: int
    label: str
    stand_in: bool


def choose_features(features: str, inception_path: str, feature_dim: int, seed: int) -> FeatureChoice:
    if features == "stand-in":
        dim = feature_dim or 16
        return FeatureChoice(stand_in_features(dim, seed), dim, f"stand-in random features (d={dim})", True)
    fn = inception_features(inception_path)
    if feature_dim:
        return FeatureChoice(projected(fn, 2048, feature_dim, seed), feature_dim,
                             f"clean-fid Inception pool3 projected to d={feature_dim} (fixed random basis, seed {seed})", False)
    return FeatureChoice(fn, 2048, "clean-fid Inception pool3 (d=2048)", False)


class _FIDBase:
    """What `fid` and `fid-t` share: features, naming, the FID computation and its notes."""

    base_name = ""
    images_per_prompt = 1
    higher_is_better = {"fid": False}

    def __init__(self, cfg: Any = None):
        self.cfg = cfg or self.Config()  # type: ignore[attr-defined]
        if self.cfg.feature_dim < 0:
            raise UserError("suite.feature_dim must be >= 0 (0 = full Inception features)")
        stand_in = self.cfg.features == "stand-in"
        self.name = f"{self.base_name}[stand-in]" if stand_in else self.base_name
        dims = self.cfg.feature_dim or (16 if stand_in else 2048)
        self.version = f"{self.base_name}/clean-{'stand-in' if stand_in else 'inception'}-d{dims}-1"
        self.seed = self.cfg.seed
        self._features: FeatureChoice | None = None
        self._prompts: list[str] | None = None

    def features(self) -> FeatureChoice:
        if self._features is None:
            self._features = choose_features(self.cfg.features, self.cfg.inception_path, self.cfg.feature_dim,
                                             FEATURE_SEED)
        return self._features

    def prepare(self) -> None:
        """Before any image is generated: the feature extractor loaded (Inception from its folder)."""
        self.features()

    def fid_between(self, images: Tensor, reference_dir: Path | None, reference: Tensor | None,
                    ctx: Any = None) -> dict[str, Any]:
        choice = self.features()
        with tempfile.TemporaryDirectory(prefix="rtdmd-fid-") as tmp:
            samples = Path(tmp) / "samples"
            save_pngs(images, samples)
            if reference is not None:
                reference_dir = Path(tmp) / "reference"
                save_pngs(reference, reference_dir)
            n_ref = sum(1 for p in Path(reference_dir).rglob("*") if p.is_file())
            value = clean_fid(samples, Path(reference_dir), choice.fn, self.cfg.batch_size)
        full_rank = min(images.shape[0], n_ref) > choice.dim
        out = {"fid": value, "suite": self.name, "version": self.version, "features": choice.label,
               "feature_dim": choice.dim, "n_images": int(images.shape[0]), "n_reference": n_ref,
               "full_rank": full_rank, **seed_record(self.seed, ctx), "images_per_prompt": 1}
        notes = [out.pop("seed_note", "")] if "seed_note" in out else []
        if choice.stand_in:
            notes.append("STAND-IN features: the number tests the code path only and is not FID")
        if not full_rank:
            notes.append(f"fewer images than feature dimensions ({choice.dim}): the covariance is rank-deficient; "
                         "use more images or a smaller suite.feature_dim")
        if choice.dim != 2048 and not choice.stand_in:
            notes.append("low-dimensional projected Inception features: not comparable with published FID")
        out["note"] = "; ".join(notes)
        return out

    def prompts(self) -> list[str]:
        if self._prompts is None:
            prompts = prompt_sets.load_prompts(self.prompt_file())
            self._prompts = prompts[: self.cfg.limit] if self.cfg.limit > 0 else prompts
        return self._prompts

    def prompt_file(self) -> Path:
        raise NotImplementedError


class FID(_FIDBase):
    """clean-fid FID of the samples against a folder of reference images."""

    @dataclass
    class Config:
        reference: str = ""
        """Folder of reference images (e.g. COCO-2014 val images at 512 px for DMD2's protocol); required."""
        prompts: str = ""
        """Prompt file (.txt, one caption per line, aligned with the reference set); required."""
        features: Literal["inception", "stand-in"] = "inception"
        """"inception": clean-fid's Inception (local weights); "stand-in": tiny random features (CI)."""
        inception_path: str = ""
        """Folder holding inception-2015-12-05.pt (clean-fid's TorchScript Inception)."""
        feature_dim: NonNegativeInt = 0
        """0 = full features; >0 = project onto this many dims (needed when sets are smaller than 2048)."""
        batch_size: PositiveInt = 32
        """Images per feature-extractor call."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts (0 = all)."""
        seed: int = 0
        """Sampling seed of the protocol (recorded; the engine's --seed draws the images)."""

    base_name = "fid"

    def prompt_file(self) -> Path:
        if not self.cfg.prompts:
            raise UserError("the fid suite needs a caption file: pass --set suite.prompts=PATH (e.g. 10k COCO-2014 "
                            "captions as DMD2 used) and `--set suite.reference=FOLDER` with the real images")
        return prompt_sets.resolve("fid", self.cfg.prompts)

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        folder = Path(self.cfg.reference).expanduser() if self.cfg.reference else None
        if folder is None or not folder.is_dir():
            raise UserError(f"fid needs a folder of reference images: set `--set suite.reference=FOLDER` "
                            f"(got {self.cfg.reference!r})")
        return self.fid_between(images, folder, None, ctx)


class FIDT(_FIDBase):
    """FID-T: FID of the samples against the teacher's samples on the same prompts and seeds."""

    @dataclass
    class Config:
        prompts: str = ""
        """Prompt file; empty = RTDMD's DrawBench test.txt (verified download)."""
        features: Literal["inception", "stand-in"] = "inception"
        """"inception": clean-fid's Inception (local weights); "stand-in": tiny random features (CI)."""
        inception_path: str = ""
        """Folder holding inception-2015-12-05.pt (clean-fid's TorchScript Inception)."""
        feature_dim: NonNegativeInt = 0
        """0 = full features; >0 = project onto this many dims (needed when sets are smaller than 2048)."""
        batch_size: PositiveInt = 32
        """Images per feature-extractor call."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts (0 = all)."""
        seed: int = 42
        """Sampling seed shared by student and teacher (recorded; the engine's --seed draws the images)."""

    base_name = "fid-t"

    def prompt_file(self) -> Path:
        return prompt_sets.resolve("drawbench", self.cfg.prompts)

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        teacher = getattr(ctx, "teacher_samples", None)
        if teacher is None:
            raise UserError("fid-t needs the teacher's samples on the same prompts and seeds: run it through "
                            "`rtdmd-bench eval` with a run whose base has a teacher")
        reference = teacher()
        if tuple(reference.shape) != tuple(images.shape):
            raise UserError(f"fid-t: teacher samples {tuple(reference.shape)} do not match the student's "
                            f"{tuple(images.shape)}; they must cover the same prompts and seeds")
        return {**self.fid_between(images, None, reference, ctx), "definition": FIDT_NOTE}
