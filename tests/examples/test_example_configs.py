"""The example configs load into the stage configs with the papers' values, and the example
workflow configs plan the right jobs on fake CAMELYON16 / TCGA trees (Snakemake dry runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsipipe.config import build_config, load_yaml
from wsipipe.labels.cohorts import camelyon16_labels, tcga_labels
from wsipipe.tile import TileConfig
from wsipipe.train.config import load_train_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def test_tile_configs() -> None:
    for name in ("camelyon16", "tcga"):
        cfg = build_config(TileConfig, load_yaml(EXAMPLES / name / "tile.yaml"))
        assert (cfg.target_mpp, cfg.tile_px, cfg.format, cfg.mpp) == (0.5, 256, "h5", None)


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("camelyon16/train-ips-features.yaml", ("ips", "features", 5000, 5000, 0)),
        ("camelyon16/train-dbps-features.yaml", ("dbps", "features", 100, 500, 400)),
        ("camelyon16/train-ips-e2e.yaml", ("ips", "pixels", 32, 256, 0)),
        ("camelyon16/train-dbps-e2e.yaml", ("dbps", "pixels", 32, 256, 96)),
        ("tcga/train.yaml", ("dbps", "features", 100, 500, 400)),
    ],
)
def test_train_configs(path: str, want: tuple[str, str, int, int, int]) -> None:
    cfg = load_train_config(EXAMPLES / path)
    assert (cfg.method, cfg.mode, cfg.M, cfg.I, cfg.n_aux) == want
    # the papers' optimisation and aggregator settings
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.warmup_epochs) == (
        3e-4, 0.1, 16, 50, 10,
    )  # fmt: skip
    assert (cfg.dim, cfg.heads, cfg.dim_head, cfg.dim_inner) == (512, 8, 64, 2048)
    assert cfg.encoder == "resnet50"


def test_heatmap_config() -> None:
    heatmap = pytest.importorskip("wsipipe.heatmap.config")
    cfg = build_config(heatmap.HeatmapConfig, load_yaml(EXAMPLES / "camelyon16" / "heatmap.yaml"))
    assert (cfg.normalise, cfg.top_k, cfg.tumour_threshold) == ("rank", 10, 0.5)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _dry_run(workdir: Path, example: str, labels: Path) -> dict[str, int]:
    pytest.importorskip("snakemake")
    cfg = yaml.safe_load((EXAMPLES / example / "workflow.yaml").read_text())
    cfg["labels"] = str(labels)
    cfg["tile"]["config"] = str(REPO / cfg["tile"]["config"])
    cfg["train"]["config"] = str(REPO / cfg["train"]["config"])
    if cfg.get("heatmap", {}).get("config"):
        cfg["heatmap"]["config"] = str(REPO / cfg["heatmap"]["config"])
    (workdir / "wf.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflows" / "Snakefile"),
           "--configfile", "wf.yaml", "-n", "--cores", "4"]  # fmt: skip
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    lines = res.stdout.splitlines()
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_camelyon16_workflow_plan(tmp_path: Path) -> None:
    root = tmp_path / "CAMELYON16"
    for i in range(1, 6):
        _touch(root / "training" / "normal" / f"normal_{i:03d}.tif")
        _touch(root / "training" / "tumor" / f"tumor_{i:03d}.tif")
    for i in range(1, 4):
        _touch(root / "testing" / "images" / f"test_{i:03d}.tif")
    (root / "testing" / "lesion_annotations").mkdir(parents=True)
    labels = tmp_path / "labels.csv"
    camelyon16_labels(root, labels)
    counts = _dry_run(tmp_path, "camelyon16", labels)
    assert counts["tile"] == 13 and counts["train"] == 1 and counts["heatmap"] == 3


def test_tcga_workflow_plan(tmp_path: Path) -> None:
    for project, site in (("LUAD", 10), ("LUSC", 20)):
        for p in range(4):
            for dx in (1, 2):
                name = f"TCGA-{site + p}-{1000 + p}-01Z-00-DX{dx}.{project}{p}{dx}.svs"
                _touch(tmp_path / f"TCGA-{project}" / f"u{p}{dx}" / name)
    labels = tmp_path / "labels.csv"
    res = tcga_labels(
        [tmp_path / "TCGA-LUAD", tmp_path / "TCGA-LUSC"], labels,
        val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    n_test = sum(r.split == "test" for r in res.rows)
    assert n_test == 4  # one patient of each project, two slides each
    counts = _dry_run(tmp_path, "tcga", labels)
    assert counts["tile"] == 16 and counts["train"] == 1 and counts["heatmap"] == n_test
