"""The per-tile score table of a slide: CSV, and HDF5 or zarr (like the slide's patch store).

Columns (one row per tile, in store order):

``tile_index`` (row in the patch store), ``x``, ``y`` (level-0 px, top-left), ``score``
(the attention of the learned query(ies): softmax over ALL N tiles of the slide, averaged
over heads and query tokens; sums to 1), ``score_norm`` (the colour value in [0, 1]),
``rank`` (1 = most attended), ``selected`` (1 if in the IPS/DBPS memory buffer M),
``aux`` (1 if in the DBPS auxiliary buffer S), ``head_0`` .. ``head_{H-1}`` (per-head
softmax over all tiles, averaged over tokens), then optional extra columns (e.g.
``tumour_fraction`` when annotations were given).

The HDF5 file has CLAM-style datasets: ``coords`` (N, 2) with attrs ``patch_size_level0``
(and ``slide_id``), and one dataset per column (``per_head`` as (N, H)); the zarr v3 group
has the same arrays. File attrs carry the slide prediction and provenance as JSON.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsipipe.errors import StoreError
from wsipipe.heatmap.rows import format_rows


@dataclass(frozen=True)
class ScoreTable:
    """One slide's per-tile results (shapes in the module docstring; N rows)."""

    tile_index: np.ndarray  # (N,) int64
    coords: np.ndarray  # (N, 2) int64
    score: np.ndarray  # (N,) float64
    score_norm: np.ndarray  # (N,) float32
    rank: np.ndarray  # (N,) int64
    selected: np.ndarray  # (N,) bool
    aux: np.ndarray  # (N,) bool
    per_head: np.ndarray  # (N, H) float64
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.tile_index)
        shapes = {
            "coords": (self.coords.shape, (n, 2)),
            "score": (self.score.shape, (n,)),
            "score_norm": (self.score_norm.shape, (n,)),
            "rank": (self.rank.shape, (n,)),
            "selected": (self.selected.shape, (n,)),
            "aux": (self.aux.shape, (n,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"ScoreTable.{name} has shape {got}, expected {want}")
        if self.per_head.ndim != 2 or self.per_head.shape[0] != n:
            raise ValueError(f"ScoreTable.per_head has shape {self.per_head.shape}, want (N, H)")
        for name, col in self.extra.items():
            if col.shape != (n,):
                raise ValueError(f"ScoreTable extra column {name!r} has shape {col.shape}")

    def __len__(self) -> int:
        return len(self.tile_index)

    @property
    def n_heads(self) -> int:
        return int(self.per_head.shape[1])

    def columns(self) -> dict[str, np.ndarray]:
        """Ordered flat columns of the CSV."""
        cols: dict[str, np.ndarray] = {
            "tile_index": self.tile_index,
            "x": self.coords[:, 0],
            "y": self.coords[:, 1],
            "score": self.score,
            "score_norm": self.score_norm,
            "rank": self.rank,
            "selected": self.selected.astype(np.int64),
            "aux": self.aux.astype(np.int64),
        }
        for h in range(self.n_heads):
            cols[f"head_{h}"] = self.per_head[:, h]
        cols.update(self.extra)
        return cols


_CSV_CHUNK = 16384  # rows formatted and written at a time


def write_scores_csv(path: str | Path, table: ScoreTable) -> None:
    """The table as CSV (floats with 8 significant digits; the csv module's excel dialect).

    Rows are formatted from one %-template (``%.8g`` for floats, ``str`` otherwise: numbers
    never need quoting), a chunk at a time; columns of other kinds go through ``csv``.
    """
    cols = table.columns()
    numeric = all(c.dtype.kind in "biuf" for c in cols.values())
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(cols))
        n = len(table)
        if not numeric:  # e.g. a text extra column: let csv quote it
            text = [_csv_text(c) for c in cols.values()]
            writer.writerows(zip(*text, strict=True))
            return
        fmt = [("%.8g" if c.dtype.kind == "f" else "%s") for c in cols.values()]
        row = ",".join(fmt) + writer.dialect.lineterminator
        for s in range(0, n, _CSV_CHUNK):
            fh.write(format_rows(row, [c[s : s + _CSV_CHUNK].tolist() for c in cols.values()]))


def _csv_text(col: np.ndarray) -> list[str]:
    if np.issubdtype(col.dtype, np.floating):
        return [f"{v:.8g}" for v in col.tolist()]
    return [str(v) for v in col.tolist()]


def read_scores_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a scores CSV as float64 arrays (for tests and tools)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    data = np.array(body, dtype=np.float64).reshape(len(body), len(header))
    return {name: data[:, i] for i, name in enumerate(header)}


def _arrays(table: ScoreTable) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "coords": table.coords.astype(np.int64),
        "tile_index": table.tile_index.astype(np.int64),
        "score": table.score.astype(np.float64),
        "score_norm": table.score_norm.astype(np.float32),
        "rank": table.rank.astype(np.int64),
        "selected": table.selected.astype(bool),
        "aux": table.aux.astype(bool),
        "per_head": table.per_head.astype(np.float64),
    }
    out.update({k: np.asarray(v) for k, v in table.extra.items()})
    return out


def _json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars kept as they are; anything else JSON-encoded."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
        else:
            out[k] = json.dumps(v, default=str)
    return out


def write_scores_h5(
    path: str | Path, table: ScoreTable, size_level0: int, attrs: Mapping[str, Any]
) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, arr in _arrays(table).items():
            f.create_dataset(name, data=arr)
        f["coords"].attrs["patch_size_level0"] = int(size_level0)
        for k, v in _json_attrs(attrs).items():
            f.attrs[k] = v
            if k == "slide_id":
                f["coords"].attrs["name"] = v


def write_scores_zarr(
    path: str | Path, table: ScoreTable, size_level0: int, attrs: Mapping[str, Any]
) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, arr in _arrays(table).items():
        group.create_array(name, data=arr)
    group.attrs.update({**_json_attrs(attrs), "patch_size_level0": int(size_level0)})


def write_scores(
    path: str | Path, table: ScoreTable, size_level0: int, attrs: Mapping[str, Any]
) -> None:
    """HDF5 for a ``.h5`` path, zarr v3 for a ``.zarr`` path."""
    p = Path(path)
    if p.suffix == ".h5":
        write_scores_h5(p, table, size_level0, attrs)
    elif p.suffix == ".zarr":
        write_scores_zarr(p, table, size_level0, attrs)
    else:
        raise ValueError(f"{p}: scores file must end in .h5 or .zarr")


def read_scores(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, attrs) of a scores file written by :func:`write_scores`."""
    p = Path(path)
    try:
        if p.suffix == ".h5":
            import h5py

            with h5py.File(p, "r") as f:
                arrays = {k: f[k][()] for k in f}
                attrs = dict(f.attrs)
        else:
            import zarr

            group = zarr.open_group(str(p), mode="r")
            arrays = {k: np.asarray(v[...]) for k, v in group.arrays()}
            attrs = dict(group.attrs)
    except (OSError, FileNotFoundError, KeyError) as exc:
        raise StoreError(
            f"{p}: cannot read scores file ({exc}); re-run `wsipipe heatmap`"
        ) from None
    return arrays, attrs
