"""Attention heat-maps over the study's images, as one PNG (`cxr predict --explain`).

The decoder's cross-attention covers both views' grid regions: the first half of each row is the
frontal view's side x side grid, the second half the lateral's. Each map is upsampled smoothly,
coloured with the same inferno-like ramp as the HTML report, and blended over the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .assets import ramp_anchors

RAMP = np.array(ramp_anchors(), dtype=np.float64)
PANEL = 192
LABEL_WIDTH = 150


def colourise(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of the ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(RAMP) - 1)
    low = np.minimum(np.floor(x).astype(int), len(RAMP) - 2)
    frac = (x - low)[..., None]
    return (RAMP[low] + frac * (RAMP[low + 1] - RAMP[low])).round().astype(np.uint8)


def grid_side(regions: int) -> int | None:
    """The side of a square grid of `regions` regions; None if they don't make a square."""
    side = int(round(regions ** 0.5))
    return side if side * side == regions else None


def view_maps(weights: np.ndarray) -> np.ndarray:
    """One attention row (2 * side * side,) -> (2, side, side), frontal then lateral."""
    regions = weights.shape[-1] // 2
    side = grid_side(regions)
    if side is None:
        raise ValueError(f"{regions} regions per view are not a square grid")
    return weights.reshape(2, side, side)


def overlay(image, grid: np.ndarray, peak: float, size: int = PANEL):
    """The image (PIL, any mode) with a `grid` heat-map blended over it, as a size x size RGB."""
    from PIL import Image

    base = image.convert("RGB").resize((size, size))
    level = np.asarray(Image.fromarray((grid / max(peak, 1e-12) * 255).astype(np.uint8))
                       .resize((size, size), Image.BILINEAR), dtype=np.float64) / 255.0
    heat = colourise(level).astype(np.float64)
    alpha = (0.1 + 0.68 * level)[..., None]  # as the report page: 25 + 175 * v of 255
    blended = np.asarray(base, dtype=np.float64) * (1 - alpha) + heat * alpha
    return Image.fromarray(blended.round().astype(np.uint8))


def explain_figure(images: Sequence, words: Sequence[str], maps: np.ndarray):
    """A PNG-ready figure: a row for all words (mean attention), then one row per word, with
    the frontal and lateral views side by side. `maps` is (len(words) + 1, 2 * regions); its
    last row (the end token) is left out. A missing lateral view shows as a blank panel."""
    from PIL import Image, ImageDraw

    rows = [("all words", maps[: max(len(words), 1)].mean(axis=0))]
    rows += [(word, maps[i]) for i, word in enumerate(words)]
    figure = Image.new("RGB", (LABEL_WIDTH + 2 * PANEL + 12, 24 + len(rows) * (PANEL + 6)),
                       "white")
    draw = ImageDraw.Draw(figure)
    draw.text((LABEL_WIDTH, 6), "frontal", fill="black")
    draw.text((LABEL_WIDTH + PANEL + 6, 6), "lateral", fill="black")
    for r, (label, weights) in enumerate(rows):
        y = 24 + r * (PANEL + 6)
        grids = view_maps(weights)
        peak = float(grids.max())
        draw.text((6, y + PANEL // 2 - 6), label[:22], fill="black")
        for v in range(2):
            x = LABEL_WIDTH + v * (PANEL + 6)
            if v < len(images):
                figure.paste(overlay(images[v], grids[v], peak), (x, y))
            else:
                draw.rectangle((x, y, x + PANEL - 1, y + PANEL - 1), outline="grey")
                draw.text((x + 8, y + 8), "no image", fill="grey")
    return figure
