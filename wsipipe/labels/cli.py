"""``wsipipe labels camelyon16|tcga``: write a labels CSV for a public cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsipipe.errors import ConfigError
from wsipipe.labels.cohorts import SPLITS, camelyon16_labels, tcga_labels


def labels_command(
    dataset: Annotated[str, typer.Argument(help="camelyon16 | tcga")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="camelyon16: the dataset root; tcga: slide folders or files."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Labels CSV to write.")] = Path("labels.csv"),
    val_fraction: Annotated[
        float | None, typer.Option(help="Validation fraction (default: camelyon16 0.2, tcga 0.15).")
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="tcga: test fraction of patients.")] = 0.15,
    folds: Annotated[int, typer.Option(help="Add a fold column with k folds (0 = none).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the splits.")] = 0,
    reference: Annotated[
        Path | None, typer.Option(help="camelyon16: test labels (default: testing/reference.csv).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="camelyon16: slide id to leave out (repeatable).")
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(help="tcga: CSV with slide_id or patient_id and a label column."),
    ] = None,
    label_column: Annotated[str, typer.Option(help="tcga: label column of --label-map.")] = "label",
    diagnostic_only: Annotated[
        bool, typer.Option(help="tcga: keep only diagnostic (DX) slides.")
    ] = False,
    tumour_only: Annotated[
        bool, typer.Option(help="tcga: keep only tumour samples (sample type 01-09).")
    ] = False,
    skip_unlabelled: Annotated[
        bool, typer.Option(help="tcga: drop slides without a label instead of failing.")
    ] = False,
) -> None:
    """Write a labels CSV (slide_id,label,split[,fold],patient_id,path) for a public cohort."""
    from rich.console import Console
    from rich.table import Table

    kind = dataset.lower()
    if kind == "camelyon16":
        if len(inputs) != 1:
            raise ConfigError(f"camelyon16 takes one dataset root, got {len(inputs)} paths")
        result = camelyon16_labels(
            inputs[0], out, 0.2 if val_fraction is None else val_fraction, folds, seed,
            reference, tuple(exclude or ()),
        )  # fmt: skip
    elif kind == "tcga":
        result = tcga_labels(
            inputs, out, label_map, label_column,
            0.15 if val_fraction is None else val_fraction, test_fraction, folds, seed,
            diagnostic_only, tumour_only, skip_unlabelled,
        )  # fmt: skip
    else:
        raise ConfigError(f"dataset {dataset!r} is not one of: camelyon16, tcga")
    counts = result.counts()
    table = Table(title=f"{result.path} ({len(result.rows)} slides)")
    labels = sorted({lab for _, lab in counts})
    table.add_column("split")
    for lab in labels:
        table.add_column(lab or "(unlabelled)", justify="right")
    for split in SPLITS:
        if any(s == split for s, _ in counts):
            table.add_row(split, *(str(counts.get((split, lab), 0)) for lab in labels))
    Console().print(table)
