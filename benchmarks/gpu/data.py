"""The benchmark's data, built on the machine's local disk: zarr patch stores of real H&E
JPEG tiles (repeated to N), labels CSVs of one-batch cohorts, and a features-mode cache.

Tile pixels come from ``shared/data/real/tiles`` (next to or inside the checkout; TCGA
256 / 512 px JPEG tiles, cut to the store's tile size and re-encoded as ``wsipipe tile``
stores them, JPEG q90); without them, synthetic H&E-like tiles. A store is written under a
dot-name and renamed into place when complete, so a cut-off run never leaves one that a
re-run would take for done.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from benchmarks.gpu.settings import repo_root
from wsipipe.store import StoreMeta, create_store, describe_store, encode_tile
from wsipipe.store.codec import decode_tile
from wsipipe.train.config import TrainConfig

_CHUNK = 4096  # tiles appended per call


def real_tiles_dir(given: str = "") -> Path | None:
    """``given`` (``--tiles``), else ``shared/data/real/tiles`` inside or next to the checkout."""
    root = repo_root()
    cands = [Path(given)] if given else []
    cands += [root / "shared/data/real/tiles", root.parent / "shared/data/real/tiles"]
    for cand in cands:
        if cand.is_dir() and any(cand.glob("*.jpg")):
            return cand
    return None


def tile_pool(px: int, limit: int = 64, given: str = "") -> tuple[list[bytes], str]:
    """Distinct encoded (JPEG q90) px x px tiles and where their pixels come from."""
    src = real_tiles_dir(given)
    crops: list[np.ndarray] = []
    if src is not None:
        for f in sorted(src.glob("*.jpg")):
            img = decode_tile(f.read_bytes())
            h, w = img.shape[:2]
            for y in range(0, h - px + 1, px):
                for x in range(0, w - px + 1, px):
                    crops.append(np.ascontiguousarray(img[y : y + px, x : x + px]))
    if src is None or not crops:  # no real tiles here: synthetic H&E-like texture
        from benchmarks.bench_train import _tile

        rng = np.random.default_rng(0)
        crops = [_tile(rng, px, tumour=i % 4 == 0) for i in range(16)]
        where = f"synthetic H&E-like tiles (no real {px} px JPEG tiles found)"
    else:
        name = f"{src.parent.name}/{src.name}"
        where = f"real H&E JPEG tiles from {name} ({min(limit, len(crops))} distinct)"
    return [encode_tile(c, "jpeg", 90) for c in crops[:limit]], where


def _meta(sid: str, px: int) -> StoreMeta:
    return StoreMeta(
        slide_id=sid, slide_path=f"/bench/{sid}.svs", slide_size=1, slide_md5_1mb="0" * 32,
        reader="openslide", slide_mpp=(0.5, 0.5), mpp_source="file", target_mpp=0.5,
        tile_px=px, level=0, downsample=1.0, read_px=px, tile_size_level0=px, overlap_px=0,
        pixels="jpeg", jpeg_quality=90, wsipipe_version="bench", config={},
    )  # fmt: skip


def write_store(stores: Path, sid: str, n: int, pool: list[bytes], px: int) -> Path:
    """``stores/<sid>.zarr`` of ``n`` tiles cycling through ``pool``; reused when complete."""
    path = stores / f"{sid}.zarr"
    if path.exists():
        try:
            if describe_store(sid, path).n_tiles == n:
                return path
        except Exception:  # incomplete or foreign: rebuilt below
            pass
        shutil.rmtree(path)
    tmp = stores / f".{sid}.partial.zarr"
    if tmp.exists():
        shutil.rmtree(tmp)
    with create_store(tmp, "zarr", _meta(sid, px)) as w:
        for s in range(0, n, _CHUNK):
            idx = np.arange(s, min(n, s + _CHUNK))
            coords = np.stack([(idx % 1000) * px, (idx // 1000) * px], axis=1).astype(np.int64)
            w.append(coords, [pool[i % len(pool)] for i in idx], np.ones(idx.size, np.float32))
    tmp.rename(path)
    return path


def link_store(stores: Path, sid: str, target: Path) -> None:
    """Another slide id for an existing store (a symlink: same tiles, no extra disk)."""
    link = stores / f"{sid}.zarr"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.name)


def write_labels(path: Path, train: list[tuple[str, str]], val: list[tuple[str, str]]) -> Path:
    rows = [(s, lab, "train") for s, lab in train] + [(s, lab, "val") for s, lab in val]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("slide_id", "label", "split"), *rows])
    return path


def batch_cohort(root: Path, stores: Path, big: str, small: str, batch: int) -> Path:
    """Labels of one optimiser step: the big slide + (batch - 1) small ones in training,
    two small slides (one per class) for validation, which the benchmark never runs."""
    names = [f"{small}_{i}" for i in range(max(batch - 1, 0) + 2)]
    for name in names:
        link_store(stores, name, stores / f"{small}.zarr")
    train = [(big, "tumor")] + [(n, "normal") for n in names[: batch - 1]]
    val = [(names[-2], "normal"), (names[-1], "tumor")]
    return write_labels(root / f"labels_{big}_b{batch}.csv", train, val)


def features_cache(stores: Path, fdir: Path, labels: Path, cfg: TrainConfig, dim: int) -> None:
    """The features-mode cache of every slide of ``labels`` (random float16 rows, F = dim),
    in the layout training looks up for ``cfg`` (``<fdir>/<slide>.h5`` + ``<slide>.json``,
    the record :func:`wsipipe.train.features.cached_spec` checks); one feature file, linked
    for the other slides (they share one store, so one N)."""
    from wsipipe.fileio import atomic_write_text
    from wsipipe.store.features import write_feature_file
    from wsipipe.train.features import _record

    fdir.mkdir(parents=True, exist_ok=True)
    with labels.open() as fh:
        sids = [r["slide_id"] for r in csv.DictReader(fh)]
    first: Path | None = None
    for sid in sids:
        spec = describe_store(sid, stores / f"{sid}.zarr")
        h5 = fdir / f"{sid}.h5"
        if first is None:
            rng = np.random.default_rng(0)
            coords = np.zeros((spec.n_tiles, 2), np.int64)
            with write_feature_file(h5, spec.n_tiles, dim, coords, {}, {}) as out:
                for s in range(0, spec.n_tiles, _CHUNK):
                    idx = np.arange(s, min(spec.n_tiles, s + _CHUNK))
                    out.write(idx, rng.standard_normal((idx.size, dim), dtype=np.float32))
            first = h5
        elif not h5.exists():
            h5.symlink_to(first.name)
        atomic_write_text(fdir / f"{sid}.json", json.dumps({**_record(cfg, spec), "dim": dim}))
