"""StoreMeta validation and its attrs round trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np
import pytest

from wsipipe.errors import StoreError
from wsipipe.store import StoreMeta


def test_attrs_round_trip(meta_factory: Callable[..., StoreMeta]) -> None:
    meta = meta_factory(level_dim=(40000, 30000))
    attrs = meta.to_attrs()
    assert attrs["slide_mpp"] == [0.2501, 0.2499]
    assert json.loads(str(attrs["config"])) == meta.config
    json.dumps(attrs)  # flat and JSON-able
    assert StoreMeta.from_attrs(attrs) == meta


def test_optional_fields_are_left_out(meta_factory: Callable[..., StoreMeta]) -> None:
    meta = meta_factory(pixels="none", jpeg_quality=None)
    attrs = meta.to_attrs()
    assert "jpeg_quality" not in attrs and "level_dim" not in attrs
    back = StoreMeta.from_attrs(attrs)
    assert back == meta and back.jpeg_quality is None and back.level_dim is None


def test_from_attrs_accepts_hdf5_types(
    tmp_path: Any, meta_factory: Callable[..., StoreMeta]
) -> None:
    meta = meta_factory(pixels="png", jpeg_quality=None, level_dim=(100, 200))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.attrs.update(meta.to_attrs())
        f.attrs["unrelated"] = 3
    with h5py.File(tmp_path / "a.h5", "r") as f:
        attrs = dict(f.attrs)
    assert isinstance(attrs["slide_mpp"], np.ndarray)
    back = StoreMeta.from_attrs(attrs)
    assert back == meta
    assert type(back.tile_px) is int and type(back.slide_mpp[0]) is float


def test_normalises_types(meta_factory: Callable[..., StoreMeta]) -> None:
    meta = meta_factory(
        slide_mpp=[0.5, 0.5],
        tile_px=np.int64(256),
        slide_md5_1mb="ABCDEF0123456789ABCDEF0123456789",
    )
    assert meta.slide_mpp == (0.5, 0.5)
    assert type(meta.tile_px) is int
    assert meta.slide_md5_1mb == "abcdef0123456789abcdef0123456789"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"tile_px": 0}, "tile_px=0"),
        ({"tile_px": True}, "`tile_px` must be a number, got True"),
        ({"read_px": "x"}, "`read_px` must be a number"),
        ({"slide_size": 0}, "slide_size=0"),
        ({"level": -1}, "level=-1"),
        ({"pixels": "webp"}, "`pixels` = 'webp' is not one of"),
        ({"reader": "pil"}, "`reader` = 'pil' is not one of"),
        ({"mpp_source": "guess"}, "`mpp_source` = 'guess' is not one of"),
        ({"jpeg_quality": None}, "jpeg_quality=None"),
        ({"jpeg_quality": 101}, "jpeg_quality=101"),
        ({"pixels": "png"}, "jpeg_quality=90"),
        ({"slide_md5_1mb": "xyz"}, "slide_md5_1mb='xyz'"),
        ({"slide_mpp": (0.25, -0.25)}, "slide_mpp"),
        ({"slide_mpp": (0.25,)}, "`slide_mpp` must hold 2 values"),
        ({"slide_mpp": (0.25, float("nan"))}, "slide_mpp"),
        ({"target_mpp": 0.0}, "target_mpp=0.0"),
        ({"downsample": float("inf")}, "downsample=inf"),
        ({"overlap_px": 256}, "overlap_px=256"),
        ({"overlap_px": -1}, "overlap_px=-1"),
        ({"tile_size_level0": 1024}, "tile_size_level0=1024"),
        ({"level_dim": (0, 5)}, "level_dim"),
        ({"slide_id": ""}, "slide_id is empty"),
        ({"config": {"path": object()}}, "config is not JSON"),
        ({"config": ["a"]}, "`config` must be a mapping"),
    ],
)
def test_invalid_values_raise_store_error(
    meta_factory: Callable[..., StoreMeta], override: dict[str, Any], needle: str
) -> None:
    with pytest.raises(StoreError) as info:
        meta_factory(**override)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_consistent_level_read_is_accepted(meta_factory: Callable[..., StoreMeta]) -> None:
    # level 1 of a 4x pyramid: 256 px read, footprint 1024 level-0 px, stored as 256 px
    meta = meta_factory(level=1, downsample=4.0, read_px=256, tile_size_level0=1024, target_mpp=1.0)
    assert meta.tile_size_level0 == 1024


def test_from_attrs_names_missing_key(meta_factory: Callable[..., StoreMeta]) -> None:
    attrs = meta_factory().to_attrs()
    del attrs["read_px"]
    with pytest.raises(StoreError, match="'read_px' is missing"):
        StoreMeta.from_attrs(attrs)


def test_from_attrs_rejects_bad_config_json(meta_factory: Callable[..., StoreMeta]) -> None:
    attrs = meta_factory().to_attrs()
    attrs["config"] = "{not json"
    with pytest.raises(StoreError, match="'config' is not valid JSON"):
        StoreMeta.from_attrs(attrs)
