"""The quick start's path on the real synthetic cohort: `wsipipe synth` -> `wsipipe tile` ->
`wsipipe train` (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsipipe.train.config import load_train_config
from wsipipe.train.loop import train


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wsipipe.synth import CohortConfig, generate_cohort
    from wsipipe.tile import TileConfig, resolve_slides
    from wsipipe.tile.run import tile_slides

    root = tmp_path_factory.mktemp("synth")
    cohort = generate_cohort(
        root / "cohort", CohortConfig(n_slides=32, width=4096, height=3072, seed=1)
    )
    outcomes = tile_slides(
        resolve_slides([str(root / "cohort" / "slides")]), TileConfig(), root / "tiles", workers=2
    )
    assert all(o.state == "done" for o in outcomes)
    return cohort.labels_csv, root / "tiles"


@pytest.mark.parametrize("method", ["ips", "dbps"])
def test_features_mode_learns_on_the_synthetic_cohort(
    tiled: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    labels, tiles = tiled
    overrides = {
        "labels": str(labels),
        "stores": str(tiles),
        "out": str(tmp_path / "run"),
        "method": method,
        "progress": False,
        "tensorboard": False,
        "device": "cpu",
    }
    cfg = load_train_config("quickstart-features", overrides)
    recs = train(cfg)
    best = max(r["val_auc"] for r in recs)
    assert best >= 0.9 and recs[-1]["val_auc"] >= 0.9, [r["val_auc"] for r in recs]


@pytest.mark.slow
def test_quickstart_preset_learns_end_to_end(tiled: tuple[Path, Path], tmp_path: Path) -> None:
    """Pixel mode: ResNet-18 from scratch + aggregator, IPS (about 4 min on 2 CPU cores)."""
    labels, tiles = tiled
    cfg = load_train_config(
        "quickstart",
        {
            "labels": str(labels),
            "stores": str(tiles),
            "out": str(tmp_path / "run"),
            "progress": False,
            "tensorboard": False,
            "device": "cpu",
        },
    )
    recs = train(cfg)
    aucs = [r["val_auc"] for r in recs]
    assert [r["epoch"] for r in recs] == list(range(1, cfg.epochs + 1)) and recs[-1]["val_n"] == 8
    assert max(aucs) >= 0.9 and aucs[-1] >= 0.9, aucs
    assert recs[-1]["val_loss"] < 0.6, recs[-1]["val_loss"]  # chance is ln 2 = 0.69
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()
