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
    """Copy of ``img`` with rectangles around ``spans`` (k, 4) (and optional text labels).

    Each rectangle (and its label) is drawn on a crop around it, not on the whole image:
    the same pixels (drawing is translation-invariant) without converting a large image.
    """
    from PIL import Image, ImageDraw

    out = np.array(img[..., :3], dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    fill = tuple(int(c) for c in colour)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(spans, dtype=np.int64).reshape(-1, 4)):
        if x1 <= x0 or y1 <= y0:
            continue
        label = labels[i] if labels is not None and i < len(labels) else None
        text_at = (int(x0) + width + 1, int(y0) + width)
        lo_x, lo_y, hi_x, hi_y = int(x0), int(y0), int(x1), int(y1)
        if label is not None:
            tb = measure.textbbox(text_at, label)
            lo_x, lo_y = min(lo_x, int(tb[0])), min(lo_y, int(tb[1]))
            hi_x, hi_y = max(hi_x, int(tb[2])), max(hi_y, int(tb[3]))
        # the crop (with a margin for anti-aliased text), clipped to the image
        cx0, cy0 = max(0, lo_x - 4), max(0, lo_y - 4)
        cx1, cy1 = min(w, hi_x + 4), min(h, hi_y + 4)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        crop = Image.fromarray(out[cy0:cy1, cx0:cx1])
        draw = ImageDraw.Draw(crop)
        draw.rectangle(
            [int(x0) - cx0, int(y0) - cy0, int(x1) - 1 - cx0, int(y1) - 1 - cy0],
            outline=fill,
            width=width,
        )
        if label is not None:  # on a plate of the outline's colour, in the contrasting one
            at = (text_at[0] - cx0, text_at[1] - cy0)
            plate = draw.textbbox(at, label)
            draw.rectangle([plate[0] - 1, plate[1] - 1, plate[2], plate[3]], fill=fill)
            ink = (0, 0, 0) if sum(fill) > 382 else (255, 255, 255)
            draw.text(at, label, fill=ink)
        out[cy0:cy1, cx0:cx1] = np.asarray(crop)
    return out


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
    ih, iw = img.shape[:2]
    bg = np.asarray(background, np.uint8)
    out = np.empty((h, iw + bar.shape[1], 3), np.uint8)
    out[:ih, :iw] = img[..., :3]
    out[ih:, :iw] = bg  # only the parts the image does not cover are filled
    out[:, iw:] = bg
    top = (h - bar.shape[0]) // 2
    out[top : top + bar.shape[0], iw:] = bar
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
