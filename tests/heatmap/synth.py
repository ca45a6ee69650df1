"""Self-contained fixtures for the heatmap tests: a small SVS slide, its patch store, its
tissue GeoJSON and tumour annotation, and a checkpoint of a tiny random model (no network).

Slide: 1536 x 1024 level-0 px at 0.5 um/px; glass around a tissue rectangle
[128, 1408) x [128, 896); a "tumour" square [640, 896) x [384, 640) carries dark dots.
Tiles: 128 level-0 px (2 um/px, 32 px stored), on a 128-px grid over the tissue rectangle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.config import config_to_dict
from wsipipe.slide import slide_fingerprint
from wsipipe.store import StoreMeta, create_store, encode_tile

W, H, MPP = 1536, 1024, 0.5
TILE0, TILE_PX = 128, 32
TISSUE = (128, 128, 1408, 896)  # x0, y0, x1, y1
TUMOUR = (640, 384, 896, 640)
ENCODER = "test_resnet.r160_in1k"  # tiny timm model, random init


def render(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
    """(h, w, 3) uint8: pixel centres at level-0 (x + (i + .5) ds, y + (j + .5) ds)."""
    cx = x + (np.arange(w) + 0.5) * ds
    cy = y + (np.arange(h) + 0.5) * ds
    gx, gy = np.meshgrid(cx, cy)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (240, 240, 240)
    tx0, ty0, tx1, ty1 = TISSUE
    tissue = (gx >= tx0) & (gx < tx1) & (gy >= ty0) & (gy < ty1)
    img[tissue] = (225, 160, 190)
    ux0, uy0, ux1, uy1 = TUMOUR
    dots = ((gx // 8 + gy // 8) % 3 == 0) & (gx >= ux0) & (gx < ux1) & (gy >= uy0) & (gy < uy1)
    img[dots] = (90, 40, 120)
    return img.astype(np.uint8)


def tile_coords() -> np.ndarray:
    tx0, ty0, tx1, ty1 = TISSUE
    xs, ys = np.meshgrid(np.arange(tx0, tx1, TILE0), np.arange(ty0, ty1, TILE0))
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def make_slide_dir(root: Path, ids: tuple[str, ...] = ("a", "b"), pixels: str = "jpeg",
                   fmt: str = "h5") -> Path:  # fmt: skip
    """root/slides/<id>.svs, root/tile/stores/<id>.h5, root/tile/tissue/<id>.geojson,
    root/annotations/<id>.xml (tumour square). Returns the tile output folder."""
    from shapely.geometry import box

    from wsipipe.geometry import tissue_geojson, write_geojson
    from wsipipe.geometry.annotations import write_asap_xml
    from wsipipe.synth.svs import write_svs

    tile_out = root / "tile"
    (root / "slides").mkdir(parents=True, exist_ok=True)
    (tile_out / "stores").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    slide = root / "slides" / "slide.svs"
    if not slide.exists():
        write_svs(slide, W, H, render, MPP, tile=256, min_level_size=512)
    coords = tile_coords()
    fp: dict[str, Any] = slide_fingerprint(slide)
    for sid in ids:
        meta = StoreMeta(
            slide_id=sid, slide_path=str(slide), slide_size=fp["size"],
            slide_md5_1mb=fp["md5_first_mb"], slide_mtime_ns=fp["mtime_ns"],
            reader="openslide", slide_mpp=(MPP, MPP),
            mpp_source="file", target_mpp=TILE0 * MPP / TILE_PX, tile_px=TILE_PX, level=0,
            downsample=1.0, read_px=TILE0, tile_size_level0=TILE0, overlap_px=0,
            pixels=pixels, jpeg_quality=90 if pixels == "jpeg" else None,
            wsipipe_version="test", config={},
        )  # fmt: skip
        suffix = ".h5" if fmt == "h5" else ".zarr"
        with create_store(tile_out / "stores" / f"{sid}{suffix}", fmt, meta) as w:
            blobs = None
            if pixels != "none":
                tiles = [
                    render(int(x), int(y), TILE_PX, TILE_PX, TILE0 / TILE_PX) for x, y in coords
                ]
                blobs = [encode_tile(t, pixels) for t in tiles]
            w.append(coords, blobs, np.ones(len(coords), np.float32))
        write_geojson(tile_out / "tissue" / f"{sid}.geojson", tissue_geojson([box(*TISSUE)]))
        write_asap_xml(root / "annotations" / f"{sid}.xml", [box(*TUMOUR)])
    return tile_out


def make_checkpoint(path: Path, method: str = "ips", M: int = 6, I: int = 16, S: int = 5,  # noqa: E741
                    seed: int = 0, mode: str = "pixels", stores: str = "") -> Path:  # fmt: skip
    """A checkpoint of a tiny random model in the training stage's format (``mode``
    "features": an aggregator over the frozen ENCODER's cached features; ``stores``: the
    run's stores, as a training run records them)."""
    import torch

    from wsipipe.encoders import create_encoder
    from wsipipe.train.checkpoint import save_checkpoint
    from wsipipe.train.config import TrainConfig
    from wsipipe.train.model import build_model

    cfg = TrainConfig(
        encoder=ENCODER, pretrained=False, dim=32, heads=2, dim_head=16, dim_inner=64,
        method=method, M=M, I=I, S=S, device="cpu", workers=0, channels_last=False,
        batch_size=2, epochs=2, warmup_epochs=0.5, mode=mode, stores=stores,  # type: ignore[arg-type]
    )  # fmt: skip
    fdim = create_encoder(ENCODER, pretrained=False).num_features if mode == "features" else 0
    torch.manual_seed(seed)
    model = build_model(cfg, 2, fdim)
    save_checkpoint(path, {
        "model": model.state_dict(), "epoch": 1, "step": 1, "config": config_to_dict(cfg),
        "classes": ["normal", "tumor"], "feature_dim": fdim, "wsipipe_version": "test",
    })  # fmt: skip
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
