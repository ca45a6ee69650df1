"""Turn the command line's files, directories, globs and CSVs into a list of slides.

Folder rule: a folder whose files are DICOM instances (and no other slide files) is ONE slide,
a DICOM series, named after the folder; other folders are searched recursively for slide files
and series folders. A single ``.dcm`` file is a slide too (its series, from its folder).

An input that cannot be read as it stands (a dangling symlink, a symlink loop) is kept as a
:class:`SlideInput` with its ``error``: the batch reports it as that slide's failure and goes
on with the others, instead of dropping it without a word.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from wsipipe.errors import ConfigError
from wsipipe.fileio import check_slide_id
from wsipipe.slide.dicom import is_dicom_file
from wsipipe.slide.info import broken_link

# File name endings of whole-slide images that OpenSlide or tiffslide can open.
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide",
    ".dcm", ".qptiff",
)  # fmt: skip


@dataclass(frozen=True)
class SlideInput:
    slide_id: str
    path: Path
    mpp: float | None = None  # per-slide override (CSV `mpp` column)
    error: str = ""  # why the input cannot be read (e.g. a dangling symlink); "" = fine


def _broken_input(path: Path) -> SlideInput:
    return SlideInput(slide_id_for(path), path, error=broken_link(path))


def _looks_like_slide_link(path: Path) -> bool:
    """A broken symlink meant as a slide: its name or its target's ends like a slide file."""
    target = os.readlink(path)
    return any(n.lower().endswith(SLIDE_SUFFIXES) for n in (path.name, target))


def slide_id_for(path: Path) -> str:
    """``TCGA-XX.svs`` -> ``TCGA-XX``; ``x.ome.tif`` -> ``x``; a DICOM series folder -> its name."""
    name = path.name
    if path.is_dir():
        return name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_slide_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SLIDE_SUFFIXES)


def is_dicom_series_dir(folder: Path) -> bool:
    """A folder that is one DICOM slide: it holds DICOM files (any name) and no other slide
    files. (In a folder that mixes them, each ``.dcm`` file is a slide of its own.)"""
    files = [q for q in folder.iterdir() if q.is_file()]
    dicom = [q for q in files if is_dicom_file(q)]
    return bool(dicom) and all(q in dicom or not is_slide_file(q) for q in files)


def slides_in_folder(root: Path) -> list[SlideInput]:
    """The slides under ``root`` (recursively): each DICOM series folder as one slide (id =
    folder name; see `is_dicom_series_dir`), every other slide file as one slide."""
    specs: list[SlideInput] = []
    for folder in [root, *sorted(d for d in root.rglob("*") if d.is_dir())]:
        series = is_dicom_series_dir(folder)
        if series:
            specs.append(SlideInput(slide_id_for(folder), folder))
        for q in sorted(folder.iterdir()):
            if is_slide_file(q) and not series:
                specs.append(SlideInput(slide_id_for(q), q))
            elif broken_link(q) and _looks_like_slide_link(q):
                specs.append(_broken_input(q))
    return specs


def resolve_slides(items: list[str]) -> list[SlideInput]:
    """Expand files, directories (recursively), globs and CSV lists into unique slides.

    A folder whose files are the DICOM instances of one series is one slide named after the
    folder (a folder of series folders gives one slide per series). A CSV needs a ``path`` (or
    ``slide``) column and may have ``slide_id`` and ``mpp``; relative paths in it are relative
    to the CSV's folder. A dangling or looping symlink (given, or met in a folder) comes back
    with its ``error`` set, to be reported as that slide's failure.
    """
    specs: list[SlideInput] = []
    for item in items:
        p = Path(item)
        if broken_link(p):
            specs.append(_broken_input(p))
        elif p.suffix.lower() == ".csv" and p.is_file():
            specs.extend(_from_csv(p))
        elif p.is_dir():
            found = slides_in_folder(p)
            if not found:
                raise ConfigError(
                    f"{p}: no slide files found (looked for {', '.join(SLIDE_SUFFIXES)} and "
                    "folders of DICOM instances)"
                )
            specs.extend(found)
        elif p.exists():
            specs.append(SlideInput(slide_id_for(p), p))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise ConfigError(f"{item}: no such file, directory or glob match")
            for m in matches:
                if m.is_file() or (m.is_dir() and is_dicom_series_dir(m)):
                    specs.append(SlideInput(slide_id_for(m), m))
                elif broken_link(m) and _looks_like_slide_link(m):
                    specs.append(_broken_input(m))
    seen: dict[str, Path] = {}
    for spec in specs:
        check_slide_id(spec.slide_id, source=str(spec.path))
        if spec.slide_id in seen and not _same_file(seen[spec.slide_id], spec.path):
            raise ConfigError(
                f"slide id {spec.slide_id!r} is used by both {seen[spec.slide_id]} and "
                f"{spec.path}; give unique ids with a CSV (columns path,slide_id)"
            )
        seen[spec.slide_id] = spec.path
    unique: dict[str, SlideInput] = {}
    for spec in specs:  # the first path met (not one through a symlinked folder met later)
        unique.setdefault(spec.slide_id, spec)
    return list(unique.values())


def _same_file(a: Path, b: Path) -> bool:
    # realpath, not Path.resolve: it does not raise on a symlink loop
    return os.path.realpath(a) == os.path.realpath(b)


def _from_csv(path: Path) -> list[SlideInput]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        path_col = "path" if "path" in cols else ("slide" if "slide" in cols else None)
        if path_col is None:
            raise ConfigError(
                f"{path}: a slides CSV needs a `path` column (optional: slide_id, mpp); "
                f"found columns {cols}"
            )
        specs = []
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            raw = row.get(path_col, "")
            if not raw:
                raise ConfigError(f"{path}:{lineno}: empty `{path_col}`")
            slide_path = Path(raw) if Path(raw).is_absolute() else path.parent / raw
            mpp = None
            if row.get("mpp"):
                try:
                    mpp = float(row["mpp"])
                except ValueError:
                    raise ConfigError(
                        f"{path}:{lineno}: mpp {row['mpp']!r} is not a number (e.g. 0.25)"
                    ) from None
                if not 0.01 <= mpp <= 100:
                    raise ConfigError(f"{path}:{lineno}: mpp {mpp} is not plausible (0.01..100)")
            slide_id = row.get("slide_id") or slide_id_for(slide_path)
            specs.append(SlideInput(slide_id, slide_path, mpp, broken_link(slide_path)))
    return specs
