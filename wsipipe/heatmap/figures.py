"""Figure parts drawn with PIL: top-k outlines, the colour bar, the top-tile gallery."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsipipe.heatmap.render import value_indices


def draw_outlines(
    img: np.ndarray,
    spans: np.ndarray,
    colour: Sequence[int] = (0, 0, 0),
    width: int = 2,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Copy of ``img`` with rectangles around ``spans`` (k, 4) (and optional text labels)."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(np.ascontiguousarray(img[..., :3]))
    draw = ImageDraw.Draw(pil)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(spans, dtype=np.int64).reshape(-1, 4)):
        if x1 <= x0 or y1 <= y0:
            continue
        draw.rectangle(
            [int(x0), int(y0), int(x1) - 1, int(y1) - 1], outline=tuple(colour), width=width
        )
        if labels is not None and i < len(labels):
            draw.text((int(x0) + width + 1, int(y0) + width), labels[i], fill=tuple(colour))
    return np.asarray(pil)


def colour_bar(
    height: int,
    lut: np.ndarray,
    ticks: Sequence[tuple[float, str]] = ((1.0, "high"), (0.0, "low")),
    bar_width: int = 18,
    label_width: int = 90,
    background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """(height, bar_width + label_width + 8, 3) uint8 vertical colour bar, 1.0 at the top.

    ``ticks``: (value in [0, 1], text) drawn beside the bar. The bar occupies columns
    4 .. 4 + bar_width and rows pad .. height - pad (pad = 6 px) of the returned image.
    """
    from PIL import Image, ImageDraw

    pad = 6
    width = bar_width + label_width + 8
    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.asarray(background, np.uint8)
    inner = max(2, height - 2 * pad)
    vals = np.linspace(1.0, 0.0, inner)
    img[pad : pad + inner, 4 : 4 + bar_width] = lut[value_indices(vals, len(lut))][:, None, :]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for value, text in ticks:
        y = pad + round((1.0 - float(value)) * (inner - 1))
        draw.line([(4 + bar_width, y), (4 + bar_width + 4, y)], fill=(0, 0, 0))
        ty = min(max(0, y - 5), max(0, height - 11))
        draw.text((4 + bar_width + 6, ty), text, fill=(0, 0, 0))
    return np.asarray(pil)


def with_colour_bar(
    img: np.ndarray, bar: np.ndarray, background: Sequence[int] = (255, 255, 255)
) -> np.ndarray:
    """Place ``bar`` to the right of ``img`` (vertically centred); (h', w + bar_w, 3) uint8."""
    h = max(img.shape[0], bar.shape[0])
    out = np.empty((h, img.shape[1] + bar.shape[1], 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    out[: img.shape[0], : img.shape[1]] = img[..., :3]
    top = (h - bar.shape[0]) // 2
    out[top : top + bar.shape[0], img.shape[1] :] = bar
    return out


def gallery(
    tiles: np.ndarray,
    captions: Sequence[str],
    cols: int = 5,
    cell: int = 160,
    caption_px: int = 16,
    background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """Grid of tiles (k, h, w, 3) uint8, each resized to ``cell`` px with a caption below.

    Returns (rows * (cell + caption_px + 4), cols * (cell + 4), 3) uint8; k = 0 gives a
    single blank cell.
    """
    from PIL import Image, ImageDraw

    k = len(tiles)
    cols = max(1, min(cols, max(k, 1)))
    rows = max(1, -(-k // cols))
    cw, ch = cell + 4, cell + caption_px + 4
    canvas = Image.new("RGB", (cols * cw, rows * ch), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for i in range(k):
        r, c = divmod(i, cols)
        tile = Image.fromarray(np.ascontiguousarray(tiles[i][..., :3]))
        if tile.size != (cell, cell):
            tile = tile.resize((cell, cell), Image.Resampling.BILINEAR)
        canvas.paste(tile, (c * cw + 2, r * ch + 2))
        if i < len(captions):
            draw.text((c * cw + 3, r * ch + cell + 4), captions[i], fill=(0, 0, 0))
    return np.asarray(canvas)
