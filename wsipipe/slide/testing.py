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

from collections.abc import Iterator, Sequence
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from wsipipe.slide.jpeg import split_header, split_tables

APERIO_HEADER = "Aperio Image Library v12.0.0\r\n"


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


def reduce_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (h, w, 3) image by an integer factor; the size is rounded down (as
    Aperio does), so each output pixel averages exactly factor x factor input pixels."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return np.asarray(Image.fromarray(image[:h, :w]).reduce(factor))


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
    path = Path(path)
    h, w = image.shape[:2]
    fields = [f"{APERIO_HEADER}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"]
    if app_mag is not None:
        fields.append(f"AppMag = {app_mag:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    description = "|".join(fields)
    thumb = reduce_image(image, max(1, -(-max(h, w) // 256)))
    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            level = reduce_image(image, int(ds))
            desc = (
                description
                if i == 0
                else f"{APERIO_HEADER}{w}x{h} -> {level.shape[1]}x{level.shape[0]}"
            )
            _write_level(tw, level, tile, jpeg, quality, desc)
            if i == 0:
                tw.write(
                    thumb,
                    photometric="rgb",
                    description=f"{APERIO_HEADER}thumbnail",
                    metadata=None,
                )
    return path


def _write_level(
    tw: tifffile.TiffWriter, level: np.ndarray, tile: int, jpeg: str, quality: int, desc: str
) -> None:
    if jpeg == "ycbcr":
        tw.write(
            level,
            tile=(tile, tile),
            compression="jpeg",
            compressionargs={"level": quality},
            photometric="rgb",
            description=desc,
            metadata=None,
        )
        return
    tables, streams = _aperio_rgb_tiles(level, tile, quality)

    def chunks() -> Iterator[bytes]:
        yield from streams

    tw.write(
        chunks(),
        shape=level.shape,
        dtype=np.uint8,
        tile=(tile, tile),
        compression="jpeg",
        photometric="rgb",
        subsampling=(1, 1),
        compressionargs={"outcolorspace": "RGB"},
        jpegtables=tables,
        description=desc,
        metadata=None,
    )
