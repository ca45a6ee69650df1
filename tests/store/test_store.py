"""Writing and reading patch stores, both formats."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from tests.store.conftest import make_meta
from wsipipe.errors import ConfigError, StoreError
from wsipipe.store import (
    FORMATS,
    STORE_SUFFIX,
    PatchStore,
    StoreMeta,
    create_store,
    encode_tile,
    open_store,
    zarrstore,
)
from wsipipe.store import h5 as h5mod

REPO = Path(__file__).resolve().parents[2]


def grid(n: int, step: int = 512) -> np.ndarray:
    """(n, 2) int64 level-0 coords on a 10-wide grid."""
    i = np.arange(n)
    return np.stack([(i % 10) * step, (i // 10) * step], axis=1).astype(np.int64)


def write(
    path: Path, fmt: str, meta: StoreMeta, blobs: list[bytes] | None, n: int, chunk: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Write n tiles in appends of ``chunk``; returns (coords, tissue_fraction) written."""
    coords = grid(n)
    tf = np.linspace(0.25, 1.0, n).astype(np.float32)
    with create_store(path, fmt, meta) as w:
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            w.append(coords[s:e], None if blobs is None else blobs[s:e], tf[s:e])
        assert len(w) == n
    return coords, tf


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def store_path(tmp_path: Path, fmt: str, name: str = "slide") -> Path:
    return tmp_path / f"{name}{STORE_SUFFIX[fmt]}"


@pytest.mark.parametrize("raw_reads", [True, False])
def test_jpeg_round_trip(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray], raw_reads: bool
) -> None:
    meta = make_meta(level_dim=(5120, 5120))
    blobs = [encode_tile(t, "jpeg", 90) for t in he_tiles]
    path = store_path(tmp_path, fmt)
    coords, tf = write(path, fmt, meta, blobs, len(blobs), chunk=3)
    with open_store(path, raw_reads=raw_reads) as store:
        assert isinstance(store, PatchStore)
        assert store.path == path
        assert len(store) == len(blobs)
        assert store.meta == meta
        np.testing.assert_array_equal(store.coords, coords)
        assert store.coords.dtype == np.int64 and store.coords.shape == (len(blobs), 2)
        np.testing.assert_array_equal(store.tissue_fraction, tf)
        assert store.tissue_fraction.dtype == np.float32
        for i, (blob, tile) in enumerate(zip(blobs, he_tiles, strict=True)):
            assert store.read_encoded(i) == blob
            got = store.read_tile(i)
            assert got.shape == (256, 256, 3) and got.dtype == np.uint8
            assert np.abs(got.astype(np.int16) - tile.astype(np.int16)).mean() < 3.0


def test_png_round_trip_is_exact(tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]) -> None:
    meta = make_meta(pixels="png", jpeg_quality=None)
    blobs = [encode_tile(t, "png") for t in he_tiles[:4]]
    path = store_path(tmp_path, fmt)
    write(path, fmt, meta, blobs, 4)
    with open_store(path) as store:
        for i in range(4):
            np.testing.assert_array_equal(store.read_tile(i), he_tiles[i])
        np.testing.assert_array_equal(
            store.read_tiles([3, 1]), np.stack([he_tiles[3], he_tiles[1]])
        )


def test_read_tiles_keeps_requested_order(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]
) -> None:
    blobs = [encode_tile(t, "jpeg") for t in he_tiles]
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), blobs, len(blobs))
    with open_store(path) as store:
        order = [7, 0, 3, 3, 9]
        batch = store.read_tiles(np.array(order))
        assert batch.shape == (5, 256, 256, 3) and batch.dtype == np.uint8
        for j, i in enumerate(order):
            np.testing.assert_array_equal(batch[j], store.read_tile(i))
        assert not np.array_equal(batch[0], batch[1])
        assert store.read_tiles([]).shape == (0, 256, 256, 3)


def test_out_of_range_indices(tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]) -> None:
    blobs = [encode_tile(t, "jpeg") for t in he_tiles[:3]]
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), blobs, 3)
    with open_store(path) as store:
        for bad in (3, -1, 10**9):
            with pytest.raises(IndexError, match=f"tile index {bad} out of range"):
                store.read_tile(bad)
            with pytest.raises(IndexError):
                store.read_encoded(bad)
        with pytest.raises(IndexError, match="out of range"):
            store.read_tiles([0, 3])
        with pytest.raises(IndexError, match="not an integer"):
            store.read_tile(1.0)  # type: ignore[arg-type]
        with pytest.raises(IndexError, match="1-D integer"):
            store.read_tiles(np.array([0.5, 1.0]))
        assert store.read_tile(np.int64(2)).shape == (256, 256, 3)


def test_exact_bytes_across_chunk_and_shard_boundaries(tmp_path: Path, fmt: str) -> None:
    # arbitrary payloads (read_encoded does not decode): many small ones so the zarr store spans
    # two shards, a few of 300 KB so HDF5 tiles straddle 1 MiB chunks; odd append sizes
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 400, zarrstore.SHARD_TILES + 77)
    sizes[::150] = 300_000
    blobs = [rng.bytes(int(s)) for s in sizes]
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), blobs, len(blobs), chunk=37)
    for raw_reads in (True, False):
        with open_store(path, raw_reads=raw_reads) as store:
            idx = [*range(0, len(blobs), 1 if raw_reads else 13), len(blobs) - 1]
            for i in idx:
                assert store.read_encoded(i) == blobs[i], i
    if fmt == "zarr":
        assert len(list((path / "tiles" / "c").iterdir())) == 2  # two shard files


def test_reads_fetch_only_the_tile_bytes(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [encode_tile(t, "jpeg") for t in he_tiles]
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), blobs, len(blobs))
    store = open_store(path)
    store.read_encoded(0)  # opens the file and loads the (shard) index
    reads: list[int] = []
    real_pread = os.pread

    def spy(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    module = h5mod if fmt == "h5" else zarrstore
    monkeypatch.setattr(module.os, "pread", spy)
    for i in (5, 2, 9):
        reads.clear()
        assert store.read_encoded(i) == blobs[i]
        header = 8 if fmt == "zarr" else 0  # zarr vlen-bytes chunk header (count, length)
        assert reads == [len(blobs[i]) + header]
    store.close()


def test_coords_only_store(tmp_path: Path, fmt: str) -> None:
    meta = make_meta(pixels="none", jpeg_quality=None)
    path = store_path(tmp_path, fmt)
    coords, tf = write(path, fmt, meta, None, 25, chunk=10)
    with open_store(path) as store:
        assert len(store) == 25 and store.meta.pixels == "none"
        np.testing.assert_array_equal(store.coords, coords)
        np.testing.assert_array_equal(store.tissue_fraction, tf)
        for read in (store.read_tile, store.read_encoded):
            with pytest.raises(StoreError, match=r"coords-only store.*read from the slide"):
                read(0)
        with pytest.raises(StoreError, match="coords-only"):
            store.read_tiles([1, 2])
    with (
        create_store(store_path(tmp_path, fmt, "b"), fmt, meta) as w,
        pytest.raises(ValueError, match="tiles=None"),
    ):
        w.append(grid(1), [b"x"], np.ones(1))


def test_empty_store(tmp_path: Path, fmt: str) -> None:
    path = store_path(tmp_path, fmt)
    create_store(path, fmt, make_meta()).close()
    with open_store(path) as store:
        assert len(store) == 0
        assert store.coords.shape == (0, 2) and store.tissue_fraction.shape == (0,)
        assert store.read_tiles([]).shape == (0, 256, 256, 3)
        with pytest.raises(IndexError):
            store.read_tile(0)


def test_append_validates_inputs(tmp_path: Path, fmt: str) -> None:
    with create_store(store_path(tmp_path, fmt), fmt, make_meta()) as w:
        with pytest.raises(ValueError, match=r"\(k, 2\) integer"):
            w.append(grid(2).astype(float), [b"a", b"b"], np.ones(2))
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            w.append(grid(2), [b"a", b"b"], np.ones(3))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            w.append(grid(2), [b"a", b"b"], np.array([0.5, 1.5]))
        with pytest.raises(ValueError, match="expected 2 encoded tiles"):
            w.append(grid(2), [b"a"], np.ones(2))
        with pytest.raises(ValueError, match="empty"):
            w.append(grid(2), [b"a", b""], np.ones(2))
        assert len(w) == 0
    with pytest.raises(ValueError, match="closed"):
        w.append(grid(1), [b"a"], np.ones(1))


def test_plain_h5py_reads_it_like_clam_and_trident(
    tmp_path: Path, he_tiles: list[np.ndarray]
) -> None:
    meta = make_meta(
        level=1, downsample=4.0, read_px=128, tile_size_level0=512, level_dim=(900, 700)
    )
    blobs = [encode_tile(t, "jpeg") for t in he_tiles[:5]]
    path = tmp_path / "slide.h5"
    coords, _ = write(path, "h5", meta, blobs, 5)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["coords"][:], coords)
        attrs = f["coords"].attrs
        assert attrs["patch_size"] == 128
        assert attrs["patch_level"] == 1
        assert attrs["patch_size_level0"] == 512
        np.testing.assert_array_equal(attrs["downsample"], [4.0, 4.0])
        np.testing.assert_array_equal(attrs["level_dim"], [900, 700])
        assert attrs["name"] == "TCGA-XX-0001"
        assert f.attrs["slide_id"] == "TCGA-XX-0001" and bool(f.attrs["complete"])
        offsets = f["tile_offsets"][:]
        assert f["tiles"][offsets[2] : offsets[3]].tobytes() == blobs[2]


def test_plain_zarr_reads_it(tmp_path: Path, he_tiles: list[np.ndarray]) -> None:
    blobs = [encode_tile(t, "jpeg") for t in he_tiles[:5]]
    path = tmp_path / "slide.zarr"
    coords, tf = write(path, "zarr", make_meta(), blobs, 5)
    g = zarr.open_group(path, mode="r")
    assert g.metadata.zarr_format == 3
    np.testing.assert_array_equal(zarr.open_array(path / "coords", mode="r")[:], coords)
    np.testing.assert_array_equal(zarr.open_array(path / "tissue_fraction", mode="r")[:], tf)
    assert np.asarray(zarr.open_array(path / "tiles", mode="r")[3:4])[0] == blobs[3]
    assert g.attrs["slide_id"] == "TCGA-XX-0001" and g.attrs["complete"] is True


def test_open_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.h5"
    with pytest.raises(
        StoreError, match=rf"{re.escape(str(path))} does not exist.*re-run `wsipipe tile`"
    ):
        open_store(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a store\n" * 100, os.urandom(4096)])
def test_open_random_file(tmp_path: Path, content: bytes) -> None:
    for name in ("junk.h5", "junk.bin"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(
            StoreError, match=rf"{re.escape(str(path))} is neither an HDF5 file nor a zarr v3"
        ):
            open_store(path)


def test_open_foreign_hdf5_and_directories(tmp_path: Path) -> None:
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f["coords"] = grid(3)
    with pytest.raises(
        StoreError, match=rf"{re.escape(str(path))} is an HDF5 file but not a wsipipe patch store"
    ):
        open_store(path)
    d = tmp_path / "dir.zarr"
    d.mkdir()
    with pytest.raises(StoreError, match=rf"{re.escape(str(d))} is a directory without zarr.json"):
        open_store(d)
    z = tmp_path / "other.zarr"
    zarr.open_group(z, mode="w", zarr_format=3)
    with pytest.raises(
        StoreError, match=rf"{re.escape(str(z))} is a zarr group but not a wsipipe patch store"
    ):
        open_store(z)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(h5mod.HDF5_MAGIC + os.urandom(2000))
    with pytest.raises(StoreError, match=f"HDF5 store {bad} is unreadable"):
        open_store(bad)


def test_writer_left_by_exception_is_incomplete(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]
) -> None:
    path = store_path(tmp_path, fmt)
    blobs = [encode_tile(t, "jpeg") for t in he_tiles[:3]]
    with pytest.raises(RuntimeError, match="boom"), create_store(path, fmt, make_meta()) as w:
        w.append(grid(3), blobs, np.ones(3))
        raise RuntimeError("boom")
    with pytest.raises(
        StoreError, match=rf"{re.escape(str(path))} is incomplete.*re-run `wsipipe tile`"
    ):
        open_store(path)


def test_writer_killed_midway_is_rejected(tmp_path: Path, fmt: str) -> None:
    """A process dies after appending (no close): open_store must refuse the store."""
    path = store_path(tmp_path, fmt)
    code = textwrap.dedent(
        f"""
        import os, numpy as np
        from tests.store.conftest import make_meta
        from wsipipe.store import create_store
        w = create_store({str(path)!r}, {fmt!r}, make_meta())
        for s in range(3):
            w.append(np.zeros((700, 2), np.int64), [os.urandom(3000)] * 700, np.ones(700))
        os._exit(0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert path.exists()
    with pytest.raises(StoreError, match=re.escape(str(path))) as info:
        open_store(path)
    assert "re-run `wsipipe tile`" in str(info.value)


def test_create_refuses_existing_path_unless_overwrite(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]
) -> None:
    path = store_path(tmp_path, fmt)
    blob = [encode_tile(he_tiles[0], "jpeg")]
    write(path, fmt, make_meta(), blob, 1)
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))} already exists"):
        create_store(path, fmt, make_meta())
    write_over = create_store(path, fmt, make_meta(slide_id="other"), overwrite=True)
    write_over.close()
    with open_store(path) as store:
        assert len(store) == 0 and store.meta.slide_id == "other"


def test_overwrite_never_deletes_foreign_directory(tmp_path: Path) -> None:
    d = tmp_path / "precious.zarr"
    d.mkdir()
    (d / "keep.txt").write_text("data")
    with pytest.raises(StoreError, match="not a zarr store; refusing to delete"):
        create_store(d, "zarr", make_meta(), overwrite=True)
    assert (d / "keep.txt").read_text() == "data"


def test_unknown_format_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'n5'.*h5, zarr"):
        create_store(tmp_path / "x.n5", "n5", make_meta())


def test_open_detects_format_from_content(tmp_path: Path, fmt: str) -> None:
    # the caller writes to a temp name and renames later; detection must not need the suffix
    path = tmp_path / "slide.partial"
    write(path, fmt, make_meta(pixels="none", jpeg_quality=None), None, 3)
    with open_store(path) as store:
        assert len(store) == 3
        assert type(store).__name__ == ("H5PatchStore" if fmt == "h5" else "ZarrPatchStore")


def test_pickle_round_trip(tmp_path: Path, fmt: str, he_tiles: list[np.ndarray]) -> None:
    blobs = [encode_tile(t, "jpeg") for t in he_tiles]
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), blobs, len(blobs))
    store = open_store(path)
    first = store.read_tile(4)  # handles open now
    _ = store.coords
    data = pickle.dumps(store)
    assert len(data) < 20_000  # meta only: no handles, no cached arrays
    clone = pickle.loads(data)
    assert clone.meta == store.meta and len(clone) == len(store)
    np.testing.assert_array_equal(clone.read_tile(4), first)
    np.testing.assert_array_equal(clone.coords, store.coords)
    store.close()
    np.testing.assert_array_equal(store.read_tile(4), first)  # reopens after close
    clone.close()


def test_reopens_after_pid_change(
    tmp_path: Path, fmt: str, he_tiles: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [encode_tile(t, "jpeg") for t in he_tiles[:3]]
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), blobs, 3)
    store = open_store(path)
    assert store.read_encoded(1) == blobs[1]
    opened: list[int] = []
    real_open = store._open_handles

    def counting_open() -> None:
        opened.append(1)
        real_open()

    monkeypatch.setattr(store, "_open_handles", counting_open)
    assert store.read_encoded(2) == blobs[2]
    assert opened == []  # same process: handles reused
    monkeypatch.setattr(os, "getpid", lambda: -12345)  # as if forked
    assert store.read_encoded(0) == blobs[0]
    assert opened == [1]
    store.close()


def test_zarr_shards_match_zarr_python_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer encodes shard files itself (5x faster); zarr-python must write the same."""
    rng = np.random.default_rng(3)
    blobs = [rng.bytes(int(n)) for n in rng.integers(1, 500, zarrstore.SHARD_TILES + 300)]
    fast, slow = tmp_path / "fast.zarr", tmp_path / "slow.zarr"
    with create_store(fast, "zarr", make_meta()) as w:
        assert w._direct  # type: ignore[attr-defined]
        w.append(grid(len(blobs)), blobs, np.ones(len(blobs)))
    monkeypatch.setattr(zarrstore, "google_crc32c", None)  # forces writes through zarr-python
    with create_store(slow, "zarr", make_meta()) as w:
        assert not w._direct  # type: ignore[attr-defined]
        w.append(grid(len(blobs)), blobs, np.ones(len(blobs)))
    for rel in ("tiles/zarr.json", "tiles/c/0", "tiles/c/1"):
        assert (fast / rel).read_bytes() == (slow / rel).read_bytes(), rel


@pytest.mark.parametrize("layout", ["contiguous", "gzip"])
def test_h5_tiles_rewritten_by_other_tools_still_read(
    tmp_path: Path, he_tiles: list[np.ndarray], layout: str
) -> None:
    """e.g. after h5repack: a contiguous blob is read raw, a filtered one through h5py."""
    blobs = [encode_tile(t, "jpeg") for t in he_tiles]
    path = tmp_path / "slide.h5"
    write(path, "h5", make_meta(), blobs, len(blobs))
    with h5py.File(path, "r+") as f:
        data = f["tiles"][:]
        del f["tiles"]
        if layout == "contiguous":
            f.create_dataset("tiles", data=data)
        else:
            f.create_dataset("tiles", data=data, chunks=(4096,), compression="gzip")
    with open_store(path) as store:
        assert [store.read_encoded(i) for i in range(len(blobs))] == blobs
        store.read_encoded(0)
        assert (store._base is not None) == (layout == "contiguous")  # type: ignore[attr-defined]
        assert (store._h5 is not None) == (layout == "gzip")  # type: ignore[attr-defined]


def test_store_deleted_after_open_raises_store_error(tmp_path: Path, fmt: str) -> None:
    path = store_path(tmp_path, fmt)
    write(path, fmt, make_meta(), [b"\xff\xd8\xff-not-decoded"] * 3, 3)
    store = open_store(path)
    if fmt == "h5":
        path.unlink()
    else:
        for shard in (path / "tiles" / "c").iterdir():
            shard.unlink()
    with pytest.raises(StoreError, match=re.escape(str(path))):
        store.read_encoded(1)


def test_zarr_keeps_few_shard_files_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zarrstore, "_MAX_OPEN_SHARDS", 2)
    n = 3 * zarrstore.SHARD_TILES + 5  # four shards
    blobs = [i.to_bytes(4, "little") for i in range(n)]
    path = tmp_path / "s.zarr"
    write(path, "zarr", make_meta(), blobs, n, chunk=1000)
    store = open_store(path)
    order = [*np.random.default_rng(0).integers(0, n, 300).tolist(), n - 1, 0]
    assert [store.read_encoded(i) for i in order] == [blobs[i] for i in order]
    fds = store._fds  # type: ignore[attr-defined]
    assert fds is not None and len(fds) == 2
    assert len(store._indexes) == 4  # type: ignore[attr-defined]
    store.close()
    assert store._fds is None  # type: ignore[attr-defined]
