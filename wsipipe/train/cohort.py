"""From a labels CSV and a store directory to the validated list of slides of a run.

All checks run before any training starts and every problem is listed in one ConfigError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text
from wsipipe.labels.splits import carve_validation
from wsipipe.labels.table import (
    LabelTable,
    SlideRecord,
    check_cohort,
    read_labels_csv,
    training_splits,
)
from wsipipe.store import SlideSource, describe_store, find_store, list_stores, resolve_stores_dir
from wsipipe.train.config import TrainConfig
from wsipipe.train.data import check_tile_sizes


@dataclass
class Cohort:
    """Slides of a run: ``specs`` (train slides first, then validation slides)."""

    classes: tuple[str, ...]
    specs: list[SlideSource]
    labels: np.ndarray  # (len(specs),) class index per spec, -1 = unlabeled
    train: list[int]  # positions into specs
    val: list[int]
    stores_dir: Path
    carved: bool = False  # the validation slides were carved from the training split


def _specs_for(
    table: LabelTable, records: Sequence[SlideRecord], stores_dir: Path
) -> list[SlideSource]:
    found = check_cohort(
        table, records, lambda sid: describe_store(sid, find_store(stores_dir, sid))
    )
    return [found[r.slide_id] for r in records]  # type: ignore[misc]


def load_cohort(cfg: TrainConfig) -> Cohort:
    """Validate the labels CSV and the stores of its training and validation slides."""
    if not cfg.labels:
        raise ConfigError("--labels is not set; pass the labels CSV (slide_id,label,split)")
    table = read_labels_csv(
        cfg.labels, cfg.label_column, cfg.split_column, cfg.fold_column, cfg.classes
    )
    carve = cfg.fold is None and cfg.val_fraction > 0
    train, val = training_splits(
        table, cfg.train_split, cfg.val_split, cfg.fold, cfg.split_column, cfg.fold_column,
        allow_empty_val=carve,
    )  # fmt: skip
    carved = carve and not val
    if carved:  # e.g. CAMELYON16: train and test only
        picked = carve_validation(
            [(r.slide_id, r.label_name, r.patient) for r in train],
            cfg.val_fraction,
            cfg.data_seed,
        )
        val = [r for r in train if r.slide_id in picked]
        train = [r for r in train if r.slide_id not in picked]
        if len({r.label for r in val}) < 2 or len({r.label for r in train}) < 2:
            raise ConfigError(
                f"{cfg.labels}: too few training slides to carve a validation split with "
                f"every class (val_fraction {cfg.val_fraction}); add a `{cfg.split_column}` "
                f"= {cfg.val_split} split to the CSV or raise --val-fraction"
            )
    stores_dir = resolve_stores_dir(cfg.stores)
    records = [*train, *val]
    specs = _specs_for(table, records, stores_dir)
    check_tile_sizes(specs, cfg.input_px, str(stores_dir))
    labels = np.array([r.label for r in records], dtype=np.int64)
    return Cohort(
        classes=table.classes,
        specs=specs,
        labels=labels,
        train=list(range(len(train))),
        val=list(range(len(train), len(records))),
        stores_dir=stores_dir,
        carved=carved,
    )


def write_splits(path: Path, cohort: Cohort) -> None:
    """``slide_id,label,split`` of the run's training and validation slides (what trained
    and what validated, also when the validation split was carved)."""
    rows = ["slide_id,label,split"]
    for part, positions in (("train", cohort.train), ("val", cohort.val)):
        for pos in positions:
            label = cohort.classes[int(cohort.labels[pos])]
            rows.append(f"{cohort.specs[pos].slide_id},{label},{part}")
    atomic_write_text(path, "\n".join(rows) + "\n")


def load_eval_slides(
    stores: str,
    labels_csv: str | None,
    split: str | None,
    classes: Sequence[str],
    cfg: TrainConfig,
    store_paths: Sequence[str] = (),
) -> tuple[list[SlideSource], np.ndarray, Path | None]:
    """Slides for ``wsipipe predict``: explicit store paths, or the rows of ``split`` in a
    labels CSV, or (no CSV) every store of the directory. Returns (specs, labels, stores_dir);
    labels are -1 where unknown."""
    if store_paths:
        specs = []
        problems = []
        for p in store_paths:
            path = Path(p)
            try:
                specs.append(describe_store(path.stem, path))
            except Exception as exc:  # StoreError or an id problem
                problems.append(f"{path}: {' '.join(str(exc).split())}")
        if problems:
            raise ConfigError(f"{len(problems)} unusable store(s): " + "; ".join(problems))
        check_tile_sizes(specs, cfg.input_px, "--store")
        return specs, np.full(len(specs), -1, dtype=np.int64), None
    stores_dir = resolve_stores_dir(stores)
    if labels_csv:
        table = read_labels_csv(
            labels_csv, cfg.label_column, cfg.split_column, cfg.fold_column, classes
        )
        records = list(table.records)
        if split:
            records = table.by_split(split)
            if not records:
                raise ConfigError(f"{labels_csv}: no rows with {cfg.split_column} == {split!r}")
        specs = _specs_for(table, records, stores_dir)
        check_tile_sizes(specs, cfg.input_px, str(stores_dir))
        return specs, np.array([r.label for r in records], dtype=np.int64), stores_dir
    listed = list_stores(stores_dir)
    if not listed:
        raise ConfigError(f"--stores {stores_dir}: no .h5 / .zarr stores; run `wsipipe tile`")
    specs = [describe_store(sid, p) for sid, p in listed]
    check_tile_sizes(specs, cfg.input_px, str(stores_dir))
    return specs, np.full(len(specs), -1, dtype=np.int64), stores_dir
