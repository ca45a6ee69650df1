from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import real_slide
from tests.train.synthstores import make_tile, store_meta, write_store
from wsipipe.errors import ConfigError, StoreError
from wsipipe.store import (
    SlideSource,
    create_store,
    describe_store,
    find_store,
    list_stores,
    open_store,
    resolve_stores_dir,
)
from wsipipe.train.data import (
    ChunkDataset,
    ChunkStream,
    PlanSampler,
    TileFetcher,
    make_loader,
    plan_chunks,
    scan_indices,
    to_chw,
    worker_message,
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[SlideSource]:
    root = tmp_path_factory.mktemp("stores") / "stores"
    specs = []
    for i, (n, fmt) in enumerate([(70, "h5"), (33, "zarr"), (5, "h5")]):
        sid = f"t{i}"
        path = write_store(root / f"{sid}.{fmt}", sid, n, n // 4, seed=i, fmt=fmt)
        specs.append(describe_store(sid, path))
    return specs


def test_store_lookup(tmp_path: Path, stores: list[SlideSource]) -> None:
    root = Path(stores[0].path).parent.parent
    assert resolve_stores_dir(root) == root / "stores"
    assert resolve_stores_dir(root / "stores") == root / "stores"
    assert find_store(root / "stores", "t1").name == "t1.zarr"
    assert [sid for sid, _ in list_stores(root / "stores")] == ["t0", "t1", "t2"]
    with pytest.raises(StoreError, match=r"nope\.h5"):
        find_store(root / "stores", "nope")
    with pytest.raises(ConfigError):
        find_store(root / "stores", "../t0")
    with pytest.raises(ConfigError, match="not a directory"):
        resolve_stores_dir(tmp_path / "missing")
    assert stores[0] == SlideSource("t0", "store", stores[0].path, 70, tile_px=32, target_mpp=0.5)


def test_scan_indices_patch_drop_is_seeded() -> None:
    assert np.array_equal(scan_indices(10, 0.0, False, 0, 0, 0), np.arange(10))
    a = scan_indices(100, 0.25, False, 0, 3, 7)
    assert a.size == 75 and np.all(np.diff(a) > 0) and a.max() < 100
    assert np.array_equal(a, scan_indices(100, 0.25, False, 0, 3, 7))  # reproducible
    assert not np.array_equal(a, scan_indices(100, 0.25, False, 0, 4, 7))  # new epoch
    assert not np.array_equal(a, scan_indices(100, 0.25, False, 0, 3, 8))  # other slide
    s = scan_indices(100, 0.25, True, 0, 3, 7)
    assert not np.array_equal(s, a) and np.array_equal(np.sort(s), a)


def test_plan_chunks(stores: list[SlideSource]) -> None:
    reqs = list(plan_chunks([1, 0], stores, 16, 0.2, False, 5, 1))
    for pos in (1, 0):
        mine = [r for r in reqs if r.slide == pos]
        assert [r.chunk for r in mine] == list(range(mine[0].n_chunks))
        assert all(0 < r.indices.size <= 16 for r in mine)
        got = np.concatenate([r.indices for r in mine])
        assert np.array_equal(got, scan_indices(stores[pos].n_tiles, 0.2, False, 5, 1, pos))
    assert reqs[0].slide == 1  # plan order = slide order given


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_streams_exact_tiles_in_order(stores: list[SlideSource], workers: int) -> None:
    sampler = PlanSampler()
    loader = make_loader(ChunkDataset(stores), sampler, workers, 2, False, 0)
    for _ in range(2):  # persistent workers serve a second pass with a new plan
        order = [2, 0, 1]
        stream = ChunkStream(loader, sampler, plan_chunks(order, stores, 16, 0.1, True, 0, 0))
        for pos in order:
            chunks = list(stream.slide(pos))
            idx = torch.cat([c[0] for c in chunks]).numpy()
            tiles = torch.cat([c[1] for c in chunks])
            assert tiles.shape == (idx.size, 3, 32, 32) and tiles.dtype == torch.uint8
            with open_store(stores[pos].path) as st:
                want = st.read_tiles(idx)
            assert np.array_equal(tiles.permute(0, 2, 3, 1).numpy(), want)


def test_stream_skips_an_undrained_slide(stores: list[SlideSource]) -> None:
    sampler = PlanSampler()
    loader = make_loader(ChunkDataset(stores), sampler, 0, 2, False, 0)
    stream = ChunkStream(loader, sampler, plan_chunks([0, 1], stores, 16))
    it = stream.slide(0)
    next(it)  # consume only the first chunk of slide 0
    idx = torch.cat([c[0] for c in stream.slide(1)])
    assert idx.tolist() == list(range(33))
    with pytest.raises(RuntimeError, match="out of order"):
        ChunkStream(loader, sampler, plan_chunks([0], stores, 16)).slide(1)
    old = ChunkStream(loader, sampler, plan_chunks([0], stores, 16))
    ChunkStream(loader, sampler, plan_chunks([1], stores, 16))
    with pytest.raises(RuntimeError, match="superseded"):
        old.slide(0)


def test_to_chw_resizes_with_antialiasing() -> None:
    tiles = np.stack([make_tile(False, np.random.default_rng(0), 32) for _ in range(3)])
    same = to_chw(tiles)
    assert same.shape == (3, 3, 32, 32) and torch.equal(
        same.permute(0, 2, 3, 1), torch.from_numpy(tiles)
    )
    small = to_chw(tiles, 16)
    assert small.shape == (3, 3, 16, 16) and small.dtype == torch.uint8
    assert torch.allclose(small.float().mean(dim=(2, 3)), same.float().mean(dim=(2, 3)), atol=2)


def test_fetcher_rereads_selected_tiles(stores: list[SlideSource]) -> None:
    f = TileFetcher()
    try:
        got = f.submit(stores[0], np.array([5, 1, 60])).result()
    finally:
        f.close()
    with open_store(stores[0].path) as st:
        assert np.array_equal(got.permute(0, 2, 3, 1).numpy(), st.read_tiles([5, 1, 60]))


def test_feature_source(tmp_path: Path) -> None:
    from wsipipe.store.features import write_feature_file

    arr = np.random.default_rng(0).random((20, 6)).astype(np.float16)
    coords = np.stack([np.arange(20) * 256, np.zeros(20, np.int64)], axis=1)
    with write_feature_file(tmp_path / "f.h5", 20, 6, coords, {"patch_size": 256}, {}) as w:
        w.write(np.arange(10, 20), arr[10:])  # any order of chunks
        w.write(np.array([3, 1, 2, 0, 4, 5, 6, 7, 8, 9]), arr[[3, 1, 2, 0, 4, 5, 6, 7, 8, 9]])
    spec = SlideSource("f", "features", str(tmp_path / "f.h5"), 20, feature_dim=6)
    sampler = PlanSampler()
    loader = make_loader(ChunkDataset([spec]), sampler, 0, 2, False, 0)
    chunks = list(ChunkStream(loader, sampler, plan_chunks([0], [spec], 8)).slide(0))
    assert [c[1].shape for c in chunks] == [(8, 6), (8, 6), (4, 6)]
    assert np.array_equal(torch.cat([c[1] for c in chunks]).numpy(), arr)


def test_coords_only_store_reads_from_the_slide(tmp_path: Path) -> None:
    from wsipipe.slide import open_slide

    path = real_slide("CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        mpp = slide.mpp
        # the store's config records no resample mode: it is read back as "exact"
        want_reader = slide.tile_reader(mpp * 2, 64, resample="exact")
        coords = np.array([[0, 0], [256, 512], [1024, 768]], dtype=np.int64)
        want = np.stack([want_reader.read(int(x), int(y)) for x, y in coords])
    meta = store_meta("cmu", 64, pixels="none", slide_path=str(path))
    from dataclasses import replace

    meta = replace(
        meta,
        slide_mpp=(mpp, mpp),
        target_mpp=mpp * 2,
        read_px=128,
        tile_size_level0=128,
        pixels="none",
        jpeg_quality=None,
    )
    store = tmp_path / "cmu.h5"
    with create_store(store, "h5", meta) as w:
        w.append(coords, None, np.ones(3, dtype=np.float32))
    spec = describe_store("cmu", store)
    assert spec.kind == "slide"
    gone = tmp_path / "gone.h5"
    with create_store(gone, "h5", replace(meta, slide_path=str(tmp_path / "moved.svs"))) as w:
        w.append(coords, None, np.ones(3, dtype=np.float32))
    with pytest.raises(StoreError, match=r"moved\.svs is missing"):
        describe_store("gone", gone)
    sampler = PlanSampler()
    loader = make_loader(ChunkDataset([spec]), sampler, 2, 2, False, 0)
    chunks = list(ChunkStream(loader, sampler, plan_chunks([0], [spec], 2)).slide(0))
    tiles = torch.cat([c[1] for c in chunks]).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(tiles, want)


def test_worker_errors_stay_one_line(tmp_path: Path) -> None:
    gone = SlideSource("gone", "store", str(tmp_path / "gone.h5"), 5, tile_px=32)
    sampler = PlanSampler()
    loader = make_loader(ChunkDataset([gone]), sampler, 1, 2, False, 0)
    with pytest.raises(StoreError) as err:
        list(ChunkStream(loader, sampler, plan_chunks([0], [gone], 8)).slide(0))
    msg = str(err.value)
    assert "\n" not in msg and "gone.h5" in msg and "Traceback" not in msg
    text = "Caught X.\nTraceback:\n  File x\nwsipipe.errors.StoreError: a b: c"
    assert worker_message(text) == "a b: c"
    assert worker_message("one line") == "one line"


def test_chunk_stream_skips_leftovers_and_slides_not_asked_for() -> None:
    """One stream over several slides (the heatmap's): a slide abandoned after one chunk (a
    failed scan) and a slide never asked for (done by a concurrent run) are skipped."""
    from types import SimpleNamespace

    from wsipipe.train.data import SlideChunk

    def c(slide: int, chunk: int, n: int) -> SlideChunk:
        return SlideChunk(slide, chunk, n, torch.tensor([chunk]), torch.zeros(1, 3, 2, 2))

    chunks = [c(0, 0, 2), c(0, 1, 2), c(1, 0, 3), c(1, 1, 3), c(1, 2, 3), c(2, 0, 1)]
    chunks += [c(3, 0, 2), c(3, 1, 2)]
    sampler = SimpleNamespace(plan=None, generation=0)
    stream = ChunkStream(chunks, sampler, iter([]), order=[0, 1, 2, 3])  # type: ignore[arg-type]
    first = stream.slide(0)
    assert int(next(first)[0]) == 0  # slide 0 abandoned after one chunk
    assert [int(i) for i, _ in stream.slide(1)] == [0, 1, 2]  # its leftover is discarded
    assert [int(i) for i, _ in stream.slide(3)] == [0, 1]  # slide 2 skipped entirely
    with pytest.raises(RuntimeError, match=r"not \(or no longer\) in this stream"):
        stream.slide(2)
