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
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from wsipipe.errors import ConfigError, StoreError, WsipipeError
from wsipipe.store.lookup import SlideSource


def check_tile_sizes(specs: Sequence[SlideSource], input_px: int, source: str) -> None:
    """Slides batched together must share a tile size unless ``input_px`` resizes them."""
    sizes = sorted({s.tile_px for s in specs if s.kind != "features"})
    if len(sizes) > 1 and not input_px:
        raise ConfigError(
            f"{source}: stores have different tile sizes {sizes} px; pass --input-px "
            f"{sizes[0]} to resize them to one size"
        )


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


#: A tile that will be resized to ``input_px`` is JPEG-decoded at the smallest 1/2, 1/4 or
#: 1/8 scale still >= REDUCED_HEADROOM x input_px, then resized as before. A decode straight
#: to input_px (1/4 for 256 -> 64) is faster still but is a sharper low-pass than the
#: antialiased (triangle) resize: 4.9 grey levels mean |difference| on real H&E, vs 1.3 with
#: 2x headroom (tolerance pinned in tests/train/test_reduced_decode.py).
REDUCED_HEADROOM = 2


def reduced_min_px(input_px: int) -> int:
    """Smallest decoded size the loader asks a store for when tiles go to ``input_px``
    (0 = full decode)."""
    return REDUCED_HEADROOM * input_px if input_px > 0 else 0


class _StoreReader:
    def __init__(self, spec: SlideSource) -> None:
        from wsipipe.store import open_store

        self.store = open_store(spec.path)

    def read(self, idx: np.ndarray, input_px: int = 0) -> np.ndarray:
        return self.store.read_tiles(idx, reduced_min_px(input_px))

    def close(self) -> None:
        self.store.close()


class _SlideReader:
    """Coords-only store: tiles come from the slide at the stored geometry."""

    def __init__(self, spec: SlideSource) -> None:
        from wsipipe.slide import open_slide
        from wsipipe.slide.dctscale import stored_resample
        from wsipipe.store import check_slide_unchanged, open_store

        with open_store(spec.path) as store:
            meta = store.meta
            self.coords = np.array(store.coords)
        mpp = float(np.mean(meta.slide_mpp)) if meta.mpp_source == "override" else None
        if not Path(meta.slide_path).exists():
            raise StoreError(
                f"{spec.path}: coords-only store, but its slide {meta.slide_path} is missing; "
                "restore the slide or re-tile with pixels stored"
            )
        check_slide_unchanged(meta, spec.path)  # a stat; the tiles must be the tiled slide's
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


class _FeatureReader:
    def __init__(self, spec: SlideSource) -> None:
        from wsipipe.store.features import open_features

        self.arr = open_features(spec.path)  # (N, F) float16 memory map

    def read(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.arr[idx])

    def close(self) -> None:
        del self.arr


class SourceCache:
    """Per-process LRU of open sources (a worker reads a few slides at a time)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._open: OrderedDict[str, Any] = OrderedDict()

    def get(self, spec: SlideSource) -> Any:
        key = f"{spec.kind}:{spec.path}"
        src = self._open.get(key)
        if src is None:
            cls = {"store": _StoreReader, "slide": _SlideReader, "features": _FeatureReader}
            src = cls[spec.kind](spec)
            self._open[key] = src
            while len(self._open) > self.size:
                _, old = self._open.popitem(last=False)
                old.close()
        else:
            self._open.move_to_end(key)
        return src

    def read(self, spec: SlideSource, idx: np.ndarray, input_px: int = 0) -> Tensor:
        """Tiles ``idx`` of the slide: (k, 3, H, W) uint8 or (k, F) features."""
        src = self.get(spec)
        idx = np.asarray(idx, dtype=np.int64)
        data = src.read(idx, input_px) if isinstance(src, _StoreReader) else src.read(idx)
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


class SlideChunk(NamedTuple):
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
    specs: Sequence[SlideSource],
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


class ChunkDataset(Dataset[SlideChunk]):
    """Map-style dataset keyed by :class:`ChunkRequest`; runs in the loader's workers."""

    def __init__(self, specs: Sequence[SlideSource], input_px: int = 0) -> None:
        self.specs = list(specs)
        self.input_px = input_px
        self.cache = SourceCache()

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, req: ChunkRequest) -> SlideChunk:
        spec = self.specs[req.slide]
        tiles = self.cache.read(spec, req.indices, self.input_px)
        return SlideChunk(req.slide, req.chunk, req.n_chunks, torch.from_numpy(req.indices), tiles)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not oversubscribe the cores


def make_loader(
    dataset: ChunkDataset, sampler: PlanSampler, workers: int, prefetch: int, pin: bool, seed: int
) -> DataLoader[SlideChunk]:
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
    """Hands out one slide's chunks at a time from the loader's single ordered stream.

    ``order`` (the slides of the plan, in plan order) lets a caller skip slides: asking for a
    later slide first discards the chunks of the ones before it (a heatmap slide that was
    already done, or failed before its scan). Without it, slides must be asked for in order.
    """

    def __init__(
        self,
        loader: DataLoader[SlideChunk],
        sampler: PlanSampler,
        plan: Iterator[ChunkRequest],
        order: Sequence[int] | None = None,
    ) -> None:
        sampler.plan = plan
        sampler.generation += 1
        self._sampler = sampler
        self._generation = sampler.generation
        self._it = iter(loader)
        self._left = 0  # chunks of the slide handed out last not yet consumed
        self._order = list(order) if order is not None else None
        self._next_in_order = 0

    def slide(self, expected: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Chunks ``(indices, tiles)`` of the next slide, which must be ``expected``."""
        if self._sampler.generation != self._generation:
            raise RuntimeError("this ChunkStream was superseded by a newer one on its loader")
        while self._left:  # a previous slide's iterator was not drained
            self._next()
            self._left -= 1
        for _ in self._skipped_before(expected):
            first = self._next()
            for _ in range(first.n_chunks - 1):
                self._next()
        first = self._next()
        if first.slide != expected or first.chunk != 0:
            raise RuntimeError(
                f"chunk stream out of order: got slide {first.slide} "
                f"chunk {first.chunk}, expected slide {expected}"
            )
        self._left = first.n_chunks - 1
        return self._gen(first)

    def _skipped_before(self, expected: int) -> list[int]:
        """The plan's slides before ``expected`` that were never asked for."""
        if self._order is None:
            return []
        try:
            at = self._order.index(expected, self._next_in_order)
        except ValueError:
            raise RuntimeError(f"slide {expected} is not (or no longer) in this stream") from None
        skipped = self._order[self._next_in_order : at]
        self._next_in_order = at + 1
        return skipped

    def _gen(self, first: SlideChunk) -> Iterator[tuple[Tensor, Tensor]]:
        yield first.indices, first.tiles
        for c in range(1, first.n_chunks):
            item = self._next()
            self._left -= 1
            if item.slide != first.slide or item.chunk != c:
                raise RuntimeError("chunk stream out of order within a slide")
            yield item.indices, item.tiles

    def _next(self) -> SlideChunk:
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

    def _read(self, spec: SlideSource, idx: np.ndarray) -> Tensor:
        t = self.cache.read(spec, idx, self.input_px)
        return t.pin_memory() if self.pin else t

    def submit(self, spec: SlideSource, idx: np.ndarray) -> Future[Tensor]:
        return self._pool.submit(self._read, spec, np.asarray(idx, dtype=np.int64))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.cache.close()


class ChunkPipeline:
    """A run's one tile pipeline: the slides' sources, the persistent chunk loader that scans
    read from, and the background re-reader of the tiles a scan selects.

    Training, ``wsipipe predict``, ``wsipipe embed`` and the heatmap all stream through it:
    :meth:`stream` plans the chunks of some slides (random patch drop and shuffle for
    training), :meth:`fetch` re-reads selected tiles by index while the next slide is scanned.
    """

    def __init__(
        self,
        sources: Sequence[SlideSource],
        input_px: int,
        workers: int,
        prefetch: int,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.sources = list(sources)
        pin = device.type == "cuda"  # pinned host memory: asynchronous copies to the GPU
        self.sampler = PlanSampler()
        dataset = ChunkDataset(self.sources, input_px)
        self.loader = make_loader(dataset, self.sampler, workers, prefetch, pin, seed)
        self.fetcher = TileFetcher(input_px, pin)

    def stream(
        self,
        order: Sequence[int],
        chunk_size: int,
        drop_ratio: float = 0.0,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
    ) -> ChunkStream:
        """A stream over the slides ``order`` (positions into ``sources``), in that order;
        it supersedes any earlier stream of this pipeline."""
        plan = plan_chunks(order, self.sources, chunk_size, drop_ratio, shuffle, seed, epoch)
        return ChunkStream(self.loader, self.sampler, plan, order)

    def fetch(self, pos: int, indices: np.ndarray) -> Future[Tensor]:
        """Tiles ``indices`` of slide ``pos``, read on the background thread."""
        return self.fetcher.submit(self.sources[pos], indices)

    def close(self) -> None:
        self.fetcher.close()
        del self.loader
