"""Pictures of samples: 8-bit pixels, one labelled grid (a row per prompt, the prompt written on
its left), a scatter plot of 2-D points; every file written atomically (rtdmd_bench/files.py).

Tensors and strings in, files out: `rtdmd-bench sample` writes its grid and scatter plot with
these, and anything else that shows samples (a tracker's sample grids) may.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from rtdmd_bench.files import atomic_path

GRID_PADDING = 2
"""Pixels between the cells of a grid and around them (torchvision's `make_grid` default, so the
image part of a grid is `make_grid(cells, nrow=k, padding=2, pad_value=1)`)."""
LABEL_WIDTH = 192
"""Width in pixels of the grid's label column (about 40 characters of Pillow's default font a line)."""
MIN_CELL = 64
"""A grid cell is at least this many pixels on its longer side: smaller images (digits' 8x8) are
enlarged by a whole factor, nearest neighbour, so each pixel stays a sharp square."""
MAX_CELL = 256
"""A grid cell is at most this many pixels on its longer side: larger images (1024 px) are reduced
by a whole factor (box average), so a grid of many prompts stays a viewable file."""
BACKGROUND = (255, 255, 255)


def to_pixels(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1], C = 1 (grey) or 3 (RGB) -> (B, H, W, 3) uint8: round(255 x) after
    clamping, as the project's other PNG writers round (suites/fid.py, suites/geneval.py)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def cell_scale(height: int, width: int) -> tuple[int, int]:
    """(up, down): whole factors that bring the longer side into [MIN_CELL, MAX_CELL] (one is 1)."""
    side = max(height, width)
    if side < MIN_CELL:
        return math.ceil(MIN_CELL / side), 1
    if side > MAX_CELL:
        return 1, math.ceil(side / MAX_CELL)
    return 1, 1


def grid_cell(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 -> the image as a grid shows it (`cell_scale`)."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    up, down = cell_scale(*pixels.shape[:2])
    if up > 1:
        return image.resize((image.width * up, image.height * up), Image.Resampling.NEAREST)
    return image.reduce(down) if down > 1 else image


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a label longer than `max_lines` ends in an ellipsis (the
    whole prompt is in the manifest)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + " …"
    return lines


def _label(text: str, height: int) -> Image.Image:
    """A LABEL_WIDTH x height white strip with `text` wrapped in it, vertically centred; drawn on its
    own strip so that a long word is cut at the strip's edge instead of running into the images."""
    strip = Image.new("RGB", (LABEL_WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    line_height = font.getbbox("Ag")[3] + 2
    lines = _wrap(draw, text, font, LABEL_WIDTH - 8, max(1, height // line_height))
    top = max(0, (height - line_height * len(lines)) // 2)
    for n, line in enumerate(lines):
        draw.text((4, top + n * line_height), line, fill=(0, 0, 0), font=font)
    return strip


def labelled_grid(rows: Sequence[np.ndarray], labels: Sequence[str]) -> Image.Image:
    """One row per entry of `rows` ((k, H, W, 3) uint8, the same k, H, W in every row), its label on
    the left. Size: (LABEL_WIDTH + k (w + p) + p) x (len(rows) (h + p) + p) with (h, w) the cell size
    and p = GRID_PADDING; the cells sit where torchvision's make_grid(nrow=k) puts them."""
    if not rows or len(rows) != len(labels):
        raise ValueError(f"labelled_grid needs one label per row, got {len(rows)} rows and {len(labels)} labels")
    cells = [[grid_cell(p) for p in row] for row in rows]
    k, (w, h), p = len(cells[0]), cells[0][0].size, GRID_PADDING
    if any(len(r) != k or any(c.size != (w, h) for c in r) for r in cells):
        raise ValueError("labelled_grid needs the same number and size of images in every row")
    grid = Image.new("RGB", (LABEL_WIDTH + k * (w + p) + p, len(cells) * (h + p) + p), BACKGROUND)
    for i, (row, label) in enumerate(zip(cells, labels)):
        y = p + i * (h + p)
        grid.paste(_label(label, h), (0, y))
        for j, cell in enumerate(row):
            grid.paste(cell, (LABEL_WIDTH + p + j * (w + p), y))
    return grid


def save_png(image: Image.Image | np.ndarray, path: str | Path) -> Path:
    """Write an image ((H, W, 3) uint8 array or PIL image) as a PNG, atomically."""
    image = Image.fromarray(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def scatter_figure(points: Sequence[Tensor], labels: Sequence[str], title: str = "", inches: float = 6.4) -> object:
    """A matplotlib figure (Agg, not pyplot's) of 2-D points, one colour per entry ((k, 2) each)
    with its label in the legend, equal axes."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(points) != len(labels):
        raise ValueError(f"a scatter plot needs one label per point set, got {len(points)} and {len(labels)}")
    cmap = colormaps["tab10" if len(points) <= 10 else "tab20" if len(points) <= 20 else "hsv"]
    fig = Figure(figsize=(inches, inches))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (xy, label) in enumerate(zip(points, labels)):
        xy = xy.detach().float().cpu().numpy()
        short = label if len(label) <= 40 else label[:39] + "…"
        colour = cmap(i % cmap.N if cmap.N < 256 else i / max(1, len(points)))
        ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.7, color=colour, label=short, linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize=7 if len(points) <= 10 else 5, markerscale=1.5)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def scatter_pixels(points: Sequence[Tensor], labels: Sequence[str], size_px: int = 512) -> np.ndarray:
    """(size_px, size_px, 3) uint8 picture of `scatter_figure` (for trackers)."""
    fig = scatter_figure(points, labels, inches=size_px / 100)
    fig.set_dpi(100)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_scatter(points: Sequence[Tensor], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """`scatter_figure` written as a PNG, atomically."""
    fig = scatter_figure(points, labels, title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
