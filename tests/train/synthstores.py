"""Self-contained synthetic patch-store cohorts for the training tests (fast, seeded).

Normal tiles are pink "stroma" with smooth noise; tumour tiles carry a dense pattern of small
dark "nuclei" dots on the same background. The mean colour of the two kinds differs only a
little; the texture differs a lot. A positive slide holds a minority of tumour tiles (MIL).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from wsipipe.slide import slide_fingerprint
from wsipipe.store import StoreMeta, create_store, encode_tile

TEST_ENCODER = "test_resnet.r160_in1k"  # ~0.4 M parameters, random init (no network)


def make_tile(tumour: bool, rng: np.random.Generator, px: int = 32) -> np.ndarray:
    """(px, px, 3) uint8 tile."""
    base = np.array([225.0, 170.0, 195.0]) + rng.normal(0, 6, size=3)
    img = np.broadcast_to(base, (px, px, 3)).copy()
    img += rng.normal(0, 8, size=(px, px, 1))
    if tumour:
        n_dots = max(4, (px * px) // 40)
        ys = rng.integers(0, px - 2, n_dots)
        xs = rng.integers(0, px - 2, n_dots)
        for y, x in zip(ys, xs, strict=True):
            img[y : y + 2, x : x + 2] = (90.0, 40.0, 120.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def store_meta(slide_id: str, px: int, pixels: str = "jpeg", slide_path: str = "") -> StoreMeta:
    """Metadata of a store of ``slide_path`` (its real fingerprint) or of an absent slide."""
    fp: dict[str, object] = {"size": 1, "md5_first_mb": "0" * 32, "mtime_ns": None}
    if slide_path and Path(slide_path).exists():
        fp = slide_fingerprint(slide_path)
    return StoreMeta(
        slide_id=slide_id,
        slide_path=slide_path or f"/nonexistent/{slide_id}.svs",
        slide_size=fp["size"],  # type: ignore[arg-type]
        slide_md5_1mb=str(fp["md5_first_mb"]),
        slide_mtime_ns=fp["mtime_ns"],  # type: ignore[arg-type]
        reader="openslide",
        slide_mpp=(0.5, 0.5),
        mpp_source="file",
        target_mpp=0.5,
        tile_px=px,
        level=0,
        downsample=1.0,
        read_px=px,
        tile_size_level0=px,
        overlap_px=0,
        pixels=pixels,
        jpeg_quality=90 if pixels == "jpeg" else None,
        wsipipe_version="test",
        config={},
    )


def write_store(
    path: Path,
    slide_id: str,
    n_tiles: int,
    tumour_tiles: int,
    seed: int,
    px: int = 32,
    fmt: str = "h5",
    chunk: int = 512,
) -> Path:
    """A store of ``n_tiles`` tiles, ``tumour_tiles`` of them (at random positions) tumour."""
    rng = np.random.default_rng(seed)
    tumour = np.zeros(n_tiles, dtype=bool)
    tumour[rng.choice(n_tiles, size=tumour_tiles, replace=False)] = True
    with create_store(path, fmt, store_meta(slide_id, px)) as w:
        for s in range(0, n_tiles, chunk):
            e = min(n_tiles, s + chunk)
            blobs = [encode_tile(make_tile(bool(tumour[i]), rng, px), "jpeg") for i in range(s, e)]
            coords = np.stack([np.arange(s, e) * px, np.zeros(e - s, dtype=np.int64)], axis=1)
            w.append(coords.astype(np.int64), blobs, np.ones(e - s, dtype=np.float32))
    return path


def make_cohort(
    root: Path,
    n_train: int = 8,
    n_val: int = 4,
    n_tiles: tuple[int, int] = (40, 80),
    tumour_frac: float = 0.2,
    seed: int = 0,
    px: int = 32,
    fmt: str = "h5",
    extra_rows: list[tuple[str, str, str]] | None = None,
) -> tuple[Path, Path]:
    """root/stores/<id>.h5 and root/labels.csv (balanced labels per split)."""
    rng = np.random.default_rng(seed)
    stores = root / "stores"
    rows: list[tuple[str, str, str]] = []
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for j in range(n):
            sid = f"s{k:03d}"
            label = "tumor" if j % 2 else "normal"
            n_t = int(rng.integers(n_tiles[0], n_tiles[1] + 1))
            n_tum = max(1, round(n_t * tumour_frac)) if label == "tumor" else 0
            suffix = ".h5" if fmt == "h5" else ".zarr"
            write_store(stores / f"{sid}{suffix}", sid, n_t, n_tum, seed * 1000 + k, px, fmt)
            rows.append((sid, label, split))
            k += 1
    rows += extra_rows or []
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "label", "split"])
        w.writerows(rows)
    return labels, stores


def labels_without_val(labels: Path, out: Path) -> Path:
    """``labels`` rewritten with train and test splits only (its val rows become test), as
    CAMELYON16's labels come: the run carves its validation slides."""
    import csv

    rows = list(csv.DictReader(labels.open()))
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "label", "split"])
        for r in rows:
            w.writerow([r["slide_id"], r["label"], "train" if r["split"] == "train" else "test"])
    return out


def tiny_overrides(**kw: object) -> dict[str, object]:
    """TrainConfig overrides for a fast CPU run with the tiny test encoder."""
    base: dict[str, object] = {
        "encoder": TEST_ENCODER,
        "pretrained": False,
        "dim": 32,
        "heads": 2,
        "dim_head": 16,
        "dim_inner": 64,
        "M": 8,
        "I": 32,
        "S": 8,
        "batch_size": 2,
        "epochs": 2,
        "warmup_epochs": 0.5,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "device": "cpu",
        "workers": 0,
        "progress": False,
        "tensorboard": False,
        "channels_last": False,
    }
    base.update(kw)
    return base


def cli_args(overrides: dict[str, object]) -> list[str]:
    """``wsipipe train`` command-line options for a dict of TrainConfig overrides."""
    args: list[str] = []
    for key, value in overrides.items():
        flag = key if key in ("M", "I", "S") else key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(value)]
    return args
