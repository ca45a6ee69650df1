"""Streaming a cohort's tiles: sources, chunk plans and the persistent chunk DataLoader.

One DataLoader serves a whole run. Its sampler yields *chunk requests* -- (slide, chunk no,
tile indices of <= I tiles) -- planned lazily slide after slide (random patch drop and the
optional in-slide shuffle are seeded by (seed, epoch, slide)); its worker processes read and
decode each chunk off the main process and hand it over as ``(k, 3, H, W)`` uint8 (4x less
host-to-device traffic than float; the encoder normalises on its device) or ``(k, F)``
features. Host memory is O(workers x prefetch x I) tiles, never O(N).

The M tiles a scan selects are re-read by index in the main process (:class:`TileFetcher`),
on a background thread so that the read overlaps the next slide's scan.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from wsipipe.errors import ConfigError, StoreError, WsipipeError
from wsipipe.jobs import check_slide_id

KINDS = ("store", "slide", "features")
_STORE_SUFFIXES = (".h5", ".zarr")


# ---- locating stores -------------------------------------------------------------------------
def resolve_stores_dir(path: str | Path) -> Path:
    """``wsipipe tile --out DIR`` writes ``DIR/stores/<id>.h5``; accept DIR or DIR/stores."""
    if not str(path):
        raise ConfigError("--stores is not set; pass the `wsipipe tile --out` directory")
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"--stores {p}: not a directory; pass the `wsipipe tile --out` dir")
    sub = p / "stores"
    return sub if sub.is_dir() else p


def find_store(stores_dir: Path, slide_id: str) -> Path:
    """The store of ``slide_id`` (``<id>.h5`` or ``<id>.zarr``) or a StoreError."""
    check_slide_id(slide_id)
    for suffix in _STORE_SUFFIXES:
        cand = stores_dir / f"{slide_id}{suffix}"
        if cand.exists():
            return cand
    raise StoreError(f"no store {slide_id}.h5 / {slide_id}.zarr in {stores_dir}")


def list_stores(stores_dir: Path) -> list[tuple[str, Path]]:
    """(slide id, store path) of every store in the directory, sorted by id."""
    found: dict[str, Path] = {}
    for p in sorted(stores_dir.iterdir()):
        if p.suffix in _STORE_SUFFIXES and not p.name.startswith("."):
            found.setdefault(p.stem, p)
    return sorted(found.items())


@dataclass(frozen=True)
class SlideSpec:
    """Where one slide's tiles come from (picklable; handles open lazily per process).

    kind "store": decoded from the patch store; "slide": a coords-only store, tiles read from
    the slide through the reader; "features": rows of a cached (N, F) ``.npy`` feature array.
    """

    slide_id: str
    kind: str
    path: str  # the store (kinds store/slide) or the .npy features file
    n_tiles: int
    tile_px: int = 0  # stored tile size (0 for features)
    feature_dim: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SlideSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_tiles < 1:
            raise StoreError(f"{self.path}: slide {self.slide_id} has no tiles; re-run tiling")


def describe_store(slide_id: str, path: Path) -> SlideSpec:
    """Open the store once (validates it) and describe it; StoreError if unusable."""
    from wsipipe.store import open_store

    with open_store(path) as store:
        n = len(store)
        meta = store.meta
    kind = "slide" if meta.pixels == "none" else "store"
    if kind == "slide" and not Path(meta.slide_path).is_file():
        raise StoreError(
            f"{path} is a coords-only store but its slide {meta.slide_path} is missing; "
            "restore the slide at that path or re-tile with pixels stored"
        )
    return SlideSpec(slide_id, kind, str(path), n, tile_px=int(meta.tile_px))


# ---- tile sources ------------------------------------------------------------------------------
def to_chw(tiles: np.ndarray, input_px: int = 0) -> Tensor:
    """(k, H, W, 3) uint8 -> (k, 3, h, w) uint8 tensor (a channels-last view, no copy), resized
    with antialiasing to ``input_px`` when that is set and differs from H."""
    t = torch.from_numpy(tiles).permute(0, 3, 1, 2)  # (k, 3, H, W), channels-last strides
    if input_px and input_px != t.shape[-1]:
        small = F.interpolate(
            t.float(),
            size=(input_px, input_px),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        t = small.round_().clamp_(0, 255).to(torch.uint8)
    return t


class _StoreSource:
    def __init__(self, spec: SlideSpec) -> None:
        from wsipipe.store import open_store

        self.store = open_store(spec.path)

    def read(self, idx: np.ndarray) -> np.ndarray:
        return self.store.read_tiles(idx)

    def close(self) -> None:
        self.store.close()


class _SlideSource:
    """Coords-only store: tiles come from the slide at the stored geometry."""

    def __init__(self, spec: SlideSpec) -> None:
        from wsipipe.slide import open_slide
        from wsipipe.slide.dctscale import stored_resample
        from wsipipe.store import open_store

        with open_store(spec.path) as store:
            meta = store.meta
            self.coords = np.array(store.coords)
        mpp = float(np.mean(meta.slide_mpp)) if meta.mpp_source == "override" else None
        if not Path(meta.slide_path).exists():
            raise StoreError(
                f"{spec.path}: coords-only store, but its slide {meta.slide_path} is missing; "
                "restore the slide or re-tile with pixels stored"
            )
        self.slide = open_slide(meta.slide_path, reader=meta.reader, mpp=mpp)
        self.reader = self.slide.tile_reader(
            meta.target_mpp, meta.tile_px, resample=stored_resample(meta.config)
        )
        self.px = int(meta.tile_px)

    def read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((idx.size, self.px, self.px, 3), np.uint8)
        for j, i in enumerate(idx.tolist()):
            x, y = self.coords[i]
            out[j] = self.reader.read(int(x), int(y))
        return out

    def close(self) -> None:
        self.slide.close()


class _FeatureSource:
    def __init__(self, spec: SlideSpec) -> None:
        self.arr = np.load(spec.path, mmap_mode="r")  # (N, F) float16/float32

    def read(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.arr[idx])

    def close(self) -> None:
        del self.arr


class SourceCache:
    """Per-process LRU of open sources (a worker reads a few slides at a time)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._open: OrderedDict[str, Any] = OrderedDict()

    def get(self, spec: SlideSpec) -> Any:
        key = f"{spec.kind}:{spec.path}"
        src = self._open.get(key)
        if src is None:
            cls = {"store": _StoreSource, "slide": _SlideSource, "features": _FeatureSource}
            src = cls[spec.kind](spec)
            self._open[key] = src
            while len(self._open) > self.size:
                _, old = self._open.popitem(last=False)
                old.close()
        else:
            self._open.move_to_end(key)
        return src

    def read(self, spec: SlideSpec, idx: np.ndarray, input_px: int = 0) -> Tensor:
        """Tiles ``idx`` of the slide: (k, 3, H, W) uint8 or (k, F) features."""
        data = self.get(spec).read(np.asarray(idx, dtype=np.int64))
        if spec.kind == "features":
            return torch.from_numpy(data)
        return to_chw(data, input_px)

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "_open": OrderedDict()}


# ---- chunk plans -------------------------------------------------------------------------------
class ChunkRequest(NamedTuple):
    slide: int  # position in the dataset's spec list
    chunk: int  # chunk number within the slide's scan
    n_chunks: int
    indices: np.ndarray  # (k,) int64 tile indices, k <= I


class Chunk(NamedTuple):
    slide: int
    chunk: int
    n_chunks: int
    indices: Tensor  # (k,) int64
    tiles: Tensor  # (k, 3, H, W) uint8 | (k, F)


def slide_generator(seed: int, epoch: int, slide: int) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch, slide): reproducible, independent streams."""
    state = np.random.SeedSequence([seed, epoch, slide]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def scan_indices(
    n: int, drop_ratio: float, shuffle: bool, seed: int, epoch: int, slide: int
) -> np.ndarray:
    """A slide's tile indices in scan order: random patch drop (sorted kept indices), then an
    optional shuffle. Without drop and shuffle: 0..n-1 (storage order)."""
    from wsipipe.models import random_patch_drop

    if drop_ratio == 0.0 and not shuffle:
        return np.arange(n, dtype=np.int64)
    gen = slide_generator(seed, epoch, slide)
    kept = random_patch_drop(n, drop_ratio, gen)
    if shuffle:
        kept = kept[torch.randperm(kept.numel(), generator=gen)]
    return kept.numpy()


def plan_chunks(
    slides: Sequence[int],
    specs: Sequence[SlideSpec],
    chunk_size: int,
    drop_ratio: float = 0.0,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[ChunkRequest]:
    """Chunk requests for ``slides`` (positions into ``specs``), in order, generated lazily."""
    for pos in slides:
        idx = scan_indices(specs[pos].n_tiles, drop_ratio, shuffle, seed, epoch, pos)
        n_chunks = max(1, math.ceil(idx.size / chunk_size))
        for c in range(n_chunks):
            yield ChunkRequest(pos, c, n_chunks, idx[c * chunk_size : (c + 1) * chunk_size])


class PlanSampler(Sampler[ChunkRequest]):
    """Sampler whose sequence is replaced before each pass over the loader."""

    def __init__(self) -> None:
        self.plan: Iterator[ChunkRequest] | None = None
        self.generation = 0  # bumped per new plan; older ChunkStreams become invalid

    def __iter__(self) -> Iterator[ChunkRequest]:
        # (the DataLoader may call iter() twice when it builds an iterator: hand out the same
        # generator both times; a new pass needs a new plan)
        if self.plan is None:
            raise RuntimeError("PlanSampler: set .plan before iterating the loader")
        return self.plan


class ChunkDataset(Dataset[Chunk]):
    """Map-style dataset keyed by :class:`ChunkRequest`; runs in the loader's workers."""

    def __init__(self, specs: Sequence[SlideSpec], input_px: int = 0) -> None:
        self.specs = list(specs)
        self.input_px = input_px
        self.cache = SourceCache()

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, req: ChunkRequest) -> Chunk:
        spec = self.specs[req.slide]
        tiles = self.cache.read(spec, req.indices, self.input_px)
        return Chunk(req.slide, req.chunk, req.n_chunks, torch.from_numpy(req.indices), tiles)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not oversubscribe the cores


def make_loader(
    dataset: ChunkDataset, sampler: PlanSampler, workers: int, prefetch: int, pin: bool, seed: int
) -> DataLoader[Chunk]:
    """The run's chunk loader (persistent workers; order = the sampler's plan)."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(
            persistent_workers=True, prefetch_factor=prefetch, worker_init_fn=_worker_init
        )
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
        **kwargs,
    )


class ChunkStream:
    """Hands out one slide's chunks at a time from the loader's single ordered stream."""

    def __init__(
        self, loader: DataLoader[Chunk], sampler: PlanSampler, plan: Iterator[ChunkRequest]
    ) -> None:
        sampler.plan = plan
        sampler.generation += 1
        self._sampler = sampler
        self._generation = sampler.generation
        self._it = iter(loader)
        self._left = 0

    def slide(self, expected: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Chunks ``(indices, tiles)`` of the next slide, which must be ``expected``."""
        if self._sampler.generation != self._generation:
            raise RuntimeError("this ChunkStream was superseded by a newer one on its loader")
        while self._left:  # a previous slide's iterator was not drained
            self._next()
            self._left -= 1
        first = self._next()
        if first.slide != expected or first.chunk != 0:
            raise RuntimeError(
                f"chunk stream out of order: got slide {first.slide} "
                f"chunk {first.chunk}, expected slide {expected}"
            )
        self._left = first.n_chunks - 1
        return self._gen(first)

    def _gen(self, first: Chunk) -> Iterator[tuple[Tensor, Tensor]]:
        yield first.indices, first.tiles
        for c in range(1, first.n_chunks):
            item = self._next()
            self._left -= 1
            if item.slide != first.slide or item.chunk != c:
                raise RuntimeError("chunk stream out of order within a slide")
            yield item.indices, item.tiles

    def _next(self) -> Chunk:
        try:
            return next(self._it)
        except WsipipeError as exc:  # raised in a worker: keep the one-line original message
            raise type(exc)(worker_message(str(exc))) from None


def worker_message(text: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker (whose
    text carries the worker's traceback; its last line is ``module.Class: message``)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return text.strip()
    last = lines[-1]
    head, sep, msg = last.partition(": ")
    return msg if sep and "." in head and " " not in head else last


class TileFetcher:
    """Main-process re-reads of selected tiles, on one background thread."""

    def __init__(self, input_px: int = 0, pin: bool = False) -> None:
        self.cache = SourceCache()
        self.input_px = input_px
        self.pin = pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsipipe-fetch")

    def _read(self, spec: SlideSpec, idx: np.ndarray) -> Tensor:
        t = self.cache.read(spec, idx, self.input_px)
        return t.pin_memory() if self.pin else t

    def submit(self, spec: SlideSpec, idx: np.ndarray) -> Future[Tensor]:
        return self._pool.submit(self._read, spec, np.asarray(idx, dtype=np.int64))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.cache.close()
