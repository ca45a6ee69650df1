"""The real slides in ../shared/data/real/slides (skipped when the shared data is absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from tests.conftest import real_slide
from wsipipe.errors import MissingMppError, SlideError, SlideOpenError
from wsipipe.slide import open_slide, slide_changes, slide_fingerprint


def test_cmu_small_region() -> None:
    path = real_slide("CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        assert slide.reader == "openslide" and slide.info.vendor == "aperio"
        assert (slide.info.width, slide.info.height) == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and slide.info.objective_power == 20
        reader = slide.tile_reader(0.5, 256)
        assert (reader.level, reader.tile_size_level0, reader.read_px) == (0, 257, 257)
        assert not reader.fast  # 257 px reads do not fit the file's 240 px tiles
        tile = reader.read(1024, 1024)
        assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
        assert tile.std() > 10  # tissue, not background
        # at the native mpp with 240 px tiles the fast path applies and matches OpenSlide
        native = slide.tile_reader(slide.mpp, 240)
        assert native.fast
        for x, y in [(0, 0), (960, 1200), (2160, 2880)]:  # incl. the bottom-right edge tile
            np.testing.assert_array_equal(native.read(x, y), slide.read_region(x, y, 0, 240, 240))
        encoded = native.read_encoded(960, 1200)
        assert encoded is not None and b"Adobe" in encoded  # Aperio RGB-coded JPEG, fixed
        np.testing.assert_array_equal(imagecodecs.jpeg_decode(encoded), native.read(960, 1200))
        thumb, ds = slide.thumbnail(8.0)
        assert ds == pytest.approx(8.0 / 0.499)
        assert thumb.shape == (round(2967 / ds), round(2220 / ds), 3)


def test_tcga_jpeg2000_without_mpp() -> None:
    path = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    with open_slide(path) as slide:
        assert slide.info.mpp_x is None and slide.info.objective_power is None
        with pytest.raises(MissingMppError) as err:
            _ = slide.mpp
        message = str(err.value)
        assert "tcga-cr-7395-01a-01-ts1.svs" in message and "--mpp" in message
        assert "\n" not in message
    with open_slide(path, mpp=0.5) as slide:
        reader = slide.tile_reader(0.5, 256)
        assert not reader.fast  # JPEG 2000: backend decode
        tile = reader.read(2048, 1536)
        assert tile.shape == (256, 256, 3) and tile.std() > 10  # JPEG 2000 decoded to tissue
        coarse = slide.tile_reader(1.0, 256)
        assert coarse.level == 1 and coarse.read(2048, 1536).shape == (256, 256, 3)


def test_ndpi() -> None:
    path = real_slide("test3-DAPI-2-387.ndpi")
    with open_slide(path) as slide:
        assert slide.reader == "openslide" and slide.info.vendor == "hamamatsu"
        assert slide.mpp == pytest.approx(0.228, abs=1e-3)
        reader = slide.tile_reader(0.5, 256)
        assert reader.level == 1 and not reader.fast
        assert reader.read(1024, 1024).shape == (256, 256, 3)


def test_ome_tiff_falls_back_to_tiffslide() -> None:
    path = real_slide("qupath_OS-1-detail.ome.tif")
    with open_slide(path) as slide:
        assert slide.info.reader == "tiffslide"
        assert slide.mpp == pytest.approx(0.227, abs=1e-3)
        tile = slide.tile_reader(0.5, 256).read(0, 0)
        assert tile.shape == (256, 256, 3) and tile.std() > 10
        # native mpp with the file's 512 px JPEG tiles: fast path equals tiffslide's read
        native = slide.tile_reader(slide.mpp, 512)
        assert native.fast
        for x, y in [(0, 0), (512, 512), (1024, 0)]:  # (1024, 0) is a partial edge tile
            np.testing.assert_array_equal(native.read(x, y), slide.read_region(x, y, 0, 512, 512))
        # its tiles are RGB-tagged but JFIF (decoded as YCbCr, as tifffile does): the
        # standalone stream needs no fix and decodes to the same pixels
        encoded = native.read_encoded(0, 0)
        assert encoded is not None and b"Adobe" not in encoded
        np.testing.assert_array_equal(imagecodecs.jpeg_decode(encoded), native.read(0, 0))
    with pytest.raises(SlideOpenError, match="openslide"):
        open_slide(path, reader="openslide")


def test_flat_tiff_without_mpp() -> None:
    path = real_slide("kidney-48-5.tif")
    with open_slide(path) as slide:
        assert slide.reader == "tiffslide" and slide.info.level_count == 1
        assert (slide.info.width, slide.info.height) == (1493, 901)
        with pytest.raises(MissingMppError):
            _ = slide.mpp
    with open_slide(path, mpp=1.0) as slide:
        thumb, ds = slide.thumbnail(8.0)
        assert ds == 8.0 and thumb.shape == (round(901 / 8), round(1493 / 8), 3)


def test_malformed_dicom() -> None:
    path = real_slide("pathml_small_dicom.dcm")
    with pytest.raises(SlideOpenError) as err:
        open_slide(path)
    message = str(err.value)
    assert "pathml_small_dicom.dcm" in message and "\n" not in message
    assert "openslide:" in message and "tiffslide:" in message


def test_truncated_real_svs(tmp_path: Path) -> None:
    source = real_slide("CMU-1-Small-Region.svs")
    cut = tmp_path / "CMU-1-truncated.svs"
    with source.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(100_000))
    with pytest.raises(SlideError) as err, open_slide(cut) as slide:
        slide.tile_reader(0.5, 256).read(0, 0)
    assert "CMU-1-truncated.svs" in str(err.value) and "\n" not in str(err.value)


def test_fingerprint_of_real_slide(tmp_path: Path) -> None:
    source = real_slide("CMU-1-Small-Region.svs")
    fp = slide_fingerprint(source)
    assert fp["size"] == source.stat().st_size
    assert fp["mtime_ns"] == source.stat().st_mtime_ns
    copy = tmp_path / "copy.svs"
    shutil.copyfile(source, copy)  # same bytes, a new mtime: the content identity holds
    same = slide_fingerprint(copy)
    assert (same["size"], same["md5_first_mb"]) == (fp["size"], fp["md5_first_mb"])
    recorded = (int(str(fp["size"])), str(fp["md5_first_mb"]), int(str(fp["mtime_ns"])))
    assert slide_changes(copy, *recorded) == ""
    with copy.open("r+b") as fh:  # one byte changed in the first MiB
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert "md5" in slide_changes(copy, *recorded)
