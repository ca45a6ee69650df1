"""encode_tile / decode_tile on real H&E tiles."""

from __future__ import annotations

import numpy as np
import pytest

from wsipipe.errors import ConfigError, StoreError
from wsipipe.store import decode_tile, encode_tile


def test_jpeg_q90_round_trip_is_close_and_small(he_tiles: list[np.ndarray]) -> None:
    sizes = []
    for tile in he_tiles:
        data = encode_tile(tile, "jpeg", quality=90)
        assert data[:3] == b"\xff\xd8\xff"
        sizes.append(len(data))
        back = decode_tile(data)
        assert back.shape == (256, 256, 3) and back.dtype == np.uint8
        diff = np.abs(back.astype(np.int16) - tile.astype(np.int16))
        assert diff.mean() < 3.0
        assert not np.array_equal(back, tile)  # lossy, so not identical
    # target: <= 30 KB per 256 px H&E tile at quality 90
    assert np.mean(sizes) <= 30_000, sizes


def test_jpeg_quality_orders_size(he_tiles: list[np.ndarray]) -> None:
    tile = he_tiles[0]
    assert len(encode_tile(tile, "jpeg", 50)) < len(encode_tile(tile, "jpeg", 90))


def test_png_round_trip_is_exact(he_tiles: list[np.ndarray]) -> None:
    for tile in he_tiles[:3]:
        data = encode_tile(tile, "png")
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(decode_tile(data), tile)


def test_decode_into_out_returns_out(he_tiles: list[np.ndarray]) -> None:
    out = np.zeros((256, 256, 3), np.uint8)
    data = encode_tile(he_tiles[1], "png")
    assert decode_tile(memoryview(data), out=out) is out
    np.testing.assert_array_equal(out, he_tiles[1])


def test_non_contiguous_tile_is_encoded(he_tiles: list[np.ndarray]) -> None:
    view = he_tiles[2][:, ::-1]  # negative stride
    np.testing.assert_array_equal(decode_tile(encode_tile(view, "png")), view)


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a........", b"\xff\xd8\xff\xe0 truncated jpeg", b"\x89PNG\r\n\x1a\n junk"]
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(StoreError, match="re-run `wsipipe tile`"):
        decode_tile(data)


def test_decode_rejects_truncated_real_jpeg(he_tiles: list[np.ndarray]) -> None:
    data = encode_tile(he_tiles[0], "jpeg")
    with pytest.raises(StoreError):
        decode_tile(data[: len(data) // 3])


@pytest.mark.parametrize(
    ("pixels", "quality"), [("none", 90), ("webp", 90), ("jpeg", 0), ("jpeg", 101), ("jpeg", 9.5)]
)
def test_encode_rejects_bad_options(he_tiles: list[np.ndarray], pixels: str, quality: int) -> None:
    with pytest.raises(ConfigError, match=repr(pixels) if pixels != "jpeg" else "quality"):
        encode_tile(he_tiles[0], pixels, quality)


@pytest.mark.parametrize(
    "tile",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
def test_encode_rejects_bad_arrays(tile: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_tile(tile, "jpeg")
