"""The heatmap PNG writer: lossless for grey / RGB / RGBA, any size; zlib fallback."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from wsipipe.heatmap import png
from wsipipe.heatmap.png import encode_png, write_png, zlib_compress


@pytest.mark.parametrize(
    "shape", [(1, 1, 3), (1, 7, 3), (9, 1, 3), (33, 70, 3), (20, 31, 4), (17, 5), (6, 8, 1)]
)
def test_png_round_trips_through_pillow(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[: shape[0] // 2] = 200  # flat rows and noisy rows
    got = np.asarray(Image.open(io.BytesIO(encode_png(img))))
    assert np.array_equal(got, img.reshape(got.shape))


def test_write_png_and_bad_inputs(tmp_path):
    img = np.zeros((4, 5, 3), np.uint8)
    img[1, 2] = (255, 0, 7)
    write_png(tmp_path / "a.png", img)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "RGB" and im.size == (5, 4)
        assert np.array_equal(np.asarray(im), img)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        encode_png(np.zeros((0, 5, 3), np.uint8))


def test_zlib_fallback_without_zlib_ng(monkeypatch):
    import imagecodecs

    class Missing:
        available = False

    data = np.arange(10_000, dtype=np.uint32).reshape(100, 100)
    fast = zlib_compress(data, 2)
    monkeypatch.setattr(imagecodecs, "ZLIBNG", Missing(), raising=False)
    slow = zlib_compress(data, 2)
    for stream in (fast, slow):
        assert zlib.decompress(stream) == data.tobytes()
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode_png(img)))), img)
