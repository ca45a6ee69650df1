"""The supervised ceiling of a features cache: a tile-level linear probe with tile labels.

    python -m benchmarks.probe_features DIR [--encoder efficientnet-lite0] [--train-slides 24,48]

DIR is a ``bench_learning --out`` folder (``cohort/`` and ``tiles/features/<encoder>/``).
Tile labels come from the cohort's annotations (tumour tile = >= 50 % inside tumour);
a logistic regression (scikit-learn, a dev dependency; C = 0.1, balanced, z-scored features)
is fitted on the training-split tiles and scored on the test split: tile AUC, and slide AUC
of each slide's highest tile score. It says whether a MIL failure on that cohort is the
features' or the learner's (MIL sees slide labels only).

Beside it, the same linear model taught by slide labels only: mi-SVM (Andrews et al. 2002) in
its logistic form -- first every tile carries its slide's label, then, ``MI_ROUNDS`` times,
a positive slide's tiles are positive where they score above every tile of the negative
training slides (its top tile at least) and the model is refitted. It says how far slide
labels alone pin down the tumour direction in these features, with no attention at all.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks.common import Row, format_table

BENCH = "learning"


def tile_data(
    root: Path, encoder: str, labels: Path | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, bool, str]]:
    """slide_id -> (features (N, F), tumour tile (N,), positive slide, split), for the slides
    of ``labels`` (default: the cohort's labels.csv)."""
    import h5py

    from wsipipe.geometry.annotations import read_annotations
    from wsipipe.geometry.polygons import tumour_fraction
    from wsipipe.store.features import open_features

    out = {}
    for r in csv.DictReader((labels or root / "cohort" / "labels.csv").open()):
        sid = r["slide_id"]
        path = root / "tiles" / "features" / encoder / f"{sid}.h5"
        x = np.asarray(open_features(path), dtype=np.float32)
        with h5py.File(path, "r") as f:  # TRIDENT layout: coords and their level-0 tile size
            coords, size = f["coords"][:], int(f["coords"].attrs["patch_size_level0"])
        ann = root / "cohort" / "annotations" / f"{sid}.geojson"
        tumour, exclusion = read_annotations(ann) if ann.exists() else ([], [])
        y = tumour_fraction(coords, size, tumour, exclusion) >= 0.5 if tumour else np.zeros(
            len(coords), dtype=bool)  # fmt: skip
        out[sid] = (x, y, r["label"] == "tumor", r["split"])
    return out


MI_ROUNDS = 6


def _fit(xs: list[np.ndarray], ys: list[np.ndarray]):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced")
    return clf.fit(np.concatenate(xs), np.concatenate(ys))


def _mi_labels(clf, xs: list[np.ndarray], pos: list[bool]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """mi-SVM relabelling: a positive slide's tiles above every negative slide's tile."""
    scores = [clf.decision_function(x) for x in xs]
    thr = max(s.max() for s, p in zip(scores, pos, strict=True) if not p)
    out = []
    for s, p in zip(scores, pos, strict=True):
        y = (s > thr) if p else np.zeros(len(s), dtype=bool)
        if p:
            y[np.argmax(s)] = True
        out.append(y)
    return out


def probe(root: Path, encoder: str, train_slides: int = 0) -> list[Row]:
    """The two probes' rows; ``train_slides`` > 0: on the learning curve's subset of that
    size (``bench_learning --train-slides``), the same test slides."""
    from benchmarks.bench_learning import subsample_training
    from wsipipe.stats import roc_auc

    labels = root / "cohort" / "labels.csv"
    data = tile_data(
        root, encoder, subsample_training(labels, train_slides) if train_slides else None
    )
    train = [v for v in data.values() if v[3] == "train"]
    test = [v for v in data.values() if v[3] == "test"]
    x = np.concatenate([v[0] for v in train])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs, xt = [(v[0] - mu) / sd for v in train], [(v[0] - mu) / sd for v in test]
    pos = [v[2] for v in train]
    y_tiles, y_slides = np.concatenate([v[1] for v in test]), np.array([v[2] for v in test])

    def scored(clf) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        s = [clf.decision_function(z) for z in xt]
        return roc_auc(y_tiles, np.concatenate(s)), roc_auc(
            y_slides, np.array([t.max() for t in s])
        )

    tile_auc, slide_auc = scored(_fit(xs, [v[1] for v in train]))
    split = f"{len(train)} train / {len(test)} test"
    case = f"{encoder} features, tile-label linear probe ({split})"
    rows = [Row(BENCH, case, "test tile AUC", tile_auc, "", "supervised ceiling"),
            Row(BENCH, case, "test slide AUC (max tile)", slide_auc, "")]  # fmt: skip
    clf = _fit(xs, [np.full(len(z), p) for z, p in zip(xs, pos, strict=True)])
    for _ in range(MI_ROUNDS):
        clf = _fit(xs, _mi_labels(clf, xs, pos))
    tile_auc, slide_auc = scored(clf)
    case = f"{encoder} features, slide-label linear mi-SVM ({split})"
    rows += [Row(BENCH, case, "test tile AUC", tile_auc, "", "slide labels only"),
             Row(BENCH, case, "test slide AUC (max tile)", slide_auc, "")]  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a bench_learning --out folder")
    ap.add_argument("--encoder", default="efficientnet-lite0", help="features cache name")
    ap.add_argument("--train-slides", default="", help="train-split sizes, e.g. 24,48 (a curve)")
    args = ap.parse_args()
    sizes = [int(n) for n in args.train_slides.split(",") if n.strip()] or [0]
    print(format_table([row for n in sizes for row in probe(args.root, args.encoder, n)]))


if __name__ == "__main__":
    main()
