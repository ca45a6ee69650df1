"""Slide, TileReader and thumbnails on generated Aperio-like pyramids (tests/slide/conftest)."""

from __future__ import annotations

import io
import multiprocessing as mp
import pickle
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
from PIL import Image

from tests.slide.conftest import HEIGHT, WIDTH
from wsipipe.errors import ConfigError, MissingMppError, SlideError, SlideOpenError
from wsipipe.slide import TileReader, open_slide

TIFF_READERS = ("openslide", "tiffslide")  # the readers of these generated SVS files
GRID = [(x, y) for y in range(0, HEIGHT, 256) for x in range(0, WIDTH, 256)]  # incl. edges


def test_openslide_sees_generated_file_as_aperio(aperio_rgb: Path) -> None:
    raw = openslide.OpenSlide(str(aperio_rgb))
    assert raw.properties["openslide.vendor"] == "aperio"
    assert raw.level_dimensions == ((1296, 1008), (324, 252))
    with open_slide(aperio_rgb) as slide:
        assert slide.reader == "openslide" and slide.info.vendor == "aperio"
        assert (slide.info.mpp_x, slide.info.mpp_y, slide.info.objective_power) == (0.5, 0.5, 20)
        assert slide.mpp == 0.5 and slide.mpp_source == "file"
        assert slide.level_mpp(1) == 2.0


@pytest.mark.parametrize("reader", TIFF_READERS)
def test_both_readers_agree(aperio_rgb: Path, reader: str, image: np.ndarray) -> None:
    with open_slide(aperio_rgb, reader=reader) as slide:
        assert slide.info.reader == reader
        assert slide.info.level_dimensions == ((1296, 1008), (324, 252))
        assert slide.mpp == 0.5
        region = slide.read_region(0, 0, 0, WIDTH, HEIGHT)
    assert region.shape == (HEIGHT, WIDTH, 3) and region.dtype == np.uint8
    assert np.abs(region.astype(int) - image).mean() < 4  # JPEG q90 of the source


def test_readers_give_identical_pixels(aperio_ycbcr: Path) -> None:
    with (
        open_slide(aperio_ycbcr, reader="openslide") as a,
        open_slide(aperio_ycbcr, "tiffslide") as b,
    ):
        for level, (x, y, w, h) in [(0, (100, 37, 300, 200)), (1, (512, 256, 100, 80))]:
            np.testing.assert_array_equal(
                a.read_region(x, y, level, w, h), b.read_region(x, y, level, w, h)
            )


@pytest.mark.parametrize("reader", TIFF_READERS)
def test_read_region_outside_is_white(aperio_rgb: Path, reader: str) -> None:
    with open_slide(aperio_rgb, reader=reader) as slide:
        region = slide.read_region(WIDTH - 100, HEIGHT - 100, 0, 200, 150)  # 100 x 100 inside
        inside = slide.read_region(WIDTH - 100, HEIGHT - 100, 0, 100, 100)
        assert region.shape == (150, 200, 3)
        np.testing.assert_array_equal(region[:100, :100], inside)
        assert (region[100:] == 255).all() and (region[:, 100:] == 255).all()
        assert (slide.read_region(-50, 0, 0, 50, 10) == 255).all()
        np.testing.assert_array_equal(
            slide.read_region(-20, 0, 0, 40, 10)[:, 20:], slide.read_region(0, 0, 0, 20, 10)
        )


@pytest.mark.parametrize("fixture", ["aperio_rgb", "aperio_ycbcr"])
@pytest.mark.parametrize("reader", TIFF_READERS)
def test_fast_path_equals_read_region(
    fixture: str, reader: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    with open_slide(path, reader=reader) as slide:
        fast = slide.tile_reader(0.5, 256)
        slow = slide.tile_reader(0.5, 256, fast_path=False)
        assert fast.fast and fast.fast_reason == "ok" and not slow.fast
        assert (fast.level, fast.read_px, fast.tile_size_level0, fast.downsample) == (
            0,
            256,
            256,
            1.0,
        )
        for x, y in [*GRID, (100, 50), (1290, 990)]:  # aligned incl. edge tiles, then unaligned
            tile = fast.read(x, y)
            assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
            np.testing.assert_array_equal(tile, slide.read_region(x, y, 0, 256, 256))
            np.testing.assert_array_equal(tile, slow.read(x, y))
        # the right edge tile holds black padding in the file; it must come back white
        assert (fast.read(1280, 0)[:, 16:] == 255).all()
        assert (fast.read(0, 768)[240:] == 255).all()
        # level 1 (2 um/px): aligned tiles at downsample 4
        coarse = slide.tile_reader(2.0, 256)
        assert coarse.fast and coarse.level == 1
        for x, y in [(0, 0), (1024, 0), (0, 1024)]:
            np.testing.assert_array_equal(coarse.read(x, y), slide.read_region(x, y, 1, 256, 256))


def test_fast_path_is_actually_used(aperio_rgb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(aperio_rgb) as slide:
        reader = slide.tile_reader(0.5, 256)
        calls: list[tuple[int, int]] = []
        backend = reader._backend()
        original = backend.read_rgb

        def spy(x: int, y: int, *args: int) -> np.ndarray:
            calls.append((x, y))
            return original(x, y, *args)

        monkeypatch.setattr(backend, "read_rgb", spy)
        reader.read(256, 256)
        assert calls == []  # aligned: decoded from the file
        reader.read(10, 10)
        assert calls == [(10, 10)]  # unaligned: backend


def test_multi_tile_fast_read_and_downsampling(fine_slide: Path, image: np.ndarray) -> None:
    """0.25 um slide with 128 px file tiles; 256 px tiles at 0.5 um need 512 px reads."""
    with open_slide(fine_slide) as slide:
        assert slide.mpp == 0.25 and slide.info.objective_power == 40
        assert slide.best_level(0.5) == 0 and slide.best_level(1.0) == 1
        assert slide.best_level(0.995) == 1 and slide.best_level(0.98) == 0
        assert slide.best_level(4.0) == 2 and slide.best_level(0.1) == 0
        # same-mpp tiles spanning 2x2 file tiles
        native = slide.tile_reader(0.25, 256)
        assert native.fast and native.read_px == 256
        for x, y in [(0, 0), (256, 128), (1152, 896), (1280, 768)]:
            np.testing.assert_array_equal(native.read(x, y), slide.read_region(x, y, 0, 256, 256))
        # 0.5 um: read 512 px at level 0, area-average to 256 (the reduced-scale decode,
        # resample="dct", is tested against this in test_dctscale.py)
        half = slide.tile_reader(0.5, 256, resample="exact")
        assert (half.level, half.read_px, half.tile_size_level0) == (0, 512, 512)
        assert half.fast  # aligned 2x2 stored tiles are decoded directly, then reduced
        assert half.read_encoded(256, 0) is None  # resampled: no bitstream to reuse
        tile = half.read(256, 0)
        slow = slide.tile_reader(0.5, 256, fast_path=False).read(256, 0)
        np.testing.assert_array_equal(tile, slow)  # same pixels as via read_region
        assert tile.shape == (256, 256, 3)
        region = slide.read_region(256, 0, 0, 512, 512).astype(np.float64)
        expected = region.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(tile - expected).max() <= 1.0  # BOX filter = exact 2x2 mean (rounded)
        source = (
            image[0:512, 256:768].astype(np.float64).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        )
        assert np.abs(tile - source).mean() < 3.0  # and it is the right place in the slide


def test_read_encoded_decodes_to_read(aperio_rgb: Path, aperio_ycbcr: Path) -> None:
    for path, has_adobe in ((aperio_rgb, True), (aperio_ycbcr, False)):
        with open_slide(path) as slide:
            reader = slide.tile_reader(0.5, 256)
            for x, y in [(0, 0), (512, 256), (1024, 512)]:
                data = reader.read_encoded(x, y)
                assert data is not None and data.startswith(b"\xff\xd8")
                assert (b"Adobe" in data) == has_adobe
                expected = reader.read(x, y)
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)
                np.testing.assert_array_equal(imagecodecs.jpeg_decode(data), expected)
            # edge tile (padding inside), unaligned, resampled, or other level geometry: None
            assert reader.read_encoded(1280, 0) is None
            assert reader.read_encoded(0, 768) is None  # 768 + 256 > 1000: bottom edge
            assert reader.read_encoded(10, 0) is None
            assert slide.tile_reader(0.5, 256, fast_path=False).read_encoded(0, 0) is None
            assert slide.tile_reader(0.25, 256).read_encoded(0, 0) is None
            assert slide.tile_reader(0.5, 128).read_encoded(0, 0) is None


def test_tile_reader_pickles_and_forks(aperio_rgb: Path) -> None:
    with open_slide(aperio_rgb) as slide:
        reader = slide.tile_reader(0.5, 256)
        expected = [reader.read(x, y) for x, y in [(0, 0), (256, 256), (100, 100)]]
        clone: TileReader = pickle.loads(pickle.dumps(reader))
        assert clone.fast and clone.level == reader.level
    # the slide is closed now: the reader and its clone reopen their own handles
    np.testing.assert_array_equal(reader.read(0, 0), expected[0])
    for (x, y), tile in zip([(0, 0), (256, 256), (100, 100)], expected, strict=True):
        np.testing.assert_array_equal(clone.read(x, y), tile)
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        tiles = pool.starmap(reader.read, [(0, 0), (256, 256), (100, 100)])
    for got, tile in zip(tiles, expected, strict=True):
        np.testing.assert_array_equal(got, tile)
    reader.close()
    clone.close()


def test_slide_pickles(aperio_rgb: Path) -> None:
    with open_slide(aperio_rgb, reader="tiffslide", mpp=0.6) as slide:
        clone = pickle.loads(pickle.dumps(slide))
        assert (clone.reader, clone.mpp, clone.mpp_source) == ("tiffslide", 0.6, "override")
        np.testing.assert_array_equal(
            clone.read_region(5, 5, 0, 20, 20), slide.read_region(5, 5, 0, 20, 20)
        )
        clone.close()


@pytest.mark.parametrize("reader", TIFF_READERS)
def test_thumbnail_size_downsample_content(
    fine_slide: Path, image: np.ndarray, reader: str
) -> None:
    with open_slide(fine_slide, reader=reader) as slide:
        thumb, ds = slide.thumbnail(4.0)  # 16 level-0 px per thumbnail px, from level 2
        assert ds == 16.0
        assert thumb.shape == (round(HEIGHT / 16), round(WIDTH / 16), 3)
        crop_h, crop_w = (HEIGHT // 16), (WIDTH // 16)
        ref = image[: crop_h * 16, : crop_w * 16].astype(np.float64)
        ref = ref.reshape(crop_h, 16, crop_w, 16, 3).mean(axis=(1, 3))
        assert np.abs(thumb[:crop_h, :crop_w] - ref).mean() < 4.0
        thumb2, ds2 = slide.thumbnail(3.0)  # between levels: read level 1 (1 um), ds 12
        assert ds2 == 12.0 and thumb2.shape == (round(HEIGHT / 12), round(WIDTH / 12), 3)


def test_thumbnail_stripes_bound_reads(aperio_rgb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(aperio_rgb) as slide:
        whole, ds = slide.thumbnail(2.0, stripe_pixels=10**9)  # level 1 read at once
        backend = slide._backend
        sizes: list[tuple[int, int]] = []
        original = backend.read_rgb

        def spy(x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
            sizes.append((w, h))
            return original(x, y, level, w, h)

        monkeypatch.setattr(backend, "read_rgb", spy)
        # a single-level view: thumbnail at 1 um from level 0 in stripes of <= 1 tile row
        striped, ds1 = slide.thumbnail(1.0, stripe_pixels=WIDTH * 64)
        assert ds1 == 2.0 and striped.shape == (HEIGHT // 2, WIDTH // 2, 3)
        assert len(sizes) > 3 and all(w * h <= WIDTH * 257 for w, h in sizes)
        full = slide.read_region(0, 0, 0, WIDTH, HEIGHT)
        ref = np.asarray(
            Image.fromarray(full).resize((WIDTH // 2, HEIGHT // 2), Image.Resampling.BOX)
        )
        assert np.abs(striped.astype(int) - ref).max() <= 1  # seamless: same as one read
        assert whole.shape == (HEIGHT // 4, WIDTH // 4, 3) and ds == 4.0


def test_mpp_missing_and_override(no_mpp_slide: Path) -> None:
    with open_slide(no_mpp_slide) as slide:
        assert slide.info.mpp_x is None and slide.info.objective_power is None
        with pytest.raises(MissingMppError, match=r"nompp\.svs.*--mpp") as err:
            _ = slide.mpp
        assert "\n" not in str(err.value)
        with pytest.raises(MissingMppError):
            slide.tile_reader(0.5, 256)
    with open_slide(no_mpp_slide, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "override"
        assert slide.info.mpp_x is None  # info stays what the file records
        reader = slide.tile_reader(0.5, 128)
        assert (reader.read_px, reader.tile_size_level0) == (256, 256)
        assert reader.read(0, 0).shape == (128, 128, 3)


def test_override_beats_file_mpp(aperio_rgb: Path) -> None:
    with open_slide(aperio_rgb, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.info.mpp_x == 0.5
        assert slide.tile_reader(0.5, 256).tile_size_level0 == 512


def test_bad_arguments(aperio_rgb: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bioformats"):
        open_slide(aperio_rgb, reader="bioformats")
    for bad in (0, -1, float("nan"), "abc"):
        with pytest.raises(ConfigError, match="mpp"):
            open_slide(aperio_rgb, mpp=bad)  # type: ignore[arg-type]
    with pytest.raises(SlideOpenError, match=r"nothere\.svs.*not found"):
        open_slide(tmp_path / "nothere.svs")
    with pytest.raises(SlideOpenError, match="directory"):
        open_slide(tmp_path)
    with open_slide(aperio_rgb) as slide:
        with pytest.raises(ConfigError, match="level 5"):
            slide.read_region(0, 0, 5, 10, 10)
        with pytest.raises(ConfigError, match="width"):
            slide.read_region(0, 0, 0, 0, 10)
        with pytest.raises(ConfigError, match="tile size"):
            slide.tile_reader(0.5, 0)
        with pytest.raises(ConfigError, match="target mpp"):
            slide.tile_reader(-0.5, 256)
        with pytest.raises(ConfigError, match="target mpp"):
            slide.thumbnail(0)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_generated_slide_fails_cleanly(
    aperio_rgb: Path, tmp_path: Path, fraction: float
) -> None:
    data = aperio_rgb.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * fraction)])
    # SlideOpenError at open, or SlideError on read
    with pytest.raises(SlideError) as err, open_slide(cut) as slide:
        for x, y in GRID:
            slide.tile_reader(0.5, 256).read(x, y)
    assert "cut.svs" in str(err.value) and "\n" not in str(err.value)


def test_garbage_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.svs"
    bad.write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(range(256)) * 10)  # IFD of garbage
    with pytest.raises(SlideOpenError, match=r"garbage\.svs") as err:
        open_slide(bad)
    assert "\n" not in str(err.value)
    assert "openslide" in str(err.value) and "tiffslide" in str(err.value)


@pytest.mark.parametrize("reader", TIFF_READERS)
def test_corrupt_tile_raises_slide_error_on_read(
    aperio_rgb: Path, tmp_path: Path, reader: str
) -> None:
    import tifffile

    data = bytearray(aperio_rgb.read_bytes())
    with tifffile.TiffFile(aperio_rgb) as tif:
        page = tif.pages[0]
        k = 1 * 6 + 1  # tile (col 1, row 1) of 6 across: level-0 (256, 256)
        offset, count = page.dataoffsets[k], page.databytecounts[k]
    data[offset : offset + count] = b"\x12" * count
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(bytes(data))
    with open_slide(bad, reader=reader) as slide:
        tiles = slide.tile_reader(0.5, 256)
        assert tiles.read(0, 0).shape == (256, 256, 3)  # intact tiles still read
        with pytest.raises(SlideError, match=r"corrupt\.svs.*256x256 at \(256, 256\)") as err:
            tiles.read(256, 256)  # fast path fails to decode, backend reports it
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("reader", TIFF_READERS)
def test_threaded_reads_match(aperio_ycbcr: Path, reader: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    positions = [*GRID, (100, 50), (333, 444)]
    with open_slide(aperio_ycbcr, reader=reader) as slide:
        tiles = slide.tile_reader(0.5, 256)
        expected = [slide.read_region(x, y, 0, 256, 256) for x, y in positions]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: tiles.read(*p), positions * 3))
    for i, tile in enumerate(got):
        np.testing.assert_array_equal(tile, expected[i % len(positions)])
