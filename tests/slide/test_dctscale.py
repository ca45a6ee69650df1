"""Reduced-scale (DCT-domain) JPEG decoding: geometry, pixels vs the exact resample, fallbacks.

Stated tolerance of the reduced path against the exact one (full decode + PIL BOX area mean),
on real H&E at JPEG q90, per factor 2/4/8 and for YCbCr 4:2:0 and Aperio RGB 4:4:4 tiles:
mean |difference| <= 1.0 grey level, 99th percentile <= 4, every channel's mean within 0.6;
and against the area mean of the pixels before JPEG it is within 0.1 level of the exact
path's error (measured on 21 tiles: 1.33 vs 1.38 levels for 4:2:0 at 1/2, 0.58 vs 0.73 for
RGB 4:4:4 at 1/2, 0.49 vs 0.48 for 4:2:0 at 1/8).
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_tile
from wsipipe.errors import ConfigError
from wsipipe.slide import open_slide
from wsipipe.slide.dctscale import dct_factor, decode_reduced
from wsipipe.slide.jpeg import JpegFormatError, split_tables, standalone_jpeg
from wsipipe.testing.slides import _aperio_markers, synthetic_rgb, write_aperio_like

MEAN_TOL, P99_TOL, CHANNEL_TOL = 1.0, 4.0, 0.6


def _box(image: np.ndarray, factor: int) -> np.ndarray:
    """The exact path's reduction: PIL BOX resize by an integer factor."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))


def _assert_close(reduced: np.ndarray, exact: np.ndarray) -> None:
    assert reduced.shape == exact.shape and reduced.dtype == np.uint8
    diff = reduced.astype(np.int16) - exact.astype(np.int16)
    assert np.abs(diff).mean() <= MEAN_TOL
    assert np.percentile(np.abs(diff), 99) <= P99_TOL
    assert np.abs(diff.reshape(-1, 3).mean(axis=0)).max() <= CHANNEL_TOL  # colours right


@pytest.fixture(scope="module")
def he_tiles() -> list[np.ndarray]:
    """256x256 crops of real H&E (a 1000x1000 image and a 512x512 TCGA tile)."""
    crops = []
    for name in ("tiatoolbox_target_image.png", "TCGA-AD-6964-01Z-00-DX1_tile_16896_20480.jpg"):
        image = np.asarray(Image.open(real_tile(name)).convert("RGB"))
        for y in range(0, image.shape[0] - 255, 256):
            for x in range(0, image.shape[1] - 255, 256):
                crops.append(np.ascontiguousarray(image[y : y + 256, x : x + 256]))
    return crops


def _stored(tile: np.ndarray, kind: str) -> tuple[bytes, np.ndarray]:
    """(standalone stream, full decode as the TIFF reader does) of one tile as a scanner
    stores it: "ycbcr" = JFIF 4:2:0, "rgb" = Aperio RGB 4:4:4 with shared JPEGTables."""
    if kind == "ycbcr":
        stream = bytes(imagecodecs.jpeg8_encode(tile, level=90, subsampling="420"))
        return stream, imagecodecs.jpeg8_decode(stream)
    full = imagecodecs.jpeg8_encode(
        tile, level=90, colorspace="RGB", outcolorspace="RGB", subsampling="444"
    )
    tables, abbrev = split_tables(_aperio_markers(bytes(full)))
    decoded = imagecodecs.jpeg8_decode(abbrev, tables=tables, colorspace="RGB", outcolorspace="RGB")
    stream = standalone_jpeg(abbrev, tables, "RGB")
    assert stream is not None
    return stream, decoded


@pytest.mark.parametrize(
    ("reduction", "tile", "expected"),
    [(2, 256, 2), (4, 256, 4), (8, 256, 8), (16, 256, 8), (6, 256, 2), (3, 256, 1),
     (1, 256, 1), (4, 240, 4), (8, 240, 8), (8, 244, 4), (2, 250, 2), (2, 255, 1)],
)  # fmt: skip
def test_dct_factor(reduction: int, tile: int, expected: int) -> None:
    assert dct_factor(reduction, tile, tile) == expected
    assert dct_factor(reduction, 256, tile) == expected  # both sides must divide


@pytest.mark.parametrize("kind", ["ycbcr", "rgb"])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_reduced_decode_is_close_to_the_exact_area_mean(
    he_tiles: list[np.ndarray], kind: str, factor: int
) -> None:
    reduced, exact, truth = [], [], []
    for tile in he_tiles:
        stream, full = _stored(tile, kind)
        reduced.append(decode_reduced(stream, factor, 256, 256))
        exact.append(_box(full, factor))
        truth.append(tile.astype(np.float64).reshape(256 // factor, factor, 256 // factor,
                                                    factor, 3).mean(axis=(1, 3)))  # fmt: skip
    _assert_close(np.stack(reduced), np.stack(exact))
    # as faithful to the scanned pixels (before JPEG) as the exact path is
    err_reduced = np.abs(np.stack(reduced) - np.stack(truth)).mean()
    err_exact = np.abs(np.stack(exact) - np.stack(truth)).mean()
    assert err_reduced <= err_exact + 0.1


def test_rgb_tile_without_adobe_marker_would_decode_wrong(he_tiles: list[np.ndarray]) -> None:
    """Why the standalone stream pins the colour space: the same RGB-coded tile without the
    Adobe marker is taken for YCbCr and its colours are far off."""
    stream, full = _stored(he_tiles[0], "rgb")
    naive = stream.replace(b"\xff\xee\x00\x0eAdobe", b"\xff\xee\x00\x0eXdobe")
    wrong = decode_reduced(naive, 2, 256, 256).astype(np.int16)
    assert np.abs(wrong - _box(full, 2)).mean() > 20


def test_reduced_decode_rejects_other_sizes() -> None:
    for side in (128, 512):  # smaller, or larger (a 1/4 decode would be 128 px "as asked")
        stream = bytes(imagecodecs.jpeg8_encode(synthetic_rgb(side, side), level=90))
        with pytest.raises(JpegFormatError, match="expected 256x256"):
            decode_reduced(stream, 2, 256, 256)
    with pytest.raises(ValueError):
        decode_reduced(b"\xff\xd8 not a jpeg", 2, 256, 256)


# -- TileReader ---------------------------------------------------------------------------------

W, H = 1296, 1008  # partial edge tiles right (1296 = 10*128 + 16) and bottom (1008 = 7*128+112)


@pytest.fixture(scope="module")
def he_image() -> np.ndarray:
    """A W x H slide image cut from real H&E (mirrored to fill), so that the pixels are real."""
    tex = np.asarray(Image.open(real_tile("tiatoolbox_target_image.png")).convert("RGB"))
    tex = np.concatenate([tex, tex[:, ::-1]], axis=1)  # 2000 wide
    tex = np.concatenate([tex, tex[::-1]], axis=0)  # 2000 high
    return np.ascontiguousarray(tex[:H, :W])


@pytest.fixture(scope="module", params=["rgb", "ycbcr"])
def single_level(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, he_image: np.ndarray
) -> Path:
    """0.25 um/px, one level, 128 px file tiles: reductions 2, 4, 8 and 16 all read level 0."""
    out = tmp_path_factory.mktemp("dct") / f"single_{request.param}.svs"
    return write_aperio_like(
        out, he_image, mpp=0.25, app_mag=40, tile=128, downsamples=(1,), jpeg=request.param
    )


@pytest.mark.parametrize(
    ("target", "tile_px", "factor", "positions"),
    [
        (0.5, 256, 2, [(0, 0), (512, 256), (128, 384), (130, 66)]),  # aligned, unaligned even
        (1.0, 64, 4, [(0, 0), (256, 512), (4, 8), (1020, 636)]),
        (2.0, 32, 8, [(0, 0), (384, 640), (8, 16), (1024, 640)]),
        (4.0, 32, 8, [(0, 0), (512, 384), (8, 8)]),  # 512 px read: 1/8 decode, then BOX 2
    ],
)
def test_tile_reader_dct_close_to_exact(
    single_level: Path, target: float, tile_px: int, factor: int, positions: list
) -> None:
    with open_slide(single_level) as slide:
        dct = slide.tile_reader(target, tile_px)  # resample="dct" is the default
        exact = slide.tile_reader(target, tile_px, resample="exact")
        assert (dct.resample, dct.dct_factor, exact.dct_factor) == ("dct", factor, 1)
        assert dct.level == exact.level == 0
        calls: list[int] = []
        original = dct._read_reduced

        def spy(x: int, y: int) -> np.ndarray | None:
            out = original(x, y)
            calls.append(out is not None)
            return out

        dct._read_reduced = spy  # type: ignore[method-assign]
        got = np.stack([dct.read(x, y) for x, y in positions])
        want = np.stack([exact.read(x, y) for x, y in positions])
        assert calls == [True] * len(positions)  # every position took the reduced path
        assert got.shape == (len(positions), tile_px, tile_px, 3)
        _assert_close(got, want)
        assert not np.array_equal(got, want)  # and it is a different (cheaper) computation


def test_tile_reader_dct_falls_back_to_exact_pixels(single_level: Path) -> None:
    """Positions off the reduced grid (odd level px), tiles that touch the partial edge
    tiles, and tiles outside the slide give exactly the exact path's pixels."""
    with open_slide(single_level) as slide:
        dct = slide.tile_reader(0.5, 256)
        exact = slide.tile_reader(0.5, 256, resample="exact")
        for x, y in [(1, 0), (0, 3), (129, 257), (W - 512, 0), (0, H - 512), (W - 300, 100),
                     (-2, 0), (0, -64), (W, H)]:  # fmt: skip
            assert dct._read_reduced(x, y) is None
            np.testing.assert_array_equal(dct.read(x, y), exact.read(x, y))
        # the last complete column/row of file tiles still takes the reduced path
        assert dct._read_reduced(W - 16 - 512, H - 112 - 512) is not None


def test_tile_reader_dct_on_a_pyramid_level(fine_slide: Path) -> None:
    """0.25 um/px with levels at 4x and 16x: 2 um/px tiles reduce level 1 (1 um/px) by 2."""
    with open_slide(fine_slide) as slide:
        dct = slide.tile_reader(2.0, 64)
        exact = slide.tile_reader(2.0, 64, resample="exact")
        assert (dct.level, dct.read_px, dct.dct_factor) == (1, 128, 2)
        positions = [(0, 0), (512, 0), (256, 0), (8, 0)]  # level 1 has one full tile row
        assert all(dct._read_reduced(x, y) is not None for x, y in positions)
        _assert_close(
            np.stack([dct.read(x, y) for x, y in positions]),
            np.stack([exact.read(x, y) for x, y in positions]),
        )
        # a level that matches the target is not resampled at all: nothing to reduce
        assert slide.tile_reader(1.0, 64).dct_factor == 1


def test_reduced_path_with_file_tiles_that_do_not_divide_the_read(
    tmp_path: Path, he_image: np.ndarray
) -> None:
    """240 px file tiles (as Aperio writes) and a 512 px read: the exact fast path cannot
    use whole file tiles, the reduced path can (240 and 512 are both even)."""
    path = write_aperio_like(tmp_path / "t240.svs", he_image, mpp=0.25, tile=240, downsamples=(1,))
    with open_slide(path) as slide:
        dct = slide.tile_reader(0.5, 256)
        exact = slide.tile_reader(0.5, 256, resample="exact")
        assert not dct.fast and "not a multiple" in dct.fast_reason and dct.dct_factor == 2
        positions = [(0, 0), (512, 0), (240, 448), (200, 100)]
        assert all(dct._read_reduced(x, y) is not None for x, y in positions)
        _assert_close(
            np.stack([dct.read(x, y) for x, y in positions]),
            np.stack([exact.read(x, y) for x, y in positions]),
        )


def test_sparse_tiles_are_white_in_the_reduced_path(single_level: Path) -> None:
    with open_slide(single_level) as slide:
        reader = slide.tile_reader(0.5, 256)
        source = reader._source
        assert source is not None
        counts = source.index.counts.copy()
        counts[0] = 0  # tile (0, 0) missing, as in a sparse file
        object.__setattr__(source.index, "counts", counts)
        tile = reader.read(0, 0)
        assert (tile[:64, :64] == 255).all()  # the missing file tile (128 px -> 64 px)
        assert (tile[64:, 64:] < 250).any()  # the rest is tissue


def test_resample_argument_is_checked(single_level: Path) -> None:
    with open_slide(single_level) as slide, pytest.raises(ConfigError, match="resample 'box'"):
        slide.tile_reader(0.5, 256, resample="box")


def test_real_aperio_svs_abbreviated_rgb_tiles() -> None:
    """CMU-1-Small-Region.svs: Aperio's abbreviated RGB-coded tiles with shared JPEGTables
    and 240 px file tiles; 2x reduction (0.998 um/px) through the reduced path."""
    from tests.conftest import real_slide

    with open_slide(real_slide("CMU-1-Small-Region.svs")) as slide:
        dct = slide.tile_reader(slide.mpp * 2, 128)
        exact = slide.tile_reader(slide.mpp * 2, 128, resample="exact")
        source = dct._source
        assert source is not None and source.index.jpegtables is not None
        assert source.index.colorspace == "RGB" and dct.dct_factor == 2 and dct.read_px == 256
        positions = [(x, y) for y in range(0, 2600, 520) for x in range(0, 1900, 470)]
        assert all(dct._read_reduced(x, y) is not None for x, y in positions)
        _assert_close(
            np.stack([dct.read(x, y) for x, y in positions]),
            np.stack([exact.read(x, y) for x, y in positions]),
        )
