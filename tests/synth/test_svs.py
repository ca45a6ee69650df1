"""write_svs: an Aperio SVS that OpenSlide and tiffslide both read, with the right pixels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import openslide
import pytest
import tiffslide

from wsipipe.errors import ConfigError
from wsipipe.synth import svs
from wsipipe.synth.svs import block_average, level_shapes, write_svs

W, H = 2600, 1800  # not multiples of the tile size: edge tiles are partial
PATCH = (1000, 500, 400, 300)  # x, y, w, h of a flat colour patch
PATCH_RGB = (200, 60, 140)


def render(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
    """Smooth gradients plus one flat colour patch (level-0 coordinates)."""
    xx = x + (np.arange(w) + 0.5) * ds - 0.5
    yy = y + (np.arange(h) + 0.5) * ds - 0.5
    out = np.empty((h, w, 3), np.uint8)
    out[..., 0] = (40 + 180 * xx / W)[None, :].astype(np.uint8)
    out[..., 1] = (40 + 180 * yy / H)[:, None].astype(np.uint8)
    out[..., 2] = (128 + 60 * np.sin(xx / 150.0)[None, :] * np.cos(yy / 110.0)[:, None]).astype(
        np.uint8
    )
    px, py, pw, ph = PATCH
    inx = (xx >= px) & (xx < px + pw)
    iny = (yy >= py) & (yy < py + ph)
    out[np.ix_(iny, inx)] = PATCH_RGB
    return out


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("svs") / "grad.svs"
    write_svs(path, W, H, render, mpp=0.5, min_level_size=512)
    return path


def _read_openslide(path: Path, level: int) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as s:
        size = s.level_dimensions[level]
        return np.asarray(s.read_region((0, 0), level, size).convert("RGB")).astype(int)


def _read_tiffslide(path: Path, level: int) -> np.ndarray:
    with tiffslide.TiffSlide(path) as s:
        size = s.level_dimensions[level]
        return np.asarray(s.read_region((0, 0), level, size).convert("RGB")).astype(int)


def test_level_shapes() -> None:
    assert level_shapes(2600, 1800, 512) == [(2600, 1800), (650, 450), (162, 112)]
    assert level_shapes(6144, 4608, 1024) == [(6144, 4608), (1536, 1152), (384, 288)]
    assert level_shapes(800, 600, 1024) == [(800, 600)]


def test_openslide_reads_aperio_pyramid(slide_path: Path) -> None:
    with openslide.OpenSlide(str(slide_path)) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.objective-power"]) == pytest.approx(20)
        assert s.level_count == 3
        assert s.level_dimensions == ((W, H), (650, 450), (162, 112))
        assert s.level_downsamples[1] == pytest.approx(4.0, rel=0.01)
        assert s.level_downsamples[2] == pytest.approx(16.0, rel=0.02)
        assert "thumbnail" in s.associated_images
        thumb = s.associated_images["thumbnail"]
        assert max(thumb.size) <= 768


def test_tiffslide_reads_same_pyramid(slide_path: Path) -> None:
    with tiffslide.TiffSlide(slide_path) as s:
        assert s.properties["tiffslide.vendor"] == "aperio"
        assert float(s.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        assert s.level_count == 3
        assert s.level_dimensions == ((W, H), (650, 450), (162, 112))


@pytest.mark.parametrize("reader", [_read_openslide, _read_tiffslide])
def test_level0_pixels_match_render(slide_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    got = reader(slide_path, 0)
    want = render(0, 0, W, H, 1.0).astype(int)
    err = np.abs(got - want)
    assert err.mean() < 2.0
    px, py, pw, ph = PATCH
    inner = got[py + 8 : py + ph - 8, px + 8 : px + pw - 8].reshape(-1, 3)
    # a known colour comes back within JPEG tolerance (catches RGB/YCbCr/BGR mix-ups)
    assert np.abs(inner.mean(axis=0) - np.array(PATCH_RGB)).max() < 3
    assert np.abs(inner - np.array(PATCH_RGB)).max() <= 12


def test_both_readers_agree(slide_path: Path) -> None:
    for level in (0, 1, 2):
        a, b = _read_openslide(slide_path, level), _read_tiffslide(slide_path, level)
        assert np.abs(a - b).max() <= 2


def test_lower_levels_are_block_averages(slide_path: Path) -> None:
    level0 = _read_openslide(slide_path, 0).astype(np.uint8)
    l1 = _read_openslide(slide_path, 1)
    l2 = _read_openslide(slide_path, 2)
    ref1 = block_average(level0, 4).astype(int)
    ref2 = block_average(level0, 16).astype(int)
    assert l1.shape == ref1.shape
    assert np.abs(l1 - ref1).mean() < 2.0
    assert np.abs(l2 - ref2[: l2.shape[0], : l2.shape[1]]).mean() < 2.5


def test_block_average_exact() -> None:
    img = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    got = block_average(img, 4)
    want = img.reshape(2, 4, 3, 4, 3).astype(float).mean(axis=(1, 3))
    assert got.shape == (2, 3, 3)
    assert np.array_equal(got, np.floor(want + 0.5).astype(np.uint8))


def test_memmap_path_gives_identical_file(
    slide_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large slides buffer level 1 in a temp memmap: same bytes, no scratch left behind."""
    monkeypatch.setattr(svs, "_RAM_LIMIT_BYTES", 0)
    out = tmp_path / "mm.svs"
    write_svs(out, W, H, render, mpp=0.5, min_level_size=512)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(slide_path.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm.svs"]


def test_single_level_slide(tmp_path: Path) -> None:
    out = tmp_path / "small.svs"
    write_svs(out, 700, 500, render, mpp=0.25, app_mag=40)
    with openslide.OpenSlide(str(out)) as s:
        assert s.level_count == 1
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(s.properties["openslide.objective-power"]) == pytest.approx(40)
    with tiffslide.TiffSlide(out) as t:
        assert t.level_dimensions == ((700, 500),)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": float("nan")}, "mpp"),
        ({"tile": 100}, "tile"),
        ({"quality": 0}, "quality"),
        ({"width": 8}, "too small"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    args: dict = {"width": 600, "height": 400, "mpp": 0.5} | kwargs
    out = tmp_path / "bad.svs"
    with pytest.raises(ConfigError, match=match):
        write_svs(out, args.pop("width"), args.pop("height"), render, **args)
    assert not out.exists()


def test_bad_render_output_raises_and_leaves_nothing(tmp_path: Path) -> None:
    def broken(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        return np.zeros((h, w), np.uint8)  # no channel axis

    with pytest.raises(ConfigError, match="render"):
        write_svs(tmp_path / "b.svs", 600, 400, broken, mpp=0.5)
    assert list(tmp_path.iterdir()) == []
