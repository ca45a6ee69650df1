"""Features mode: each tile's frozen-encoder feature, computed once, cached beside the stores.

Layout: ``<tile out>/features/<encoder tag>/<slide_id>.h5`` -- a TRIDENT-style feature file
(:mod:`wsipipe.store.features`: ``features`` (N, F) in store order, ``coords`` (N, 2)),
written chunk by chunk (never the whole matrix in RAM) into a temporary file renamed into
place when complete -- and ``<slide_id>.json`` (encoder, weights, input size, N, F, store),
written last as the completion record. A cache whose record does not match the current
encoder settings or the store's tile count is recomputed; a killed embedding resumes at the
first slide without a record.

IPS/DBPS then train on the features (the official CAMELYON16 setting: F=2048, M=I=5000 for
IPS; M=100, I=500, S=400 for DBPS) with the features encoder LayerNorm -> Linear -> BN -> ReLU;
ABMIL and mean pooling on the same features.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsipipe import __version__
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text, check_slide_id
from wsipipe.store import SlideSource, open_store
from wsipipe.store.features import write_feature_file
from wsipipe.train.config import TrainConfig
from wsipipe.train.data import ChunkPipeline
from wsipipe.train.distributed import DistInfo, barrier, broadcast_object


def encoder_tag(name: str, input_px: int = 0) -> str:
    """A directory-safe tag for an encoder setting, e.g. ``resnet50`` or ``resnet50_224px``."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "encoder"
    return f"{tag}_{input_px}px" if input_px else tag


def default_features_dir(stores_dir: Path, cfg: TrainConfig) -> Path:
    root = stores_dir.parent if stores_dir.name == "stores" else stores_dir
    return root / "features" / encoder_tag(cfg.encoder, cfg.input_px)


def features_dir_for(stores_dir: Path | None, cfg: TrainConfig) -> Path:
    if cfg.features_dir:
        return Path(cfg.features_dir)
    if stores_dir is None:
        raise ConfigError("features mode: pass --features-dir (no --stores directory given)")
    return default_features_dir(stores_dir, cfg)


def weights_fingerprint(weights: str) -> str:
    """Which weights file embedded a cache: path, size and mtime ("" = the encoder's own)."""
    if not weights:
        return ""
    p = Path(weights)
    st = p.stat() if p.exists() else None
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}" if st else str(p)


def _record(cfg: TrainConfig, spec: SlideSource) -> dict[str, Any]:
    return {
        "encoder": cfg.encoder,
        "pretrained": cfg.pretrained,
        "weights": weights_fingerprint(cfg.weights),
        "input_px": cfg.input_px,
        "n_tiles": spec.n_tiles,
        "store": str(Path(spec.path).resolve()),
    }


def cached_spec(fdir: Path, spec: SlideSource, cfg: TrainConfig) -> SlideSource | None:
    """The features spec of ``spec`` if its cache is complete and current, else None."""
    sid = check_slide_id(spec.slide_id)
    h5, rec = fdir / f"{sid}.h5", fdir / f"{sid}.json"
    try:
        info = json.loads(rec.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    want = _record(cfg, spec)
    if any(info.get(k) != v for k, v in want.items() if k != "store") or not h5.exists():
        return None
    return SlideSource(sid, "features", str(h5), spec.n_tiles, feature_dim=int(info["dim"]))


def _store_coords(spec: SlideSource) -> tuple[np.ndarray, dict[str, Any]]:
    """The store's coords and CLAM/TRIDENT's attributes of them."""
    with open_store(spec.path) as store:
        meta = store.meta
        coords = np.asarray(store.coords, dtype=np.int64)
    attrs = {
        "patch_size": int(meta.read_px),
        "patch_level": int(meta.level),
        "patch_size_level0": int(meta.tile_size_level0),
        "target_mpp": float(meta.target_mpp),
        "tile_px": int(meta.tile_px),
        "name": spec.slide_id,
    }
    return coords, attrs


def _embed_one(
    encoder: torch.nn.Module,
    chunks: Any,
    spec: SlideSource,
    fdir: Path,
    cfg: TrainConfig,
    device: torch.device,
    amp: torch.dtype | None,
) -> SlideSource:
    sid = spec.slide_id
    dim = int(getattr(encoder, "out_dim", 0))
    coords, coords_attrs = _store_coords(spec)
    record = _record(cfg, spec)
    attrs = {**{k: str(v) for k, v in record.items()}, "wsipipe_version": __version__}
    with write_feature_file(fdir / f"{sid}.h5", spec.n_tiles, dim, coords, coords_attrs,
                            attrs) as out:  # fmt: skip
        for idx, tiles in chunks:
            with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                feats = encoder(tiles.to(device, non_blocking=True)).float()  # (k, F)
            out.write(idx.numpy(), feats.cpu().numpy())
    atomic_write_text(fdir / f"{sid}.json", json.dumps({**record, "dim": dim}))
    return SlideSource(sid, "features", str(fdir / f"{sid}.h5"), spec.n_tiles, feature_dim=dim)


def embed_specs(
    specs: Sequence[SlideSource],
    fdir: Path,
    cfg: TrainConfig,
    device: torch.device,
    amp: torch.dtype | None,
    dist: DistInfo,
    on_slide: Callable[[str], None] | None = None,
) -> list[SlideSource]:
    """Features specs for ``specs``; missing / stale caches are computed first (slides
    sharded over ranks, then a barrier)."""
    from wsipipe.encoders import create_encoder

    fdir.mkdir(parents=True, exist_ok=True)
    # rank 0 decides what is missing (a rank that looked later could see rank 0's first
    # outputs and shard a different list)
    todo = broadcast_object(
        [i for i, s in enumerate(specs) if cached_spec(fdir, s, cfg) is None], dist
    )
    mine = todo[dist.rank :: dist.world_size]
    if mine:
        torch.manual_seed(cfg.seed)  # identical frozen weights on every rank when random
        encoder = create_encoder(
            cfg.encoder,
            pretrained=cfg.pretrained,
            weights=cfg.weights or None,
            channels_last=cfg.channels_last,
        )
        encoder.to(device).eval()
        pipeline = ChunkPipeline(specs, cfg.input_px, cfg.workers, cfg.prefetch, device, cfg.seed)
        stream = pipeline.stream(mine, cfg.embed_batch)
        for pos in mine:
            _embed_one(encoder, stream.slide(pos), specs[pos], fdir, cfg, device, amp)
            if on_slide is not None:
                on_slide(specs[pos].slide_id)
        del stream
        pipeline.close()
    barrier(dist)
    out = []
    for s in specs:
        spec = cached_spec(fdir, s, cfg)
        if spec is None:
            raise ConfigError(f"{fdir}: features of {s.slide_id} missing after the embed step")
        out.append(spec)
    dims = {s.feature_dim for s in out}
    if len(dims) > 1:
        raise ConfigError(f"{fdir}: cached features have different widths {sorted(dims)}")
    return out
