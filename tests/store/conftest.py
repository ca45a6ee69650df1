"""Fixtures for the patch-store tests: store metadata and real H&E tiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_tile
from wsipipe.store import StoreMeta

TCGA_TILES = [f"TCGA-3X-AAVA-01Z-00-DX1_0_0_{i}_506.jpg" for i in range(6)]


def make_meta(**overrides: Any) -> StoreMeta:
    """A valid StoreMeta for 256 px tiles at 0.5 um/px read at level 0 of a 0.25 um/px slide."""
    fields: dict[str, Any] = dict(
        slide_id="TCGA-XX-0001",
        slide_path="/data/slides/TCGA-XX-0001.svs",
        slide_size=123_456_789,
        slide_md5_1mb="0123456789abcdef0123456789abcdef",
        reader="openslide",
        slide_mpp=(0.2501, 0.2499),
        mpp_source="file",
        target_mpp=0.5,
        tile_px=256,
        level=0,
        downsample=1.0,
        read_px=512,
        tile_size_level0=512,
        overlap_px=0,
        pixels="jpeg",
        jpeg_quality=90,
        wsipipe_version="0.1.0",
        config={"target_mpp": 0.5, "tile_px": 256, "tissue": {"min_fraction": 0.5}},
    )
    fields.update(overrides)
    return StoreMeta(**fields)


@pytest.fixture
def meta_factory() -> Callable[..., StoreMeta]:
    return make_meta


@pytest.fixture(scope="session")
def he_tiles() -> list[np.ndarray]:
    """Ten real 256 px H&E tiles: six TCGA tiles and four crops of the tiatoolbox target."""
    tiles = [np.asarray(Image.open(real_tile(n)).convert("RGB")) for n in TCGA_TILES]
    big = np.asarray(Image.open(real_tile("tiatoolbox_target_image.png")).convert("RGB"))
    tiles += [big[y : y + 256, x : x + 256] for y in (0, 500) for x in (100, 600)]
    out = [np.ascontiguousarray(t) for t in tiles]
    assert all(t.shape == (256, 256, 3) and t.dtype == np.uint8 for t in out)
    return out
