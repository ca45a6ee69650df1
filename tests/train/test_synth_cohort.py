"""The quick start's path on the real synthetic cohort: `wsipipe synth` -> `wsipipe tile` ->
`wsipipe train` (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsipipe.train.config import TrainConfig, load_train_config
from wsipipe.train.loop import train


def _tiled_cohort(root: Path, **kw: object) -> tuple[Path, Path]:
    from wsipipe.synth import CohortConfig, generate_cohort
    from wsipipe.tile import TileConfig, resolve_slides
    from wsipipe.tile.run import tile_slides

    cohort = generate_cohort(
        root / "cohort",
        CohortConfig(n_slides=32, width=4096, height=3072, seed=1, **kw),  # type: ignore[arg-type]
    )
    outcomes = tile_slides(
        resolve_slides([str(root / "cohort" / "slides")]), TileConfig(), root / "tiles", workers=2
    )
    assert all(o.state == "done" for o in outcomes)
    return cohort.labels_csv, root / "tiles"


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The default synthetic cohort: small CAMELYON-like foci (5-16 % of the tissue)."""
    return _tiled_cohort(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def tiled_macro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The quick start's cohort: macro-metastases (15-35 % of the tissue)."""
    return _tiled_cohort(tmp_path_factory.mktemp("synth_macro"), tumour_fraction=(0.15, 0.35))


def _config(preset: str, tiled: tuple[Path, Path], out: Path, method: str) -> TrainConfig:
    labels, tiles = tiled
    overrides = {"labels": str(labels), "stores": str(tiles), "out": str(out), "method": method}
    overrides |= {"progress": False, "tensorboard": False, "device": "cpu"}
    return load_train_config(preset, overrides)


@pytest.mark.parametrize("method", ["ips", "dbps"])
def test_features_mode_learns_on_the_synthetic_cohort(
    tiled: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    cfg = _config("quickstart-features", tiled, tmp_path / "run", method)
    recs = train(cfg)
    best = max(r["val_auc"] for r in recs)
    assert best >= 0.9 and recs[-1]["val_auc"] >= 0.9, [r["val_auc"] for r in recs]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ips", "dbps"])
def test_quickstart_preset_learns_end_to_end(
    tiled_macro: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    """Pixel mode, the quick start's preset: ResNet-18 from scratch + aggregator (about 3 min
    each on 2 CPU cores). The validation loss must fall far below chance (ln 2 = 0.69)."""
    cfg = _config("quickstart", tiled_macro, tmp_path / "run", method)
    recs = train(cfg)
    aucs = [r["val_auc"] for r in recs]
    assert [r["epoch"] for r in recs] == list(range(1, cfg.epochs + 1)) and recs[-1]["val_n"] == 8
    assert aucs[-1] >= 0.9, aucs
    assert min(r["val_loss"] for r in recs) < 0.2, [r["val_loss"] for r in recs]
    assert recs[-1]["train_loss"] < 0.5 * recs[0]["train_loss"]
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()
