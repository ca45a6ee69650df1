"""Finding a tiling run's stores and describing where each slide's tiles come from.

``wsipipe tile --out DIR`` writes ``DIR/stores/<slide_id>.h5`` (or ``.zarr``); training,
prediction and heatmaps look stores up here by slide id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsipipe.errors import ConfigError, StoreError
from wsipipe.fileio import check_slide_id
from wsipipe.store.api import open_store
from wsipipe.store.meta import StoreMeta

KINDS = ("store", "slide", "features")
_STORE_SUFFIXES = (".h5", ".zarr")


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
class SlideSource:
    """Where one slide's tiles come from (picklable; handles open lazily per process).

    kind "store": decoded from the patch store; "slide": a coords-only store, tiles read from
    the slide through the reader; "features": rows of a slide's feature file (N, F)
    (:mod:`wsipipe.store.features`).
    """

    slide_id: str
    kind: str
    path: str  # the store (kinds store/slide) or the feature file (.h5)
    n_tiles: int
    tile_px: int = 0  # stored tile size (0 for features)
    feature_dim: int = 0
    target_mpp: float = 0.0  # um/px of the stored tiles (0: unknown)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SlideSource.kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_tiles < 1:
            raise StoreError(f"{self.path}: slide {self.slide_id} has no tiles; re-run tiling")


def check_slide_unchanged(
    meta: StoreMeta, store_path: str | Path, slide_path: str | Path | None = None
) -> None:
    """StoreError when the slide (``slide_path``, default the one the store records) is not
    the one the store was tiled from: its size, mtime or first-MiB md5 differ from the
    store's record (:func:`wsipipe.slide.slide_changes`)."""
    from wsipipe.slide import slide_changes  # slide readers load on first use

    slide = Path(slide_path if slide_path is not None else meta.slide_path)
    what = slide_changes(slide, meta.slide_size, meta.slide_md5_1mb, meta.slide_mtime_ns)
    if what:
        raise StoreError(
            f"slide changed since it was tiled: {slide} ({what}); delete {store_path} or "
            "re-tile it with `wsipipe tile --overwrite`"
        )


def describe_store(slide_id: str, path: Path) -> SlideSource:
    """Open the store once (validates it) and describe it; StoreError if unusable (a
    coords-only store whose slide is missing or changed since it was tiled)."""
    with open_store(path) as store:
        n = len(store)
        meta = store.meta
    kind = "slide" if meta.pixels == "none" else "store"
    if kind == "slide":
        if not Path(meta.slide_path).exists():
            raise StoreError(
                f"{path} is a coords-only store but its slide {meta.slide_path} is missing; "
                "restore the slide at that path or re-tile with pixels stored"
            )
        check_slide_unchanged(meta, path)
    return SlideSource(
        slide_id, kind, str(path), n, tile_px=int(meta.tile_px), target_mpp=meta.target_mpp
    )
