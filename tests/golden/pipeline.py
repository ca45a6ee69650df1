"""A small generated cohort through tile -> train -> heatmap, reduced to content digests.

The digests cover every tile output (store coords, tile bytes, tissue fractions and
metadata; QC PNG pixels; tissue GeoJSON) and every heatmap output (score tables, GeoJSON, pyramidal
TIFF, overlay and gallery PNGs, predictions). Paths and version strings, which differ between
checkouts, are left out. ``tests/golden/outputs.json`` holds the digests the pipeline gave
before the architecture refactor (issue 11); `test_golden.py` checks they did not change.

Regenerate (only when an output is meant to change, and say why in the commit):
``WSIPIPE_WRITE_GOLDEN=1 python -m pytest tests/golden``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

WSIPIPE = [sys.executable, "-m", "wsipipe"]
# metadata fields that name places or versions, not content
_VOLATILE = {"slide_path", "wsipipe_version", "checkpoint", "thumbnail", "annotations"}
# fields new code may add to stores / tables; compared only when the reference has them
STORE_META_KEYS = (
    "slide_id", "slide_size", "slide_md5_1mb", "reader", "slide_mpp", "mpp_source",
    "target_mpp", "tile_px", "level", "downsample", "read_px", "tile_size_level0",
    "overlap_px", "pixels", "jpeg_quality", "level_dim",
)  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def png_pixels_digest(path: Path) -> str:
    """Digest of a PNG's decoded pixels (its shape too), not its bytes: the QC image's
    encoder settings may change (issue 14), its pixels may not."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    return "pixels:" + sha(repr(arr.shape).encode() + arr.tobytes())


def run(*args: str, cwd: Path) -> None:
    res = subprocess.run([*WSIPIPE, *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"wsipipe {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def store_digest(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {}
        for name in sorted(f.keys()):
            obj = f[name]
            if isinstance(obj, h5py.Dataset):
                out[f"ds:{name}"] = sha(np.ascontiguousarray(obj[()]).tobytes())
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        out["meta"] = {k: attrs[k] for k in STORE_META_KEYS if k in attrs}
        out["coords_attrs"] = {
            k: _plain(v) for k, v in f["coords"].attrs.items() if k not in _VOLATILE
        }
    return out


def h5_digest(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = sha(np.ascontiguousarray(obj[()]).tobytes())

        f.visititems(visit)
    return out


def json_digest(path: Path) -> Any:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in _VOLATILE}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(json.loads(path.read_text()))


def pipeline_digests(root: Path) -> dict[str, Any]:
    """Generate, tile, train (1 epoch, tiny model) and map two slides; digest everything."""
    run("synth", "--out", str(root / "cohort"), "--n-slides", "6", "--width", "2048",
        "--height", "1536", "--seed", "3", "--tumour-fraction", "0.15,0.35", cwd=root)  # fmt: skip
    slides = root / "cohort" / "slides"
    # exact resampling: the pixels of the pre-refactor reference (the default dct decode,
    # issue 14, has its own tolerance tests in tests/slide/test_dctscale.py)
    run("tile", str(slides), "--out", str(root / "tiles"), "--tile-px", "128",
        "--target-mpp", "1.0", "--resample", "exact", cwd=root)  # fmt: skip
    cfg = root / "train.yaml"
    cfg.write_text(
        "method: dbps\nmode: pixels\nencoder: test_resnet.r160_in1k\npretrained: false\n"
        "input_px: 64\ndim: 32\nheads: 2\ndim_head: 16\ndim_inner: 64\nM: 4\nI: 16\nS: 4\n"
        "batch_size: 2\nepochs: 1\nwarmup_epochs: 0\nworkers: 0\nprogress: false\n"
        "tensorboard: false\ncalibrate_tiles: 64\nprecision: fp32\n"
    )
    labels = root / "cohort" / "labels.csv"
    run("train", "--labels", str(labels), "--stores", str(root / "tiles"), "--out",
        str(root / "run"), "--config", str(cfg), "--val-split", "test", cwd=root)  # fmt: skip
    ids = sorted(p.stem for p in (root / "tiles" / "stores").glob("*.h5"))[:2]
    run("heatmap", "--checkpoint", str(root / "run" / "checkpoints" / "best.pt"),
        "--stores", str(root / "tiles"), "--out", str(root / "heat"), "--slides",
        ",".join(ids), "--annotations", str(root / "cohort" / "annotations"),
        "--workers", "0", "--precision", "fp32", cwd=root)  # fmt: skip

    tiles, heat = root / "tiles", root / "heat"
    out: dict[str, Any] = {"tile": {}, "heatmap": {}}
    for p in sorted((tiles / "stores").glob("*.h5")):
        out["tile"][f"stores/{p.name}"] = store_digest(p)
    for p in sorted((tiles / "qc").iterdir()):
        out["tile"][f"qc/{p.name}"] = png_pixels_digest(p)
    for p in sorted((tiles / "tissue").iterdir()):
        out["tile"][f"tissue/{p.name}"] = sha(p.read_bytes())
    for p in sorted(heat.rglob("*")):
        rel = p.relative_to(heat).as_posix()
        if not p.is_file() or rel.startswith(("status/", "locks/", ".tmp/")):
            continue
        if rel in ("config.yaml", "summary.csv"):
            continue  # paths, timings
        if p.suffix == ".h5":
            out["heatmap"][rel] = h5_digest(p)
        elif p.suffix == ".json":
            out["heatmap"][rel] = json_digest(p)
        else:
            out["heatmap"][rel] = sha(p.read_bytes())
    return out
