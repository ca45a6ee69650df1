"""Several DataLoader worker processes reading one PatchStore (fork and spawn)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tests.store.conftest import make_meta
from wsipipe.store import FORMATS, STORE_SUFFIX, PatchStore, create_store, encode_tile, open_store

N_TILES = 40


class StoreDataset(Dataset):
    """Tile i of one shared PatchStore, with the pid of the process that read it."""

    def __init__(self, store: PatchStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return torch.from_numpy(self.store.read_tile(i)), i, os.getpid()


class TwoStores(Dataset):
    """Tiles of several stores back to back: item k is tile k % N_TILES of store k // N_TILES."""

    def __init__(self, stores: list[PatchStore]) -> None:
        self.stores = stores

    def __len__(self) -> int:
        return N_TILES * len(self.stores)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int]:
        tile = self.stores[k // N_TILES].read_tile(k % N_TILES)
        return torch.from_numpy(tile), k, os.getpid()


def build(tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]) -> Path:
    path = tmp_path / f"slide{STORE_SUFFIX[fmt]}"
    blobs = [
        encode_tile(he_tiles[i % len(he_tiles)][:, :: 1 - 2 * (i % 2)], "jpeg")
        for i in range(N_TILES)
    ]
    coords = np.stack([np.arange(N_TILES) * 512, np.zeros(N_TILES, np.int64)], axis=1)
    with create_store(path, fmt, make_meta()) as w:
        w.append(coords, blobs, np.ones(N_TILES))
    return path


def read_all(dataset: Dataset, context: str) -> tuple[np.ndarray, np.ndarray, set[int]]:
    loader = DataLoader(
        dataset,
        batch_size=4,
        num_workers=2,
        shuffle=False,
        multiprocessing_context=context,
        persistent_workers=False,
    )
    tiles, idx, pids = [], [], set()
    for batch_tiles, batch_idx, batch_pids in loader:
        tiles.append(batch_tiles.numpy())
        idx.append(batch_idx.numpy())
        pids.update(batch_pids.tolist())
    return np.concatenate(tiles), np.concatenate(idx), pids


@pytest.mark.parametrize("fmt", FORMATS)
def test_forked_workers_read_the_same_store(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]
) -> None:
    store = open_store(build(tmp_path, fmt, he_tiles))
    expected = store.read_tiles(np.arange(N_TILES))  # parent opens its handles before forking
    tiles, idx, pids = read_all(StoreDataset(store), "fork")
    np.testing.assert_array_equal(idx, np.arange(N_TILES))
    np.testing.assert_array_equal(tiles, expected)
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the reads
    np.testing.assert_array_equal(store.read_tile(5), expected[5])  # parent still works
    store.close()


def test_spawned_workers_read_pickled_stores(tmp_path: Path, he_tiles: list[np.ndarray]) -> None:
    """One spawn DataLoader over an h5 and a zarr store (spawn start-up is the slow part)."""
    stores = [open_store(build(tmp_path, fmt, he_tiles)) for fmt in FORMATS]
    expected = np.concatenate([s.read_tiles(np.arange(N_TILES)) for s in stores])
    tiles, idx, pids = read_all(TwoStores(stores), "spawn")
    np.testing.assert_array_equal(idx, np.arange(2 * N_TILES))
    np.testing.assert_array_equal(tiles, expected)
    assert len(pids) == 2 and os.getpid() not in pids
    for store in stores:
        store.close()
