"""DICOM whole-slide series on disk: which files are instances, which series a path names.

A DICOM WSI is a *series* of instance files (one per pyramid level, plus label, overview and
thumbnail instances) sharing a SeriesInstanceUID. wsipipe names one by its folder (the
folder's instances are the series) or by one instance file (the series is that file's, found
among the other files of its folder, as OpenSlide does). Files are recognised by content (the
``DICM`` magic after the 128-byte preamble), not by name: PACS exports often have no suffix.
Headers are read with pydicom (installed with the ``dicom`` extra, with wsidicom); without it
a folder is taken as one series and OpenSlide is given its largest file.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsipipe.errors import SlideOpenError

DICM_MAGIC = b"DICM"
PREAMBLE_BYTES = 128
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
FINGERPRINT_BYTES = 1 << 20
SERIES_UID_TAG = 0x0020000E  # header reads stop after SeriesInstanceUID (all needed tags)


def is_dicom_file(path: Path) -> bool:
    """True for a regular file with the DICOM preamble magic (``DICM`` at byte 128); a
    DICOMDIR index is not an instance and is excluded."""
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(PREAMBLE_BYTES + 4)
    except OSError:  # a folder, a dangling link, no permission: not a readable instance
        return False
    return head[PREAMBLE_BYTES:] == DICM_MAGIC


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (not in subfolders), sorted by name."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and is_dicom_file(p)]


def is_dicom_input(path: Path) -> bool:
    """A DICOM file, or a folder holding DICOM files (a series folder)."""
    return bool(dicom_files(path)) if path.is_dir() else is_dicom_file(path)


@dataclass(frozen=True)
class Instance:
    """The header fields wsipipe needs of one DICOM file (None: not recorded / no pydicom)."""

    path: Path
    sop_class: str | None
    series_uid: str | None
    image_type: tuple[str, ...]  # e.g. ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")

    @property
    def is_wsi(self) -> bool:
        return self.sop_class == WSI_SOP_CLASS

    @property
    def is_level(self) -> bool:
        """A pyramid level (ImageType VOLUME), not a label, overview or thumbnail."""
        return self.is_wsi and len(self.image_type) > 2 and self.image_type[2] == "VOLUME"


def _pydicom() -> Any | None:
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


def read_instance(path: Path) -> Instance | None:
    """Header of one DICOM file, or None without pydicom; unparsable files give an Instance
    with no class (never a WSI), so one stray file cannot break its folder."""
    pydicom = _pydicom()
    if pydicom is None:
        return None
    from pydicom.filereader import read_partial

    def stop(tag: Any, vr: Any, length: int) -> bool:
        return int(tag) > SERIES_UID_TAG

    try:
        with warnings.catch_warnings(), path.open("rb") as fh:
            warnings.simplefilter("ignore")  # e.g. over-long UIDs in non-conformant files
            ds = read_partial(fh, stop_when=stop)
            sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
            series = ds.get("SeriesInstanceUID")
            image_type = ds.get("ImageType") or ()
            if isinstance(image_type, str):
                image_type = (image_type,)
            return Instance(
                path=path,
                sop_class=str(sop) if sop else None,
                series_uid=str(series) if series else None,
                image_type=tuple(str(v).upper() for v in image_type),
            )
    except Exception:  # not parsable as DICOM: no series, ignored like OpenSlide does
        return Instance(path=path, sop_class=None, series_uid=None, image_type=())


def _wsi_instances(files: list[Path]) -> list[Instance] | None:
    """WSI instances among ``files`` (None when pydicom is missing)."""
    headers = [read_instance(p) for p in files]
    if any(h is None for h in headers):
        return None
    return [h for h in headers if h is not None and h.is_wsi]


def series_files(path: Path) -> list[Path]:
    """Instance files of the DICOM WSI series that ``path`` names (needs pydicom).

    A folder: its DICOM files, which must hold exactly one WSI series. A file: the files in
    its folder with that file's SeriesInstanceUID. SlideOpenError (one line) otherwise.
    """
    folder = path if path.is_dir() else path.parent
    files = dicom_files(folder)
    instances = _wsi_instances(files)
    if instances is None:
        raise SlideOpenError(
            f"{path}: reading a DICOM series needs pydicom; pip install 'wsipipe[dicom]'"
        )
    if path.is_dir():
        check_one_series(path, instances)
        return [i.path for i in instances] or files
    own = next((i for i in instances if i.path == path), None)
    if own is None or own.series_uid is None:
        return [path]  # not a WSI instance: let the reader give its own reason
    return [i.path for i in instances if i.series_uid == own.series_uid]


def check_one_series(folder: Path, instances: list[Instance]) -> None:
    """SlideOpenError unless the WSI instances of ``folder`` belong to one series."""
    uids = sorted({i.series_uid for i in instances if i.series_uid})
    if len(uids) > 1:
        raise SlideOpenError(
            f"{folder}: holds {len(uids)} DICOM series (SeriesInstanceUID "
            f"{', '.join(uids[:3])}{', ...' if len(uids) > 3 else ''}); put each series in "
            "its own folder (one folder = one slide) or give one instance file of the series"
        )


def check_series_folder(folder: Path) -> None:
    """SlideOpenError when ``folder`` holds no DICOM files or (pydicom present) several
    series; a folder that passes is one slide."""
    files = dicom_files(folder)
    if not files:
        raise SlideOpenError(
            f"{folder}: is a directory without DICOM files; give a slide file, or a folder "
            "holding the instance files of one DICOM series"
        )
    instances = _wsi_instances(files)
    if instances is not None:
        check_one_series(folder, instances)


def openslide_entry(path: Path) -> Path:
    """The file to hand OpenSlide, which opens a DICOM series from any one of its files and
    finds the others in the same folder: ``path`` itself for a file; for a folder its
    largest pyramid-level instance (its largest DICOM file without pydicom)."""
    if not path.is_dir():
        return path
    files = dicom_files(path)
    if not files:
        return path  # OpenSlide then reports the folder itself
    instances = _wsi_instances(files)
    levels = [i.path for i in instances or [] if i.is_level]
    return max(levels or files, key=lambda p: p.stat().st_size)


def folder_fingerprint(folder: Path, md5: bool = True) -> dict[str, object]:
    """Cheap identity of a series folder: ``{"size": bytes of its DICOM files, "mtime_ns":
    the newest one's modification time, "md5_first_mb": md5 of each file's name and first
    MiB, in name order}`` (without the md5 when ``md5`` is False: a stat of each file only)."""
    files = dicom_files(folder)
    if not files:
        raise SlideOpenError(
            f"{folder}: no DICOM files to fingerprint; check that the series folder is complete"
        )
    digest = hashlib.md5(usedforsecurity=False)
    size = mtime_ns = 0
    try:
        for p in files:
            st = p.stat()
            size += st.st_size
            mtime_ns = max(mtime_ns, st.st_mtime_ns)
            if md5:
                digest.update(p.name.encode() + b"\0")
                with p.open("rb") as fh:
                    digest.update(fh.read(FINGERPRINT_BYTES))
    except OSError as exc:
        raise SlideOpenError(
            f"{folder}: cannot read a DICOM file for the fingerprint ({exc.strerror or exc}); "
            "check the folder's permissions"
        ) from exc
    out: dict[str, object] = {"size": size, "mtime_ns": mtime_ns}
    if md5:
        out["md5_first_mb"] = digest.hexdigest()
    return out
