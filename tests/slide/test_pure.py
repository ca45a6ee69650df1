"""Pure parts of the slide package: level choice, geometry, JPEG surgery, SlideInfo."""

from __future__ import annotations

import io
import json
import math

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from wsipipe.errors import SlideOpenError
from wsipipe.slide import SlideInfo, slide_fingerprint
from wsipipe.slide.info import positive_float
from wsipipe.slide.jpeg import (
    adobe_segment,
    implied_colorspace,
    split_header,
    split_tables,
    standalone_jpeg,
)
from wsipipe.slide.levels import (
    choose_level,
    plan_stripes,
    resample_filter,
    thumbnail_plan,
    tile_geometry,
)

# -- level choice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mpps", "target", "expected"),
    [
        ([0.25, 1.0, 4.0], 0.5, 0),  # between levels: the finer one, never upsample
        ([0.25, 1.0, 4.0], 1.0, 1),  # exact match
        ([0.25, 1.0, 4.0], 0.995, 1),  # 1.0 <= 0.995 * 1.01: within 1 %
        ([0.25, 1.0, 4.0], 0.98, 0),  # 1.0 > 0.98 * 1.01
        ([0.25, 1.0, 4.0], 100.0, 2),  # coarser than every level: the coarsest
        ([0.5, 2.0], 0.25, 0),  # level 0 already coarser than target: level 0
        ([4.0, 0.25, 1.0], 1.0, 2),  # unsorted input
    ],
)
def test_choose_level(mpps: list[float], target: float, expected: int) -> None:
    assert choose_level(mpps, target) == expected


def test_choose_level_rejects_bad_target() -> None:
    with pytest.raises(ValueError, match="target_mpp"):
        choose_level([0.5], 0.0)
    with pytest.raises(ValueError, match="target_mpp"):
        choose_level([0.5], math.nan)


def test_tile_geometry_downsampling_and_levels() -> None:
    # 0.25 mpp slide, levels 1/4/16, 256 px at 0.5: level 0, 512 px read then halved
    g = tile_geometry(0.25, [1.0, 4.0, 16.0], 0.5, 256)
    assert (g.level, g.tile_size_level0, g.read_px, g.downsample) == (0, 512, 512, 1.0)
    assert g.resamples and not g.matches_level
    # 256 px at 1.0 um: level 1 matches exactly, read 256 px, no resampling
    g = tile_geometry(0.25, [1.0, 4.0, 16.0], 1.0, 256)
    assert (g.level, g.tile_size_level0, g.read_px) == (1, 1024, 256)
    assert g.matches_level and not g.resamples
    # CMU-like 0.499 mpp at 0.5: footprint round(256.51) = 257
    g = tile_geometry(0.499, [1.0], 0.5, 256)
    assert (g.tile_size_level0, g.read_px) == (257, 257)
    assert g.matches_level
    # target finer than level 0: level 0, read fewer px and upsample
    g = tile_geometry(0.5, [1.0, 4.0], 0.25, 256)
    assert (g.level, g.read_px) == (0, 128)


def test_resample_filter() -> None:
    assert resample_filter(512, 256) == Image.Resampling.BOX
    assert resample_filter(257, 256) == Image.Resampling.LANCZOS
    assert resample_filter(128, 256) == Image.Resampling.LANCZOS


def test_thumbnail_plan() -> None:
    plan = thumbnail_plan(10000, 6000, 0.25, [1.0, 4.0, 16.0], 8.0)
    assert plan.downsample == 32.0
    assert (plan.width, plan.height) == (312, 188)  # round(10000/32), round(6000/32)
    assert plan.level == 2 and plan.level_scale == 2.0
    # target finer than level 0: never upsampled
    plan = thumbnail_plan(100, 50, 0.5, [1.0], 0.1)
    assert (plan.downsample, plan.width, plan.height, plan.level) == (1.0, 100, 50, 0)


@pytest.mark.parametrize("max_pixels", [1, 5000, 40_000, 10**9])
def test_stripes_partition_rows(max_pixels: int) -> None:
    plan = thumbnail_plan(20000, 3000, 0.5, [1.0], 8.0)  # single level, 16 px per thumb px
    stripes = plan_stripes(plan, max_pixels=max_pixels, tile_height=240)
    rows = [r for s in stripes for r in range(s.row0, s.row1)]
    assert rows == list(range(plan.height))
    for s in stripes:
        top, bottom = s.row0 * plan.level_scale, s.row1 * plan.level_scale
        assert s.level_y0 <= top and s.level_y1 >= bottom
        assert s.box[1] == pytest.approx(top - s.level_y0)
        assert s.box[3] == pytest.approx(bottom - s.level_y0)
    if max_pixels >= 10**9:
        assert len(stripes) == 1
    if max_pixels == 40_000:  # 40000 px / 20000 px wide = 2 rows < 240: one tile row each
        assert all(s.level_y1 - s.level_y0 <= 241 for s in stripes)


# -- JPEG surgery ----------------------------------------------------------------------------


def _rgb_coded_like_aperio(image: np.ndarray) -> tuple[bytes, bytes]:
    """(tables, abbreviated tile) with component ids 0,1,2 and no APP markers."""
    from wsipipe.testing.slides import _aperio_markers

    full = bytes(imagecodecs.jpeg8_encode(image, level=90, colorspace="RGB", outcolorspace="RGB"))
    return split_tables(_aperio_markers(full))


def test_standalone_rgb_coded_jpeg_gets_adobe_marker() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image[:32] = (200, 40, 120)
    tables, tile = _rgb_coded_like_aperio(image)
    reference = imagecodecs.jpeg8_decode(tile, tables=tables, colorspace="RGB")
    naive = b"\xff\xd8" + tables[2:-2] + tile[2:]
    wrong = np.asarray(Image.open(io.BytesIO(naive)).convert("RGB"))
    assert np.abs(wrong.astype(int) - reference).max() > 50  # YCbCr assumed: wrong colours
    assert standalone_jpeg(tile, tables, colorspace=None) == naive  # stream decides: as naive
    fixed = standalone_jpeg(tile, tables, colorspace="RGB")
    assert fixed is not None and adobe_segment(0) in fixed
    assert implied_colorspace(split_header(fixed)[0]) == "RGB"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(fixed))), reference)
    np.testing.assert_array_equal(imagecodecs.jpeg_decode(fixed), reference)


def test_standalone_ycbcr_jfif_unchanged_apart_from_tables() -> None:
    image = np.full((32, 32, 3), (10, 200, 90), dtype=np.uint8)
    full = bytes(imagecodecs.jpeg8_encode(image, level=90))
    segments, _ = split_header(full)
    assert implied_colorspace(segments) == "YCbCr"
    tables, tile = split_tables(full)
    merged = standalone_jpeg(tile, tables, colorspace=None)
    assert merged is not None and b"Adobe" not in merged
    np.testing.assert_array_equal(imagecodecs.jpeg_decode(merged), imagecodecs.jpeg_decode(full))


def test_standalone_refuses_contradictions_and_garbage() -> None:
    image = np.full((16, 16, 3), 128, dtype=np.uint8)
    jfif = bytes(imagecodecs.jpeg8_encode(image, level=90))  # JFIF => YCbCr
    assert standalone_jpeg(jfif, None, colorspace="RGB") is None  # JFIF says YCbCr
    assert standalone_jpeg(jfif, None, colorspace="CMYK") is None
    assert standalone_jpeg(b"not a jpeg", None, colorspace=None) is None
    assert standalone_jpeg(jfif[:10], None, colorspace=None) is None
    gray = bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(image[..., 0]), level=90))
    assert standalone_jpeg(gray, None, colorspace=None) is None  # not 3 components


def test_split_header_rejects_non_jpeg() -> None:
    from wsipipe.slide.jpeg import JpegFormatError

    with pytest.raises(JpegFormatError):
        split_header(b"\x00\x01")


# -- SlideInfo, fingerprint ------------------------------------------------------------------


def _info(**kw: object) -> SlideInfo:
    base: dict[str, object] = dict(
        path="s.svs",
        reader="openslide",
        vendor="aperio",
        width=100,
        height=50,
        level_dimensions=((100, 50), (25, 12)),
        level_downsamples=(1.0, 4.0),
        mpp_x=0.5,
        mpp_y=0.5,
        objective_power=20.0,
    )
    base.update(kw)
    return SlideInfo(**base)  # type: ignore[arg-type]


def test_slide_info_to_dict_is_json() -> None:
    d = _info().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["level_dimensions"] == [[100, 50], [25, 12]]
    assert d["mpp_x"] == 0.5 and d["reader"] == "openslide"


@pytest.mark.parametrize(
    "bad",
    [
        {"reader": "bioformats"},
        {"width": 0},
        {"level_downsamples": (1.0,)},
        {"mpp_x": -0.5},
        {"level_dimensions": ((99, 50), (25, 12))},
    ],
)
def test_slide_info_validates(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _info(**bad)


def test_positive_float() -> None:
    assert positive_float("0.2527") == pytest.approx(0.2527)
    assert positive_float(" 20 ") == 20.0
    for bad in (None, "", "abc", "0", "-1", "nan", "inf"):
        assert positive_float(bad) is None


def test_fingerprint(tmp_path: object) -> None:
    import hashlib
    from pathlib import Path

    p = Path(str(tmp_path)) / "f.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB: only the first MiB is hashed
    p.write_bytes(data)
    fp = slide_fingerprint(p)
    assert fp == {
        "size": len(data),
        "mtime_ns": p.stat().st_mtime_ns,
        "md5_first_mb": hashlib.md5(data[: 1 << 20]).hexdigest(),
    }
    assert slide_fingerprint(p, md5=False) == {"size": len(data), "mtime_ns": fp["mtime_ns"]}
    p.write_bytes(data[:-1] + b"\x00")  # change past the first MiB: unseen by design
    assert slide_fingerprint(p)["md5_first_mb"] == fp["md5_first_mb"]
    with pytest.raises(SlideOpenError, match=r"missing\.svs"):
        slide_fingerprint(Path(str(tmp_path)) / "missing.svs")
