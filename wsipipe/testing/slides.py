"""Synthetic slides for tests and benchmarks: small Aperio-like pyramidal JPEG TIFFs.

`write_aperio_like` writes a file that OpenSlide opens as vendor "aperio" and tiffslide reads
with the same levels and mpp: level 0 tiled, a stripped thumbnail as page 1 (as Aperio does),
then the reduced levels, tiled. Two JPEG flavours:

- ``jpeg="rgb"`` mimics real Aperio files: RGB-coded JPEG (no colour transform, no chroma
  subsampling) as abbreviated streams sharing one JPEGTables tag, component ids 0, 1, 2 and no
  JFIF/Adobe marker -- so a naive standalone decode gives wrong colours;
- ``jpeg="ycbcr"``: tifffile's own encoder, YCbCr 4:2:0 with a JFIF header in every tile.

Partial edge tiles are padded with black, so readers must paint the outside white themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

from wsipipe.slide.aperio_writer import (
    AperioTiffWriter,
    block_average,
    level_description,
    thumbnail_description,
)
from wsipipe.slide.jpeg import split_header, split_tables


def synthetic_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 tissue-like test image: pink/purple blobs with texture and
    nuclei-like dots on a near-white background (JPEG sizes similar to H&E tiles)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((max(2, height // 64), max(2, width // 64))) * 255).astype(np.uint8)
    resized = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    tissue = np.asarray(resized) > 110
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    base = np.empty((height, width, 3), dtype=np.int16)
    base[..., 0] = (215 + 25 * np.sin(xs / 37.0)).astype(np.int16)
    base[..., 1] = (120 + 40 * np.sin(ys / 23.0 + xs / 51.0)).astype(np.int16)
    base[..., 2] = (175 + 30 * np.cos(ys / 41.0)).astype(np.int16)
    base += rng.integers(-6, 7, size=base.shape, dtype=np.int16)
    n_dots = width * height // 300
    dy = rng.integers(0, max(1, height - 4), n_dots)
    dx = rng.integers(0, max(1, width - 4), n_dots)
    for oy in range(4):
        for ox in range(4):
            base[np.minimum(dy + oy, height - 1), np.minimum(dx + ox, width - 1)] = (90, 40, 140)
    base[~tissue] = 244
    return np.clip(base, 0, 255).astype(np.uint8)


def _aperio_rgb_tiles(image: np.ndarray, tile: int, quality: int) -> tuple[bytes, list[bytes]]:
    """Encode tiles as Aperio does; returns (JPEGTables, abbreviated tile streams)."""
    h, w = image.shape[:2]
    tables: bytes | None = None
    streams: list[bytes] = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.zeros((tile, tile, 3), dtype=np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            full = imagecodecs.jpeg8_encode(
                block, level=quality, colorspace="RGB", outcolorspace="RGB", subsampling="444"
            )
            these, abbrev = split_tables(_aperio_markers(bytes(full)))
            if tables is None:
                tables = these
            elif these != tables:
                raise RuntimeError("JPEG encoder produced per-tile tables; cannot share them")
            streams.append(abbrev)
    assert tables is not None
    return tables, streams


def _aperio_markers(stream: bytes) -> bytes:
    """Drop APPn markers and renumber components 0, 1, 2 (as in Aperio's tiles)."""
    segments, rest = split_header(stream)
    out = [b"\xff\xd8"]
    for seg in segments:
        if 0xE0 <= seg.marker <= 0xEF:
            continue
        data = bytearray(seg.data)
        if seg.marker == 0xC0:
            for i in range(data[9]):
                data[10 + 3 * i] = i
        out.append(bytes(data))
    sos = bytearray(rest)
    ncomp = sos[4]
    for i in range(ncomp):
        sos[5 + 2 * i] = i
    out.append(bytes(sos))
    return b"".join(out)


def write_aperio_like(
    path: str | Path,
    image: np.ndarray,
    *,
    mpp: float | None = 0.5,
    app_mag: float | None = 20,
    tile: int = 256,
    downsamples: Sequence[int] = (1, 4),
    jpeg: str = "rgb",
    quality: int = 90,
) -> Path:
    """Write ``image`` ((h, w, 3) uint8, level 0) as an Aperio-like pyramidal JPEG TIFF.

    ``downsamples`` are the integer factors of the tiled levels (first must be 1); ``mpp``
    (microns per level-0 px) and ``app_mag`` go into the ImageDescription (None omits them).
    """
    if jpeg not in ("rgb", "ycbcr"):
        raise ValueError(f"jpeg must be 'rgb' or 'ycbcr', got {jpeg!r}")
    if not downsamples or downsamples[0] != 1:
        raise ValueError("downsamples must start with 1")
    h, w = image.shape[:2]
    fields = [("AppMag", f"{app_mag:g}")] if app_mag is not None else []
    fields += [("MPP", f"{mpp:g}")] if mpp is not None else []
    thumb = block_average(image, max(1, -(-max(h, w) // 256)))
    with AperioTiffWriter(path, w, h, mpp, tile, {"photometric": "rgb"}) as tw:
        for i, ds in enumerate(downsamples):
            level = block_average(image, int(ds))
            size = None if i == 0 else (level.shape[1], level.shape[0])
            desc = level_description(w, h, tile, f"JPEG/RGB Q={quality}", fields, size)
            _write_level(tw, level, tile, jpeg, quality, desc)
            if i == 0:
                tw.thumbnail(thumb, thumbnail_description(w, h, thumb.shape[1::-1], fields))
    return Path(path)


def _write_level(
    tw: AperioTiffWriter, level: np.ndarray, tile: int, jpeg: str, quality: int, desc: str
) -> None:
    if jpeg == "ycbcr":
        tw.level(level, level.shape, desc, compression="jpeg", compressionargs={"level": quality})
        return
    tables, streams = _aperio_rgb_tiles(level, tile, quality)
    tw.level(
        iter(streams), level.shape, desc, compression="jpeg", subsampling=(1, 1),
        compressionargs={"outcolorspace": "RGB"}, jpegtables=tables,
    )  # fmt: skip
