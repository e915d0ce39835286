"""The Block similarity chart as ComfyUI's IMAGE: a float tensor ``[batch, height, width,
channels]`` with values in 0..1 (what ``LoadImage`` in ComfyUI's nodes.py builds from a PIL
image).

:func:`chart_array` reads the PNG that ``ckpt_diff.sim(..., report=DIR)`` writes
(``DIR/similarity.png``) into that layout as a NumPy array, or draws a plain bar chart of the
rows when the report has no chart. :func:`to_image` turns the array into the torch tensor; it
is the only function that imports torch, so the rest is testable without it.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["CHART_FILE", "chart_array", "draw_rows", "to_image"]

# What `sim --report DIR` names its chart (src/reports/sim.rs writes it beside index.html).
CHART_FILE = "similarity.png"


def chart_array(
    report_dir: str,
    rows: Sequence[Tuple[str, Optional[float]]],
    title: str = "similarity per block",
) -> np.ndarray:
    """The chart of a ``sim`` report folder as a float32 array ``[1, H, W, 3]`` in 0..1:
    the report's PNG when it wrote one, else :func:`draw_rows` of ``rows``."""
    from PIL import Image

    path = os.path.join(report_dir, CHART_FILE)
    if os.path.isfile(path):
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    else:
        rgb = draw_rows(rows, title)
    return rgb[None, ...]


def draw_rows(
    rows: Sequence[Tuple[str, Optional[float]]],
    title: str = "similarity per block",
    width: int = 1024,
) -> np.ndarray:
    """A horizontal bar per row (label, similarity in [-1, 1]) on white, as a float32 array
    ``[H, W, 3]`` in 0..1. The axis runs from a little below the smallest value to 100 %
    (its ends are written under the title), so that small differences show."""
    from PIL import Image, ImageDraw

    shown: List[Tuple[str, float]] = [(str(label), float(v)) for label, v in rows if v is not None]
    line = 18
    height = (max(1, len(shown)) + 3) * line
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    smallest = min([v for _, v in shown] + [1.0])
    low = smallest - 0.1 * max(1.0 - smallest, 1e-6)
    left, right = 200, width - 110
    draw.text((8, 4), f"{title}; bars from {low * 100:.4f}% (left) to 100% (right)", fill="black")
    for i, (label, value) in enumerate(shown):
        y = 2 * line + i * line
        x = left + (right - left) * (value - low) / (1.0 - low)
        draw.text((8, y + 2), label[:30], fill="black")
        draw.rectangle([left, y + 3, max(left + 1, x), y + line - 3], fill=(31, 119, 180))
        draw.text((right + 8, y + 2), f"{value * 100:.4f}%", fill="black")
    return np.asarray(im, dtype=np.float32) / 255.0


def to_image(array: np.ndarray) -> Any:
    """``array`` (``[B, H, W, C]``, float32, 0..1) as ComfyUI's IMAGE, a torch tensor
    sharing its memory. Imports torch here, so that importing the nodes does not."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
