"""The supervised ceiling of a features cache: a tile-level linear probe with tile labels.

    python -m benchmarks.probe_features DIR [--encoder efficientnet-lite0]

DIR is a ``bench_learning --out`` folder (``cohort/`` and ``tiles/features/<encoder>/``).
Tile labels come from the cohort's annotations (tumour tile = >= 50 % inside tumour);
a logistic regression (scikit-learn, a dev dependency; C = 0.1, balanced, z-scored features)
is fitted on the training-split tiles and scored on the test split: tile AUC, and slide AUC
of each slide's highest tile score. It says whether a MIL failure on that cohort is the
features' or the learner's (MIL sees slide labels only).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks.common import Row, format_table

BENCH = "learning"


def tile_data(root: Path, encoder: str) -> dict[str, tuple[np.ndarray, np.ndarray, bool, str]]:
    """slide_id -> (features (N, F), tumour tile (N,), positive slide, split)."""
    import h5py

    from wsipipe.geometry.annotations import read_annotations
    from wsipipe.geometry.polygons import tumour_fraction
    from wsipipe.store.features import open_features

    out = {}
    for r in csv.DictReader((root / "cohort" / "labels.csv").open()):
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


def probe(root: Path, encoder: str) -> list[Row]:
    from sklearn.linear_model import LogisticRegression

    from wsipipe.stats import roc_auc

    data = tile_data(root, encoder)
    train = [v for v in data.values() if v[3] == "train"]
    test = [v for v in data.values() if v[3] == "test"]
    x = np.concatenate([v[0] for v in train])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")
    clf.fit((x - mu) / sd, np.concatenate([v[1] for v in train]))
    scores = [clf.decision_function((v[0] - mu) / sd) for v in test]
    tile_auc = roc_auc(np.concatenate([v[1] for v in test]), np.concatenate(scores))
    slide_auc = roc_auc(np.array([v[2] for v in test]), np.array([s.max() for s in scores]))
    case = f"{encoder} features, tile-label linear probe ({len(train)} train / {len(test)} test)"
    return [Row(BENCH, case, "test tile AUC", tile_auc, "", "supervised ceiling"),
            Row(BENCH, case, "test slide AUC (max tile)", slide_auc, "")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a bench_learning --out folder")
    ap.add_argument("--encoder", default="efficientnet-lite0", help="features cache name")
    args = ap.parse_args()
    print(format_table(probe(args.root, args.encoder)))


if __name__ == "__main__":
    main()
