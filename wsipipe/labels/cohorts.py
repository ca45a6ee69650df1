"""Labels CSVs for public cohorts: CAMELYON16 and TCGA (``wsipipe labels camelyon16|tcga``).

Both write the CSV that ``wsipipe train`` reads -- ``slide_id,label,split[,fold]`` -- plus
``patient_id`` and ``path`` columns (the slide file, relative to the CSV's folder), so the same
file also works as the slide list of ``wsipipe tile`` and of the Snakemake workflow.

Splits are seeded and stratified by label. For TCGA they are made at the *patient* level
(``TCGA-XX-YYYY``): all slides of a patient land in the same split and fold, so no patient
is seen in training and evaluation. With ``folds=k`` a ``fold`` column (0..k-1) is added over
the non-test rows and the ``split`` column names fold 0 as ``val``.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_csv, check_slide_id
from wsipipe.labels.splits import assign_splits

SPLITS = ("train", "val", "test")
MAX_LISTED = 8  # offending items listed in one error message


@dataclass(frozen=True)
class LabelRow:
    """One slide of a labels CSV. ``label`` may be "" (unlabelled, e.g. a test slide)."""

    slide_id: str
    label: str
    split: str
    path: Path
    patient_id: str = ""
    fold: int | None = None

    def __post_init__(self) -> None:
        check_slide_id(self.slide_id, source=str(self.path))
        if self.split not in SPLITS:
            raise ConfigError(f"{self.path}: split {self.split!r} is not one of {SPLITS}")


@dataclass(frozen=True)
class LabelsResult:
    """What a labels builder wrote: the CSV path and its rows."""

    path: Path
    rows: tuple[LabelRow, ...] = field(default_factory=tuple)

    def counts(self) -> dict[tuple[str, str], int]:
        """{(split, label): number of slides}; label "" = unlabelled."""
        return dict(Counter((r.split, r.label) for r in self.rows))


# ---- CSV ---------------------------------------------------------------------------------


def write_labels_csv(rows: Iterable[LabelRow], out: str | Path) -> Path:
    """Write ``slide_id,label,split[,fold],patient_id,path`` (sorted by slide id), atomically.

    ``path`` is relative to the CSV's folder (as ``wsipipe tile`` reads it), absolute when
    the slide lies on another drive.
    """
    out = Path(out)
    rows = sorted(rows, key=lambda r: r.slide_id)
    with_fold = any(r.fold is not None for r in rows)
    header = ["slide_id", "label", "split", *(["fold"] if with_fold else []), "patient_id", "path"]
    base = out.resolve().parent
    lines = []
    for r in rows:
        try:
            rel = os.path.relpath(Path(r.path).resolve(), base)
        except ValueError:  # different drive (Windows)
            rel = str(Path(r.path).resolve())
        fold = [("" if r.fold is None else str(r.fold))] if with_fold else []
        lines.append([r.slide_id, r.label, r.split, *fold, r.patient_id, rel])
    atomic_write_csv(out, header, lines)
    return out


def _listing(items: Sequence[str]) -> str:
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _slide_files(folder: Path) -> list[Path]:
    from wsipipe.tile.inputs import SLIDE_SUFFIXES  # lazy: wsipipe.tile imports scikit-image

    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(SLIDE_SUFFIXES)
    )


def _unique_ids(paths: Iterable[Path]) -> dict[str, Path]:
    from wsipipe.tile.inputs import slide_id_for

    found: dict[str, Path] = {}
    for p in paths:
        sid = check_slide_id(slide_id_for(p), source=str(p))
        if sid in found:
            raise ConfigError(
                f"slide id {sid!r} is used by both {found[sid]} and {p}; remove the duplicate "
                "file (slide ids are file names without the extension)"
            )
        found[sid] = p
    return found


# ---- CAMELYON16 --------------------------------------------------------------------------

_C16_TRAIN = re.compile(r"^(normal|tumor)_\d+$", re.IGNORECASE)
_C16_TEST = re.compile(r"^test_\d+$", re.IGNORECASE)
_C16_CLASSES = {"normal": "normal", "negative": "normal", "tumor": "tumor", "tumour": "tumor"}


def read_camelyon16_reference(path: str | Path) -> dict[str, str]:
    """testing/reference.csv -> {lower-case slide name (``test_001``): "normal" | "tumor"}.

    Rows look like ``Test_001,Tumor,Micro,Primary`` or ``Test_002,Normal`` (no header; a
    header row is skipped). Only the first two columns are used.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{p}: reference CSV not found; give --reference or omit it") from None
    out: dict[str, str] = {}
    bad: list[str] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not row[0].strip():
            continue
        name = Path(row[0].strip()).name
        name = name[:-4] if name.lower().endswith(".tif") else name
        cls = row[1].strip().lower() if len(row) > 1 else ""
        if cls not in _C16_CLASSES:
            if lineno == 1 and not _C16_TEST.match(name):  # header row
                continue
            bad.append(f"line {lineno} ({','.join(row[:2])})")
            continue
        out[name.lower()] = _C16_CLASSES[cls]
    if bad:
        raise ConfigError(
            f"{p}: {len(bad)} row(s) without a Normal/Tumor class: {_listing(bad)}; "
            "expected rows like `Test_001,Tumor,...`"
        )
    return out


def _find_reference(root: Path) -> Path | None:
    for cand in (root / "testing" / "reference.csv", root / "reference.csv"):
        if cand.is_file():
            return cand
    found = sorted((root / "testing").rglob("reference.csv")) if (root / "testing").is_dir() else []
    return found[0] if found else None


def camelyon16_labels(
    root: str | Path,
    out: str | Path,
    val_fraction: float = 0.2,
    folds: int = 0,
    seed: int = 0,
    reference: str | Path | None = None,
    exclude: Sequence[str] = (),
) -> LabelsResult:
    """Write the labels CSV of a CAMELYON16 download at ``root``.

    Training slides (``training/**/normal_*.tif``, ``training/**/tumor_*.tif``) are labelled
    from their names; a validation split (``val_fraction``) is carved from them, stratified
    and seeded (or ``folds`` cross-validation folds). Test slides (``testing/**/test_*.tif``)
    get split ``test`` and their label from ``testing/reference.csv`` (unlabelled if absent).
    ``exclude`` drops slide ids (case-insensitive). One slide per patient, so patient = slide.
    """
    root = Path(root)
    training = root / "training"
    if not training.is_dir():
        raise ConfigError(
            f"{root}: no training/ folder; point to the CAMELYON16 folder that holds "
            "training/ (normal_*.tif, tumor_*.tif) and testing/"
        )
    skip = {e.strip().lower() for e in exclude if e.strip()}
    train_ids = {
        sid: p
        for sid, p in _unique_ids(_slide_files(training)).items()
        if _C16_TRAIN.match(sid) and sid.lower() not in skip
    }
    if not train_ids:
        raise ConfigError(f"{training}: no normal_*.tif / tumor_*.tif slides found")
    strata = {sid: _C16_CLASSES[sid.split("_")[0].lower()] for sid in train_ids}
    split, fold = assign_splits(strata, val_fraction, 0.0, folds, seed)
    rows = [
        LabelRow(sid, strata[sid], split[sid], p, sid, fold.get(sid))
        for sid, p in train_ids.items()
    ]

    testing = root / "testing"
    test_ids: dict[str, Path] = {}
    if testing.is_dir():
        test_ids = {
            sid: p
            for sid, p in _unique_ids(_slide_files(testing)).items()
            if _C16_TEST.match(sid) and sid.lower() not in skip
        }
    ref_path = Path(reference) if reference else _find_reference(root)
    ref = read_camelyon16_reference(ref_path) if ref_path else {}
    rows += [LabelRow(sid, ref.get(sid.lower(), ""), "test", p, sid) for sid, p in test_ids.items()]
    return LabelsResult(write_labels_csv(rows, out), tuple(sorted(rows, key=lambda r: r.slide_id)))


# ---- TCGA --------------------------------------------------------------------------------

# TCGA-<TSS>-<participant>-<sample type><vial>-<portion>-<slide type><n>[.<uuid>]
_TCGA_RE = re.compile(
    r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})"
    r"(?:-(?P<sample>\d{2})(?P<vial>[A-Z])?(?:-(?P<portion>\d{2})(?:-(?P<kind>[A-Z]{2})\d*)?)?)?",
    re.IGNORECASE,
)
_PATIENT_KEYS = ("patient_id", "case_submitter_id", "submitter_id", "bcr_patient_barcode")


@dataclass(frozen=True)
class TcgaBarcode:
    """Parts of a TCGA slide barcode, e.g. ``TCGA-05-4244-01Z-00-DX1``."""

    patient_id: str  # TCGA-05-4244
    sample_type: int | None  # 01-09 tumour, 10-19 normal, 20-29 control
    slide_type: str  # DX = diagnostic FFPE, TS/BS/MS = frozen top/bottom/middle section

    @property
    def is_tumour(self) -> bool:
        return self.sample_type is not None and 1 <= self.sample_type <= 9


def parse_tcga_barcode(name: str) -> TcgaBarcode:
    """``TCGA-05-4244-01Z-00-DX1.<uuid>.svs`` -> TcgaBarcode; ConfigError if not TCGA."""
    m = _TCGA_RE.match(Path(name).name)
    if not m:
        raise ConfigError(
            f"{name}: not a TCGA barcode (expected TCGA-XX-YYYY-01Z-00-DX1...); rename the "
            "file or label it with a CSV that has slide_id and patient_id columns"
        )
    sample = m.group("sample")
    return TcgaBarcode(
        patient_id=m.group("patient").upper(),
        sample_type=int(sample) if sample else None,
        slide_type=(m.group("kind") or "").upper(),
    )


def _read_label_map(path: Path, label_column: str) -> tuple[dict[str, str], str]:
    """(key -> label, key kind "slide" | "patient") from a label CSV (or TSV, e.g. the GDC
    clinical export)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: label map CSV not found; check --label-map") from None
    first = text.splitlines()[0] if text.strip() else ""
    tabs = path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first)
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if tabs else ",")
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    key = next((k for k in ("slide_id", *_PATIENT_KEYS) if k in header), None)
    if key is None or label_column not in header:
        raise ConfigError(
            f"{path}: needs a key column (slide_id or one of {', '.join(_PATIENT_KEYS)}) and "
            f"the label column {label_column!r}; found {header}"
        )
    out: dict[str, str] = {}
    for lineno, row in enumerate(reader, start=2):
        k = (row.get(key) or "").strip()
        v = (row.get(label_column) or "").strip()
        if not k or not v:
            continue
        k = k.upper() if key != "slide_id" else k
        if k in out and out[k] != v:
            raise ConfigError(
                f"{path}:{lineno}: {key} {k!r} has two labels ({out[k]!r}, {v!r}); keep one"
            )
        out[k] = v
    if not out:
        raise ConfigError(f"{path}: no rows with both {key} and {label_column}")
    return out, "slide" if key == "slide_id" else "patient"


def _folder_label(folder: Path) -> str:
    name = folder.resolve().name
    return name[5:] if name.upper().startswith("TCGA-") else name


def tcga_labels(
    slides: Sequence[str | Path],
    out: str | Path,
    label_map_csv: str | Path | None = None,
    label_column: str = "label",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    folds: int = 0,
    seed: int = 0,
    diagnostic_only: bool = False,
    tumour_only: bool = False,
    skip_unlabelled: bool = False,
) -> LabelsResult:
    """Write a patient-level split labels CSV for TCGA slides.

    ``slides``: folders (searched recursively, e.g. a GDC download with one folder per file)
    or slide files. Labels come from ``label_map_csv`` (key column ``slide_id`` -- full id or
    barcode without the uuid -- or a patient column such as ``patient_id`` /
    ``case_submitter_id``; value column ``label_column``), else from the name of each given
    folder (``TCGA-LUAD/`` -> ``LUAD``). Splits and folds are drawn per patient, stratified
    by the patient's most frequent label, so no patient is in two splits.
    """
    if not slides:
        raise ConfigError("tcga: give at least one slide folder or file")
    found: list[tuple[Path, str | None]] = []  # (slide file, folder label)
    for item in map(Path, slides):
        if item.is_dir():
            files = _slide_files(item)
            if not files:
                raise ConfigError(f"{item}: no slide files (.svs, .tif, .ndpi, ...) found")
            found += [(f, _folder_label(item)) for f in files]
        elif item.is_file():
            found.append((item, None))
        else:
            raise ConfigError(f"{item}: no such slide file or folder")
    ids = _unique_ids(p for p, _ in found)
    folder_label = {sid: lab for (_p, lab), sid in zip(found, ids, strict=True)}
    label_map, key_kind = (
        _read_label_map(Path(label_map_csv), label_column) if label_map_csv else ({}, "")
    )

    rows: list[tuple[str, Path, str, str]] = []  # (slide id, path, patient, label)
    unlabelled: list[str] = []
    for sid, path in ids.items():
        code = parse_tcga_barcode(sid)
        if diagnostic_only and code.slide_type != "DX":
            continue
        if tumour_only and not code.is_tumour:
            continue
        if label_map_csv:
            if key_kind == "slide":
                label = label_map.get(sid) or label_map.get(sid.split(".")[0], "")
            else:
                label = label_map.get(code.patient_id, "")
        else:
            label = folder_label[sid] or ""
        if not label:
            unlabelled.append(sid)
            continue
        rows.append((sid, path, code.patient_id, label))
    if unlabelled and not skip_unlabelled:
        where = f"in {label_map_csv}" if label_map_csv else "(a slide file given without folder)"
        raise ConfigError(
            f"tcga: {len(unlabelled)} slide(s) have no label {where}: {_listing(unlabelled)}; "
            "add them or pass --skip-unlabelled"
        )
    if not rows:
        raise ConfigError("tcga: no labelled slides left after filtering")
    if not label_map_csv and len({r[3] for r in rows}) < 2:
        raise ConfigError(
            f"tcga: every slide got the label {rows[0][3]!r} from its folder name; give one "
            "folder per class (e.g. TCGA-LUAD TCGA-LUSC) or a --label-map CSV"
        )
    per_patient: dict[str, Counter[str]] = defaultdict(Counter)
    for _sid, _p, patient, label in rows:
        per_patient[patient][label] += 1
    strata = {
        pt: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for pt, c in per_patient.items()
    }
    split, fold = assign_splits(strata, val_fraction, test_fraction, folds, seed)
    result = [
        LabelRow(sid, label, split[pt], path, pt, fold.get(pt)) for sid, path, pt, label in rows
    ]
    return LabelsResult(
        write_labels_csv(result, out), tuple(sorted(result, key=lambda r: r.slide_id))
    )
