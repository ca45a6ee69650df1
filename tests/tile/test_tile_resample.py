"""TileConfig.resample: validation, the config hash, and what tile_slide stores for each mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_tile
from wsipipe.config import build_config
from wsipipe.errors import ConfigError
from wsipipe.store import open_store
from wsipipe.synth.svs import write_svs
from wsipipe.tile.config import TileConfig
from wsipipe.tile.inputs import SlideInput
from wsipipe.tile.run import _tile_hash, tile_slide


def test_resample_is_validated_and_changes_the_hash() -> None:
    assert TileConfig().resample == "dct"
    with pytest.raises(ConfigError, match=r"`resample` = 'lanczos' is not one of dct, exact; fix"):
        TileConfig(resample="lanczos")
    # stores made with the other mode are not taken as done for this one
    assert _tile_hash(TileConfig()) != _tile_hash(TileConfig(resample="exact"))
    # set from a tile config YAML (`wsipipe tile --config`), like every TileConfig field
    assert build_config(TileConfig, {"resample": "exact"}).resample == "exact"


@pytest.fixture(scope="module")
def fine_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3072x2048 px at 0.25 um/px of real H&E texture with a glass margin (256 px tiles)."""
    tex = np.asarray(Image.open(real_tile("tiatoolbox_target_image.png")).convert("RGB"))

    def render(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        ys = (y + np.arange(h)) % tex.shape[0]
        xs = (x + np.arange(w)) % tex.shape[1]
        out = tex[ys[:, None], xs[None, :]]
        glass = ((x + np.arange(w))[None, :] < 512) | ((y + np.arange(h))[:, None] < 512)
        return np.ascontiguousarray(np.where(glass[..., None], np.uint8(240), out))

    path = tmp_path_factory.mktemp("resample") / "fine.svs"
    write_svs(path, 3072, 2048, render, mpp=0.25)
    return path


def test_tile_slide_records_and_applies_the_mode(fine_svs: Path, tmp_path: Path) -> None:
    tiles, coords = {}, {}
    for mode in ("dct", "exact"):
        work = tmp_path / mode
        work.mkdir()
        cfg = replace(TileConfig(), resample=mode)
        outputs, info = tile_slide(SlideInput("s", fine_svs), cfg, work, threads=2)
        assert info["dct_factor"] == (2 if mode == "dct" else 1) and info["n_tiles"] >= 10
        with open_store(outputs["stores/s.h5"]) as store:
            assert store.meta.config["resample"] == mode  # recorded in the store metadata
            assert store.meta.read_px == 512 and store.meta.tile_px == 256
            coords[mode] = np.asarray(store.coords)
            tiles[mode] = np.stack([store.read_tile(i) for i in range(len(store))])
    np.testing.assert_array_equal(coords["dct"], coords["exact"])  # same tiles, same places
    # both re-encoded at q90 (which adds its own ~1-2 levels of noise to each): close, not equal
    diff = np.abs(tiles["dct"].astype(np.int16) - tiles["exact"].astype(np.int16))
    assert 0 < diff.mean() <= 2.5


def test_pipelined_chunks_keep_order_and_match_one_thread(fine_svs: Path) -> None:
    """With a pool the next chunk is decoded while this one is stored: same chunks, same
    order, same bytes as the single-threaded loop."""
    from wsipipe.slide import open_slide
    from wsipipe.tile.run import CHUNK, _encoded_chunks

    grid = np.array([(x, y) for y in range(512, 1536, 512) for x in range(512, 2560, 512)])
    coords = np.concatenate([grid] * ((2 * CHUNK + 37) // len(grid) + 1))[: 2 * CHUNK + 37]
    frac = np.linspace(0.5, 1.0, len(coords)).astype(np.float32)
    cfg = TileConfig()
    with open_slide(fine_svs) as slide:
        reader = slide.tile_reader(cfg.target_mpp, cfg.tile_px, resample=cfg.resample)
        runs = {t: list(_encoded_chunks(reader, coords, frac, cfg, t)) for t in (1, 2)}
    for chunks in runs.values():
        assert [len(c) for c, *_ in chunks] == [CHUNK, CHUNK, 37]
        np.testing.assert_array_equal(np.concatenate([c for c, *_ in chunks]), coords)
        np.testing.assert_array_equal(np.concatenate([f for _, f, *_ in chunks]), frac)
    assert [t for *_, t, _ in runs[1]] == [t for *_, t, _ in runs[2]]  # identical bytes


def test_coords_only_stores_read_back_with_their_recorded_mode(
    fine_svs: Path, tmp_path: Path
) -> None:
    """Training from a coords-only store reads the slide with the mode the store records;
    a store from before the option (no "resample" in its config) reads as "exact"."""
    from wsipipe.slide import open_slide
    from wsipipe.slide.dctscale import stored_resample
    from wsipipe.store import describe_store
    from wsipipe.train.data import _SlideReader

    assert stored_resample({}) == "exact" and stored_resample({"resample": "dct"}) == "dct"
    assert stored_resample({"resample": 3}) == "exact"
    with open_slide(fine_svs) as slide:
        want = {m: slide.tile_reader(0.5, 256, resample=m) for m in ("dct", "exact")}
        for mode in ("dct", "exact"):
            work = tmp_path / mode
            work.mkdir()
            cfg = replace(TileConfig(), pixels="none", resample=mode)
            outputs, _ = tile_slide(SlideInput("s", fine_svs), cfg, work)
            source = _SlideReader(describe_store("s", outputs["stores/s.h5"]))
            try:
                assert source.reader.resample == mode
                got = source.read(np.array([0, 3]))
                for j, i in enumerate((0, 3)):
                    x, y = (int(v) for v in source.coords[i])
                    np.testing.assert_array_equal(got[j], want[mode].read(x, y))
            finally:
                source.close()
