"""Feature files: one HDF5 file per slide and encoder, laid out as TRIDENT's feature files.

    <slide_id>.h5
      features  (N, F) float16, tile order of the slide's patch store (uncompressed,
                contiguous: rows are read through a memory map, as fast as a .npy)
      coords    (N, 2) int64 level-0 (x, y) top-lefts, with CLAM/TRIDENT's attributes
                (patch_size, patch_level, patch_size_level0, ...)
      attrs     encoder, weights, input_px, normalisation, store, wsipipe version ...

So tools written for TRIDENT's ``features_<encoder>/<slide>.h5`` files read these
(``f["features"][:]``, ``f["coords"][:]``), and one tiling serves many encoders.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsipipe.errors import StoreError
from wsipipe.fileio import atomic_path

FEATURE_DTYPE = np.float16
_RERUN = "delete it and re-run `wsipipe embed` (or training in features mode)"


class FeatureWriter:
    """Rows of an (N, F) feature matrix written chunk by chunk (never all in RAM)."""

    def __init__(self, h5: h5py.File, n: int, dim: int) -> None:
        self.ds = h5.create_dataset("features", shape=(n, dim), dtype=FEATURE_DTYPE)
        self.filled = np.zeros(n, dtype=bool)

    def write(self, idx: np.ndarray, feats: np.ndarray) -> None:
        """Rows ``idx`` (k,) <- ``feats`` (k, F); contiguous runs are written as slices."""
        order = np.argsort(idx, kind="stable")
        idx, feats = idx[order], feats[order].astype(FEATURE_DTYPE)
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
            self.ds[int(idx[0]) : int(idx[-1]) + 1] = feats
        else:
            self.ds[idx] = feats
        self.filled[idx] = True


@contextmanager
def write_feature_file(
    path: Path,
    n_tiles: int,
    dim: int,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    attrs: Mapping[str, Any],
) -> Iterator[FeatureWriter]:
    """Create ``path`` atomically (temp file, fsync, rename on success): yields the writer
    of its features; every row must be written."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        writer = FeatureWriter(h5, n_tiles, dim)
        c = h5.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        for key, value in coords_attrs.items():
            c.attrs[key] = value
        for key, value in attrs.items():
            h5.attrs[key] = value
        yield writer
        if not writer.filled.all():
            missing = int((~writer.filled).sum())
            raise StoreError(f"{path}: {missing} of {n_tiles} feature rows were not computed")


def open_features(path: str | Path) -> np.ndarray:
    """The (N, F) features of a feature file as a read-only memory map (h5py reads when the
    dataset is chunked or compressed, e.g. a file another tool wrote)."""
    p = Path(path)
    try:
        with h5py.File(p, "r") as h5:
            ds = h5["features"]
            shape, dtype = ds.shape, ds.dtype
            offset = ds.id.get_offset()
            if len(shape) != 2:
                raise StoreError(f"{p}: `features` has shape {shape}, not (N, F); {_RERUN}")
            if offset is None or ds.chunks is not None or ds.compression is not None:
                return np.asarray(ds[()])
    except (OSError, KeyError) as exc:
        raise StoreError(f"{p}: not a readable feature file ({exc}); {_RERUN}") from None
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape)


def feature_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a feature file (encoder, weights, input size, ...)."""
    with h5py.File(path, "r") as h5:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
